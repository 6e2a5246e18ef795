"""Domain lifecycle on real guests (TCG): list, pause, console, reset, shutdown, on_* actions,
a toolstack that loses its supervisor, racing and interrupted creates.

Boots are shared: one guest walks create -p → list → unpause → console → pause → reset →
shutdown -w. Tests that only need a QEMU (crashes, races, killed creates) do not wait for the
guest to boot.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pvhvm.guest.report import END
from pvhvm.runtime.lifecycle import destroy
from pvhvm.runtime.state import StateStore, pid_alive, process_cpu_seconds
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm, json_of

pytestmark = pytest.mark.e2e

PV_ONLY = str(EXAMPLES / "pv-only.cfg")


def create(pvhvm: Pvhvm, domain: list[str], imagedir: Path, name: str, *extra: str,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    domain.append(name)
    return pvhvm.run("create", PV_ONLY, f"imagedir={imagedir}", f"name={name}", "--accel", "tcg",
                     *extra, check=check)


def record(pvhvm: Pvhvm, name: str) -> dict[str, Any] | None:
    try:
        document = json.loads((pvhvm.state / "domains" / name / "record.json").read_text())
    except FileNotFoundError:
        return None
    assert isinstance(document, dict)
    return document


def listed(pvhvm: Pvhvm) -> dict[str, str]:
    """Name → state letters, from the plain xl-format text a script would parse."""
    lines = pvhvm.run("list").stdout.splitlines()
    assert lines[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    return {fields[0]: fields[4] for fields in (line.split() for line in lines[1:])}


def wait_for(what: str, predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def reports(pvhvm: Pvhvm, name: str) -> int:
    log = pvhvm.console_log(name)
    return log.read_text(errors="replace").count(END) if log.exists() else 0


def console_echo(pvhvm: Pvhvm, name: str) -> None:
    """Attach with a pipe, run a command in the guest's shell, read its output, detach (^])."""
    number = random.randrange(10_000, 90_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvhvm", "console", name], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pvhvm.env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"\necho hello-$(({number}+1))\n".encode())
    proc.stdin.flush()
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 30
    while f"hello-{number + 1}".encode() not in seen and time.monotonic() < deadline:
        chunk = proc.stdout.read()
        seen += chunk or b""
        time.sleep(0.05)
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0
    assert f"hello-{number + 1}".encode() in seen, seen[-500:]


def test_walk_create_paused_list_console_reboot_shutdown(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    created = json_of(create(pvhvm, domain, imagedir, "walk", "-p", "--json"))
    assert created["state"] == "paused"
    assert listed(pvhvm)["walk"] == "--p---"
    time.sleep(1)
    assert reports(pvhvm, "walk") == 0  # paused from the start: nothing has run
    pvhvm.run("unpause", "walk")
    assert listed(pvhvm)["walk"] == "r-----"
    pvhvm.wait_report("walk")

    # The (host) supervisor is in a session of its own, and idle while the guest idles.
    supervisor = int(created["supervisor_pid"])
    assert os.getsid(supervisor) == supervisor != os.getsid(0)
    before = process_cpu_seconds(supervisor)
    time.sleep(2)
    assert process_cpu_seconds(supervisor) - before < 0.2

    rows = jsonout.result(pvhvm.run("list", "--json").stdout)
    assert [(r["name"], r["state"], r["flags"]) for r in rows] == [("walk", "running", "r-----")]
    long = jsonout.result(pvhvm.run("list", "-l").stdout)
    assert long[0]["domid"] == created["domid"] and long[0]["plan"]["name"] == "walk"
    blocks = jsonout.result(pvhvm.run("block-list", "walk", "--json").stdout)
    assert [(b["vdev"], b["devid"], b["type"], b["driver"]) for b in blocks] == [
        ("xvda", 51712, "xenbus", "virtio-blk-pci")]
    nics = jsonout.result(pvhvm.run("network-list", "walk", "--json").stdout)
    assert [(n["type"], n["driver"]) for n in nics] == [("xenbus", "virtio-net-pci")]

    pvhvm.run("pause", "walk")
    assert listed(pvhvm)["walk"] == "--p---"
    pvhvm.run("unpause", "walk")
    assert listed(pvhvm)["walk"] == "r-----"

    # reset is a system reset; the console log stays open and keeps growing (reboot, which
    # asks the guest: tests/e2e/test_ops.py)
    qemu_pid = record(pvhvm, "walk")["qemu_pid"]
    pvhvm.run("reset", "walk")
    wait_for("the report after the reset", lambda: reports(pvhvm, "walk") >= 2, 120)
    assert record(pvhvm, "walk")["qemu_pid"] == qemu_pid

    console_echo(pvhvm, "walk")

    pvhvm.run("shutdown", "-w", "walk", "--timeout", "60")
    assert "walk" not in listed(pvhvm)
    assert not pvhvm.leftovers("walk")
    # the host supervisor goes once it has no domain left (PVHVM_HOSTD_LINGER: 1 s in tests)
    wait_for("the host supervisor to go", lambda: not pid_alive(supervisor), 15)


def test_supervisor_lost_then_found_and_on_poweroff_preserve(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    """A supervisor killed behind the toolstack's back: the next command (a fresh process)
    finds the QEMU through the record and its QMP socket and adopts it; the adopted domain's
    on_poweroff=preserve is still honoured."""
    created = json_of(create(pvhvm, domain, imagedir, "keep", "on_poweroff=preserve", "--json"))
    pvhvm.wait_report("keep")
    old = int(created["supervisor_pid"])
    os.kill(old, signal.SIGKILL)
    wait_for("the old supervisor to go", lambda: not pid_alive(old), 10)
    assert listed(pvhvm)["keep"] == "r-----"
    new = wait_for("an adopting supervisor",
                   lambda: (record(pvhvm, "keep") or {}).get("supervisor_pid") != old, 10)
    assert new
    adopter = record(pvhvm, "keep")["supervisor_pid"]
    assert pid_alive(adopter) and os.getsid(adopter) == adopter
    assert record(pvhvm, "keep")["qemu_pid"] == created["qemu_pid"]

    pvhvm.run("shutdown", "-w", "keep")
    assert listed(pvhvm)["keep"] == "---s--"
    assert pid_alive(created["qemu_pid"])  # preserved, stopped
    refused = pvhvm.run("unpause", "keep", check=False)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        "pvhvm: error: domain 'keep' has shut down and is kept (on_poweroff/on_reboot = "
        "preserve); 'pvhvm destroy keep' removes it")
    pvhvm.run("destroy", "keep")
    assert "keep" not in listed(pvhvm) and not pvhvm.leftovers("keep")


def test_on_crash_restart_after_qemu_is_killed(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    created = json_of(create(pvhvm, domain, imagedir, "phoenix", "on_crash=restart", "--json"))
    old = int(created["qemu_pid"])
    os.kill(old, signal.SIGKILL)
    restarted = wait_for(
        "a new QEMU",
        lambda: (r := record(pvhvm, "phoenix")) and r["qemu_pid"] not in (None, old)
        and r["state"] == "running" and r,
        30,
    )
    assert restarted["restarts"] == 1 and pid_alive(restarted["qemu_pid"])
    pvhvm.wait_report("phoenix")
    assert listed(pvhvm)["phoenix"] == "r-----"
    pvhvm.run("destroy", "phoenix")  # destroy of a running guest
    assert not pid_alive(restarted["qemu_pid"]) and not pvhvm.leftovers("phoenix")


def test_on_crash_destroy_preserve_and_a_vanished_qemu(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    def blank(name: str) -> str:
        """A disk of its own (the guest need not boot; QEMU locks images it writes)."""
        with open(imagedir / f"{name}.img", "wb") as image:
            image.truncate(1 << 20)
        return f"disk=['{imagedir}/{name}.img,raw,xvda,w,type=xenbus']"

    gone = json_of(create(pvhvm, domain, imagedir, "c-destroy", "on_crash=destroy", "--json",
                          blank("c-destroy")))
    kept = json_of(create(pvhvm, domain, imagedir, "c-keep", "on_crash=preserve", "--json",
                          blank("c-keep")))
    orphan = json_of(create(pvhvm, domain, imagedir, "c-orphan", "--json", blank("c-orphan")))
    # One host supervisor answers for all three.
    host = int(orphan["supervisor_pid"])
    assert gone["supervisor_pid"] == kept["supervisor_pid"] == host
    # Each QEMU killed under a live supervisor: on_crash is acted on at once.
    os.kill(int(gone["qemu_pid"]), signal.SIGKILL)
    os.kill(int(kept["qemu_pid"]), signal.SIGKILL)
    wait_for("c-destroy to go", lambda: record(pvhvm, "c-destroy") is None, 15)
    wait_for("c-keep to be preserved",
             lambda: (record(pvhvm, "c-keep") or {}).get("state") == "crashed", 15)
    # c-orphan: the host supervisor killed, then its QEMU, so that nobody watches it die. The
    # record still says running; list does not trust it, and the next command's adoption
    # acts on the crash that nobody saw (on_crash = destroy, the default): no action is lost.
    os.kill(host, signal.SIGKILL)
    wait_for("the host supervisor to go", lambda: not pid_alive(host), 10)
    os.kill(int(orphan["qemu_pid"]), signal.SIGKILL)
    wait_for("c-orphan's QEMU to go", lambda: not pid_alive(orphan["qemu_pid"]), 10)
    assert record(pvhvm, "c-orphan")["state"] == "running"
    states = listed(pvhvm)
    assert "c-destroy" not in states
    assert states["c-keep"] == "---sc-" and states["c-orphan"] == "---sc-"
    wait_for("c-orphan's on_crash", lambda: record(pvhvm, "c-orphan") is None, 15)
    assert "c-orphan" not in listed(pvhvm) and not pvhvm.leftovers("c-orphan")
    assert pvhvm.run("pause", "c-keep", check=False).stderr.startswith(
        "pvhvm: error: domain 'c-keep' has crashed")
    pvhvm.run("destroy", "c-keep")
    assert not pvhvm.leftovers("c-keep")
    assert not {"c-keep", "c-orphan"} & set(listed(pvhvm))


def test_racing_creates_of_one_name(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    for round_ in range(3):
        name = f"race{round_}"
        domain.append(name)
        argv = [sys.executable, "-m", "pvhvm", "create", PV_ONLY, f"imagedir={imagedir}",
                f"name={name}", "--accel", "tcg"]
        procs = [subprocess.Popen(argv, env=pvhvm.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = sorted((p.wait(timeout=120), p.communicate()[1]) for p in procs)
        assert [code for code, _ in results] == [0, 1], results
        assert f"pvhvm: error: domain '{name}' already exists" in results[1][1]
        assert listed(pvhvm)[name] == "r-----"
        pvhvm.run("destroy", name)
        assert not pvhvm.leftovers(name)


def test_create_killed_midway_leaves_a_guest_or_nothing(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    outcomes = []
    for index, delay in enumerate((0.05, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5)):
        name = f"cut{index}"
        domain.append(name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pvhvm", "create", PV_ONLY, f"imagedir={imagedir}",
             f"name={name}", "--accel", "tcg"],
            env=pvhvm.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.kill()
        proc.wait()

        def settled(name: str = name) -> str | None:
            rows = {r["name"]: r for r in jsonout.result(pvhvm.run("list", "--json").stdout)}
            if name not in rows:
                return "nothing"
            return "running" if rows[name]["state"] == "running" else None

        outcome = wait_for(f"{name} to settle", settled, 60)
        outcomes.append(outcome)
        if outcome == "running":
            qemu_pid = record(pvhvm, name)["qemu_pid"]
            assert pid_alive(qemu_pid)
            pvhvm.run("destroy", name)
        assert not pvhvm.leftovers(name), (delay, outcome, pvhvm.leftovers(name))
    assert not list((pvhvm.state / "domains").glob(".*"))
    print("outcomes by delay:", outcomes)


def crash_guest(pvhvm: Pvhvm, name: str) -> None:
    """Panic the guest's kernel from its shell (sysrq c); pvpanic tells QEMU."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pvhvm", "console", name], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=pvhvm.env(),
    )
    assert proc.stdin is not None
    proc.stdin.write(b"\necho c > /proc/sysrq-trigger\n")
    proc.stdin.flush()
    time.sleep(2)
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    proc.wait(timeout=30)


def test_kernel_panic_reaches_on_crash(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    """A real guest panic (GUEST_PANICKED through pvpanic): preserve keeps it, crashed."""
    create(pvhvm, domain, imagedir, "panicky", "on_crash=preserve")
    pvhvm.wait_report("panicky")
    crash_guest(pvhvm, "panicky")
    wait_for("the panic to be seen",
             lambda: (record(pvhvm, "panicky") or {}).get("state") == "crashed", 30)
    assert "Kernel panic" in pvhvm.console_log("panicky").read_text(errors="replace")
    assert listed(pvhvm)["panicky"] == "---sc-"


def test_destroy_racing_a_create(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    """A destroy sent while create is still starting the domain wins: once destroy has
    returned, nothing of the domain is left, and the create says the domain was destroyed."""
    outcomes = []
    for index, delay in enumerate((0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6)):
        name = f"undo{index}"
        domain.append(name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pvhvm", "create", PV_ONLY, f"imagedir={imagedir}",
             f"name={name}", "--accel", "tcg"],
            env=pvhvm.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        record_path = pvhvm.state / "domains" / name / "record.json"
        deadline = time.monotonic() + 60
        while not record_path.exists() and time.monotonic() < deadline:
            time.sleep(0.002)  # in-process and polled fast: a CLI destroy would start too late
        time.sleep(delay)
        destroy(name, StateStore(pvhvm.state))
        gone = pvhvm.leftovers(name)
        _, err = proc.communicate(timeout=120)
        outcomes.append((delay, proc.returncode))
        assert not gone, (delay, gone)
        if proc.returncode != 0:
            assert f"domain '{name}' did not start: destroyed while starting" in err, err
        time.sleep(0.5)  # nothing comes back once both have finished
        assert not pvhvm.leftovers(name), (delay, pvhvm.leftovers(name))
        assert name not in listed(pvhvm)
    print("create exit status by destroy delay:", outcomes)


def test_shutdown_wait_right_after_create(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    """The first press comes while the guest is still booting and is lost; -w presses again
    until the guest powers off. A paused guest is said to be paused."""
    create(pvhvm, domain, imagedir, "quick-off")
    pvhvm.run("shutdown", "-w", "quick-off", "--timeout", "120")
    assert "quick-off" not in listed(pvhvm)
    assert not pvhvm.leftovers("quick-off")

    create(pvhvm, domain, imagedir, "held", "-p")
    refused = pvhvm.run("shutdown", "-w", "held", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "pvhvm: error: domain 'held' is paused, so its guest cannot act on the power button "
        "('pvhvm unpause held' first, or 'pvhvm destroy held')")
    report = pvhvm.run("report", "held", check=False)
    assert report.returncode == 1 and report.stderr.strip() == (
        "pvhvm: error: domain 'held' is paused and has not reported yet; 'pvhvm unpause held' "
        "lets it boot")
    pvhvm.run("destroy", "held")
