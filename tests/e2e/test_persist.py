"""Persistent domains and the host service on real guests (issue 21, items 1 and 6): a host
crash simulated (the host supervisor and every QEMU killed with SIGKILL), then ``pvhvm host
start`` as the systemd unit runs it at boot: the autostart domain comes back (its guest's
device report read from its console log), the other stays shut off and defined; ``host stop
--save-dir`` saves and the next ``host start`` restores; ``host stop`` shuts the guest down
cleanly (its kernel's power-off in the console log).

The test has a state directory of its own: ``host stop`` acts on every domain of one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvhvm.guest.report import END
from pvhvm.runtime.logs import current_run
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm, _qemu_processes, _supervisors
from tests.e2e.test_lifecycle import wait_for

pytestmark = pytest.mark.e2e

PV_ONLY = str(EXAMPLES / "pv-only.cfg")


@pytest.fixture
def host() -> Iterator[Pvhvm]:
    """A pvhvm with a state directory of its own; whatever is left is killed at the end."""
    root = Path(tempfile.mkdtemp(prefix="pvp-", dir="/tmp"))
    try:
        yield Pvhvm(root)
    finally:
        for pid in _qemu_processes(root) + _supervisors(root):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def second_imagedir(imagedir: Path, tmp_path: Path) -> Path:
    """Another copy of the kit's root disk: two domains may not both write one image."""
    other = tmp_path / "images2"
    other.mkdir()
    for entry in imagedir.iterdir():
        if entry.name == "rootfs.ext4":
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(entry),
                            str(other / entry.name)], check=True)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), other / entry.name)
    return other


def console_run(pvhvm: Pvhvm, name: str) -> str:
    """The console log of the domain's last QEMU start."""
    log = pvhvm.console_log(name)
    return current_run(log.read_text(errors="replace")) if log.exists() else ""


def json_of(pvhvm: Pvhvm, *argv: str) -> Any:
    """The result of ``pvhvm ARGV`` (a --json or -l), checked against the schema."""
    words = argv[:2] if argv[0] == "host" else argv[:1]
    return jsonout.result(pvhvm.run(*argv).stdout, " ".join(words))


def listed_all(pvhvm: Pvhvm) -> dict[str, dict[str, object]]:
    rows = json_of(pvhvm, "list", "--all", "--json")
    return {row["name"]: row for row in rows}


def dead(pids: list[int]) -> bool:
    return all(not Path(f"/proc/{pid}").exists()
               or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
               for pid in pids)


def test_host_restart_brings_back_the_autostart_domain_only(
    host: Pvhvm, imagedir: Path, tmp_path: Path
) -> None:
    host.run("define", PV_ONLY, f"imagedir={imagedir}", "name=auto")
    other = second_imagedir(imagedir, tmp_path)
    host.run("define", PV_ONLY, f"imagedir={other}", "name=manual")
    host.run("autostart", "auto")
    for name in ("auto", "manual"):
        host.run("start", name, "--accel", "tcg")
    for name in ("auto", "manual"):
        host.wait_report(name)
    before = json_of(host, "list", "-l", "auto")[0]
    # named by its uuid and by its domid, as virsh and xl allow
    assert json_of(host, "list", "-l", before["uuid"].upper())[0]["name"] == "auto"
    assert json_of(host, "list", "--json", str(before["domid"]))[0]["name"] == "auto"

    # the host crashes: its supervisor and every QEMU are killed at once
    victims = _supervisors(host.state) + _qemu_processes(host.state)
    assert len(victims) == 3, victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for("the killed processes to be gone", lambda: dead(victims), 10)

    # boot: the service starts what is marked autostart, and only that
    started = json_of(host, "host", "start", "--json")
    assert started["failed"] == []
    assert any(line.startswith("auto: started (id ") for line in started["done"]), started
    assert not any(line.startswith("manual: started") for line in started["done"]), started
    wait_for("auto's guest report after the restart", lambda: END in console_run(host, "auto"),
             240)
    rows = listed_all(host)
    assert rows["manual"]["state"] == "shut off" and rows["manual"]["domid"] is None
    assert rows["auto"]["state"] == "running"
    after = json_of(host, "list", "-l", "auto")[0]
    # the same identity: uuid and MACs kept; a new domid, never one given before
    assert after["uuid"] == before["uuid"]
    assert [v["mac"] for v in after["plan"]["vifs"]] == [
        v["mac"] for v in before["plan"]["vifs"]]
    assert after["domid"] > max(before["domid"], 2)
    # idempotent: nothing more to start
    assert json_of(host, "host", "start", "--json") == {"done": [], "failed": []}

    # host stop --save-dir saves it; the next host start restores it (and does not start a
    # second one)
    saves = tmp_path / "saves"
    saves.mkdir()
    saved = json_of(host, "host", "stop", "--save-dir", str(saves), "--json")
    assert saved["failed"] == [] and (saves / "auto.save").exists(), saved
    assert listed_all(host)["auto"]["state"] == "shut off"
    restored = json_of(host, "host", "start", "--json")
    assert [line.split(" (id")[0] for line in restored["done"]] == [
        f"auto: restored from {saves / 'auto.save'}"], restored
    assert not (saves / "auto.save").exists()
    assert listed_all(host)["auto"]["state"] == "running"

    # host stop: the guest is asked and powers off cleanly
    stopped = json_of(host, "host", "stop", "--timeout", "120", "--json")
    assert stopped == {"done": ["auto: shut down"], "failed": []}
    assert "reboot: Power down" in console_run(host, "auto")
    rows = listed_all(host)
    assert {name: row["state"] for name, row in rows.items()} == {
        "auto": "shut off", "manual": "shut off"}
    # create of a defined domain's file: transient, with the definition's uuid, which stays
    manual = json_of(host, "list", "-l", "manual")[0]
    created = host.run("create", PV_ONLY, f"imagedir={other}", "name=manual", "--accel", "tcg")
    assert "note: domain manual is defined: this runs" in created.stderr, created.stderr
    assert json_of(host, "list", "-l", "manual")[0]["uuid"] == manual["uuid"]
    host.run("destroy", "manual")
    assert listed_all(host)["manual"]["state"] == "shut off"
    for name in ("auto", "manual"):
        host.run("undefine", name)
    assert json_of(host, "list", "--all", "--json") == []
    deadline = time.monotonic() + 5
    while _qemu_processes(host.state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _qemu_processes(host.state) == []
