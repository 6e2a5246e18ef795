"""save / restore and xl-style live migration on real guests (TCG), through the CLI.

One guest (192 MiB, a NIC hot-plugged before the first save so the stream's device state needs
it at start) walks: save → restore (its uptime goes on, same disks and MACs) → migrate over
ssh to a second host (a network namespace with its own address, sshd and pvhvm state dir:
tests/hosts.py) → migrate back (the second host ssh-es to an sshd this test starts on the
source's end of the link) → a migration whose receiver is killed midway, after which the
guest still runs on the source and nothing is left on the receiver.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pvhvm.runtime.save import peek
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm, console_shell
from tests.hosts import NetnsHost

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("netns")]

PV_ONLY = str(EXAMPLES / "pv-only.cfg")
TAP = Path(__file__).with_name("channel_tap.py")
#: the source host's sshd port (its own sshd, if any, keeps 22)
BACK_PORT = 2222


class SourceHost(NetnsHost):
    """This host as the second host reaches it over ssh, for the migration back: NetnsHost's
    sshd set-up (its own keys and config, tests/hosts.py), run in this host's namespace and
    listening on this host's end of the link, with the source's pvhvm state dir."""

    def __init__(self, address: str, state: Path) -> None:
        super().__init__(env={"PVHVM_STATE_DIR": str(state)})
        self.address = address

    def argv(self, argv: Sequence[str]) -> list[str]:
        return list(argv)


def uptime(argv: Sequence[str], env: dict[str, str], name: str) -> float:
    text = console_shell(list(argv), env, name, "cat /proc/uptime").split("cat /proc/uptime")[-1]
    lines = [ln for ln in text.splitlines() if ln.strip() and ln.split()[0][0].isdigit()]
    return float(lines[0].split()[0])


def processes_of(state: Path) -> list[int]:
    """Processes (QEMU, supervisors) whose command line names the state directory."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(state).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def devices(run: Any, name: str) -> tuple[Any, Any]:
    """(block-list, network-list) as JSON, less the per-host bridge note."""
    blocks = jsonout.result(run("block-list", name, "--json").stdout)
    nics = jsonout.result(run("network-list", name, "--json").stdout)
    return ([(b["vdev"], b["devid"], b["type"], b["driver"], b["target"]) for b in blocks],
            [(n["devid"], n["mac"], n["type"], n["driver"]) for n in nics])


@pytest.fixture
def source_host(second_host: NetnsHost, pvhvm: Pvhvm) -> Iterator[SourceHost]:
    host = SourceHost(second_host.host_address, pvhvm.state)
    try:
        host.start_sshd(port=BACK_PORT)
        yield host
    finally:
        host.close()


def test_save_restore_migrate_there_and_back(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path,
    second_host: NetnsHost, source_host: SourceHost,
) -> None:
    name = "mover"
    domain.append(name)
    here = [sys.executable, "-m", "pvhvm"]
    there = second_host.argv(["pvhvm"])
    pvhvm.run("create", PV_ONLY, f"imagedir={imagedir}", f"name={name}", "--accel", "tcg",
              "memory=192")
    pvhvm.wait_report(name)
    pvhvm.run("network-attach", name, "mac=00:16:3e:7a:00:02")
    before = devices(pvhvm.run, name)
    assert before[1][1][1] == "00:16:3e:7a:00:02"
    up = uptime(here, pvhvm.env(), name)
    argv_before = jsonout.result(pvhvm.run("list", "-l", name).stdout)[0]["argv"]

    # --- save: the domain is gone, the file is whole -------------------------------------
    saved = tmp_path / "mover.save"
    done = pvhvm.run("save", name, str(saved))
    assert "saved to" in done.stderr and not pvhvm.leftovers(name)
    assert jsonout.result(pvhvm.run("list", "--json").stdout) == []
    assert saved.read_bytes()[:8] == b"PVHVMSAV" and saved.stat().st_mode & 0o077 == 0
    # the file carries the config as create read it and the attach's spec, no command line
    image = peek(saved)
    assert '"argv"' not in json.dumps(image.to_json())
    assert image.source.variables == (f"imagedir={imagedir}", f"name={name}", "memory=192")
    assert [h.spec for h in image.hotplugged] == ["mac=00:16:3e:7a:00:02,devid=1"]

    # --- restore: planned again, the very argv create and network-attach made; same
    # devices, the guest's clock goes on ------------------------------------------------------
    pvhvm.run("restore", str(saved))
    assert jsonout.result(pvhvm.run("list", "-l", name).stdout)[0]["argv"] == argv_before
    assert devices(pvhvm.run, name) == before
    assert jsonout.result(pvhvm.run("list", "--json").stdout)[0]["state"] == "running"
    up_restored = uptime(here, pvhvm.env(), name)
    assert up_restored > up

    # --- migrate over ssh to the second host --------------------------------------------------
    second_host.start_sshd()
    moved = pvhvm.run("migrate", "-s", second_host.ssh_command, name,
                      f"root@{second_host.address}", "--json", timeout=300)
    outcome = jsonout.result(moved.stdout)
    # QEMU reports whole milliseconds: an idle guest can switch over in less than one
    assert outcome["state"] == "running" and outcome["total_ms"] > 0, json.dumps(outcome)
    # the whole RAM went (a reading taken for an earlier migration's would say nothing moved)
    assert outcome["transferred"] > 16 << 20, json.dumps(outcome)
    if outcome["qemu_total_ms"] == 0:  # seen in full-suite runs only: say so, to find out why
        warnings.warn(f"QEMU gave no total-time for a completed migration: {outcome}",
                      stacklevel=1)
    assert isinstance(outcome["downtime_ms"], int) and outcome["downtime_ms"] >= 0
    assert outcome["total_ms"] >= outcome["downtime_ms"]
    assert not pvhvm.leftovers(name)
    remote = second_host.run(["pvhvm", "list", "--json"], capture_output=True, text=True)
    assert [r["name"] for r in jsonout.result(remote.stdout)] == [name], remote.stderr

    def run_there(*args: str) -> subprocess.CompletedProcess[str]:
        done = second_host.run(["pvhvm", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done

    assert devices(run_there, name) == before
    up_there = uptime(there, second_host.env(), name)
    assert up_there > up_restored

    # --- and back: the second host runs pvhvm migrate to this host's sshd --------------------
    back = shlex.join(source_host.ssh_argv(BACK_PORT)[:-1])
    run_there("migrate", "-s", back, name, f"root@{second_host.host_address}")
    assert jsonout.result(run_there("list", "--json").stdout) == []
    assert not list((second_host.state_dir / "domains").glob("*"))
    assert devices(pvhvm.run, name) == before
    up_back = uptime(here, pvhvm.env(), name)
    assert up_back > up_there

    # --- a receiver killed midway: the guest runs on here, untouched --------------------------
    pidfile = tmp_path / "receiver.pid"
    # 4 MiB/s: the guest's ~100 MiB stream takes long enough to kill the receiver in it; the
    # remote shell writes its pid, then becomes the receiver
    remote = f"echo $$ > {pidfile}; exec pvhvm migrate-receive"
    tapped = shlex.join([sys.executable, str(TAP), "4", str(tmp_path / "tap.pid"), "--",
                         *second_host.ssh_argv(), remote])
    migration = subprocess.Popen([*here, "migrate", "-s", "", name, tapped],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=pvhvm.env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(
            (second_host.state_dir / "domains").glob(name)):
        time.sleep(0.1)
    time.sleep(2)  # the stream is flowing now
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    _, err = migration.communicate(timeout=120)
    assert migration.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("pvhvm: error: migration of 'mover'"), err
    assert "Traceback" not in err
    listed = jsonout.result(pvhvm.run("list", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [(name, "running")]
    # nothing left there: no domain, and no process once its host supervisor, which has no
    # domain left, has lingered its while (the tests' 1 s: the netns sshd sets it too)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (list((second_host.state_dir / "domains").glob("*"))
                                           or processes_of(second_host.state_dir)):
        time.sleep(0.2)
    assert not list((second_host.state_dir / "domains").glob("*"))
    assert not processes_of(second_host.state_dir)
    assert uptime(here, pvhvm.env(), name) > up_back
