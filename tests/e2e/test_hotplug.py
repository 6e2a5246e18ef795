"""Hotplug on real guests (TCG), through the CLI: PV disks and NICs attached and detached while
the guest runs, seen from inside it (its busybox shell on the console and its device report);
the refusals; CD media changed in an empty emulated drive; hot-plugged devices kept across a
guest reboot, a supervisor restart and a QEMU relaunch (on_crash=restart).

Two boots: one PV-only guest (q35, two reserved hotplug slots) walks the whole disk/NIC story;
one guest with an emulated empty CD drive (machine pc) takes the CD media.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pvhvm.guest.report import END
from pvhvm.qemu import qmp
from pvhvm.runtime.logs import MARKER_PREFIX
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm, console_shell

pytestmark = pytest.mark.e2e

PV_ONLY = str(EXAMPLES / "pv-only.cfg")
#: the 1 MiB spare disk's line in the guest's /proc/partitions
SPARE = re.compile(r"\s1024\s+vd[a-z]+\s")


def guest_shell(pvhvm: Pvhvm, name: str, command: str, timeout: float = 60) -> str:
    """Run ``command`` in the guest's shell over ``pvhvm console``; its output (the echoed
    command too: callers look for what it cannot contain)."""
    return console_shell([sys.executable, "-m", "pvhvm"], pvhvm.env(), name, command, timeout)


def record(pvhvm: Pvhvm, name: str) -> dict[str, Any]:
    document = json.loads((pvhvm.state / "domains" / name / "record.json").read_text())
    assert isinstance(document, dict)
    return document


def wait_for(what: str, predicate: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def last_report(pvhvm: Pvhvm, name: str, after: int) -> list[str]:
    """The lines of the report that follows the ``after``-th one in the console log."""
    text = wait_for(f"report {after + 1} of {name}", lambda: (
        t if (t := pvhvm.console_log(name).read_text(errors="replace")).count(END) > after
        else None), 240)
    return text.split(END)[after].splitlines()


def blocks(pvhvm: Pvhvm, name: str) -> list[tuple[str, str, str]]:
    rows = jsonout.result(pvhvm.run("block-list", name, "--json").stdout)
    return [(r["vdev"], r["type"], r["driver"]) for r in rows]


def nics(pvhvm: Pvhvm, name: str) -> list[tuple[int, str]]:
    return [(n["devid"], n["mac"])
            for n in jsonout.result(pvhvm.run("network-list", name, "--json").stdout)]


def node_names(pvhvm: Pvhvm, name: str) -> Any:
    """QEMU's own block nodes (QMP query-named-block-nodes on the domain's control socket)."""
    return qmp.execute(pvhvm.state / "domains" / name / "ctl.sock", "query-named-block-nodes")


def refused(pvhvm: Pvhvm, *argv: str) -> str:
    proc = pvhvm.run(*argv, check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_pv_disk_and_nic_hotplug_walk(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    name = "hot"
    domain.append(name)
    pvhvm.run("create", PV_ONLY, f"imagedir={imagedir}", f"name={name}", "--accel", "tcg",
              "on_crash=restart")
    pvhvm.wait_report(name)
    data = imagedir / "data.img"
    before = record(pvhvm, name)

    # the emulated disk and a cdrom are refused in one line, leaving the record as it was
    assert "IDE has no hotplug" in refused(
        pvhvm, "block-attach", name, f"{data},raw,hdb,w,type=ioemu")
    assert "IDE has no hotplug" in refused(pvhvm, "block-attach", name, f"{data},hdc:cdrom,r")
    assert record(pvhvm, name)["argv"] == before["argv"]

    # attach a PV disk (the xl spelling, no type=: PV as xl attaches it); the guest sees it
    pvhvm.run("block-attach", name, f"format=raw, vdev=xvdb, access=rw, target={data}")
    assert blocks(pvhvm, name) == [("xvda", "xenbus", "virtio-blk-pci"),
                                   ("xvdb", "xenbus", "virtio-blk-pci")]
    assert "vdb" in wait_for("vdb in the guest", lambda: (
        out if "vdb" in (out := guest_shell(pvhvm, name, "cat /proc/partitions")) else None), 60)
    # the guest writes to it, and the host file has the bytes
    guest_shell(pvhvm, name, "echo PVHVM-HOTPLUG-WRITE > /dev/vdb; sync")
    assert data.read_bytes()[:19] == b"PVHVM-HOTPLUG-WRITE"

    # a PV NIC; then both slots are in use and a third device is refused
    pvhvm.run("network-attach", name, "mac=00:16:3e:7a:00:01")
    assert nics(pvhvm, name)[1] == (1, "00:16:3e:7a:00:01")
    assert "00:16:3e:7a:00:01" in wait_for("eth1 in the guest", lambda: (
        out if "7a:00:01" in (out := guest_shell(
            pvhvm, name, "cat /sys/class/net/*/address")) else None), 60)
    spare = imagedir / "spare.img"
    spare.write_bytes(b"\0" * (1 << 20))
    assert "no free hotplug slot" in refused(pvhvm, "block-attach", name, f"{spare},xvdc,w")
    assert "no free hotplug slot" in refused(pvhvm, "network-attach", name)
    assert [d["vdev"] for d in record(pvhvm, name)["plan"]["disks"]] == ["xvda", "xvdb"]
    long = jsonout.result(pvhvm.run("list", "-l", name).stdout)
    assert [d["vdev"] for d in long[0]["plan"]["disks"]] == ["xvda", "xvdb"]

    # a guest reboot (ACPI; then reset in place, on_reboot=restart) keeps them
    pvhvm.run("reboot", name)
    report = last_report(pvhvm, name, 1)
    assert any(line.startswith("blk vdb driver=virtio_blk") for line in report), report
    assert any("mac=00:16:3e:7a:00:01" in line for line in report), report

    # the supervisor dies: the next command's adoption takes over; then QEMU dies
    # (on_crash=restart) and the relaunch has the hot-plugged devices from the record
    supervisor = record(pvhvm, name)["supervisor_pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for("the adopting supervisor", lambda: (
        pvhvm.run("list").returncode == 0
        and record(pvhvm, name)["supervisor_pid"] not in (None, supervisor)), 30)
    qemu = record(pvhvm, name)["qemu_pid"]
    log = pvhvm.console_log(name)
    os.kill(qemu, signal.SIGKILL)
    # the console log is kept across QEMU starts, each run after its start marker
    wait_for("a relaunched QEMU", lambda: record(pvhvm, name)["qemu_pid"] != qemu
             and log.read_text(errors="replace").count(MARKER_PREFIX) == 2, 60)
    report = last_report(pvhvm, name, 2)  # boot, reboot, then the relaunch's
    assert any(line.startswith("blk vdb driver=virtio_blk") for line in report), report
    assert any("mac=00:16:3e:7a:00:01" in line for line in report), report
    assert record(pvhvm, name)["restarts"] == 1

    # detach both: the guest lets go, they vanish from the lists, the record and the guest
    pvhvm.run("block-detach", name, "51728")  # by devid (xvdb)
    pvhvm.run("network-detach", name, "00:16:3e:7a:00:01")  # by MAC
    assert blocks(pvhvm, name) == [("xvda", "xenbus", "virtio-blk-pci")]
    assert [devid for devid, _ in nics(pvhvm, name)] == [0]
    after = record(pvhvm, name)
    assert after["hotplugged"] == [] and "disk-xvdb" not in " ".join(after["argv"])
    out = guest_shell(pvhvm, name, "cat /proc/partitions; cat /sys/class/net/*/address")
    assert "vdb" not in out and "7a:00:01" not in out and "vda" in out
    assert "has no disk xvdb" in refused(pvhvm, "block-detach", name, "xvdb")
    assert "given at create" in refused(pvhvm, "block-detach", name, "xvda")

    # a block node QEMU cannot open (not qcow2) is refused and leaves nothing behind
    assert "QEMU refused blockdev-add" in refused(
        pvhvm, "block-attach", name, f"{spare},qcow2,xvdc,r")
    assert "disk-xvdc" not in json.dumps(node_names(pvhvm, name))
    assert record(pvhvm, name)["argv"] == after["argv"]

    # a slot is free again
    pvhvm.run("block-attach", name, f"{spare},raw,xvdc,r")
    assert blocks(pvhvm, name)[-1] == ("xvdc", "xenbus", "virtio-blk-pci")
    # (the guest names it vdb again: the name is free; 1024 KiB tells it apart)
    wait_for("the spare disk in the guest", lambda: SPARE.search(
        guest_shell(pvhvm, name, "cat /proc/partitions")), 60)

    # a guest that does not answer (paused) keeps the disk: detach times out and says so;
    # --force forgets it, and the supervisor removes its block node once the guest lets go
    pvhvm.run("pause", name)
    assert "did not release it within 3s" in refused(
        pvhvm, "block-detach", name, "xvdc", "--timeout", "3")
    assert blocks(pvhvm, name)[-1][0] == "xvdc"
    forced = pvhvm.run("block-detach", name, "xvdc", "--force", "--timeout", "3")
    assert "has not released it yet" in forced.stderr
    assert [b[0] for b in blocks(pvhvm, name)] == ["xvda"]
    assert [r["device"] for r in record(pvhvm, name)["releasing"]] == ["vbd-51744"]
    assert "disk-xvdc" in json.dumps(node_names(pvhvm, name))
    pvhvm.run("unpause", name)
    wait_for("the forced disk released", lambda: record(pvhvm, name)["releasing"] == [], 90)
    assert "disk-xvdc" not in json.dumps(node_names(pvhvm, name))
    wait_for("the spare disk gone from the guest", lambda: not SPARE.search(
        guest_shell(pvhvm, name, "cat /proc/partitions")), 60)


def test_cd_insert_and_eject_in_an_empty_drive(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    name = "cdg"
    config = tmp_path / "cd.cfg"
    text = Path(PV_ONLY).read_text().replace(
        'target=%s/rootfs.ext4" % imagedir ]', 'target=%s/rootfs.ext4" % imagedir, ",hdc:cdrom,r" ]')
    assert "hdc:cdrom" in text
    config.write_text(text)
    domain.append(name)
    pvhvm.run("create", str(config), f"imagedir={imagedir}", f"name={name}", "--accel", "tcg")
    report = pvhvm.wait_report(name)
    assert report is not None
    assert blocks(pvhvm, name)[1] == ("hdc", "ioemu", "ide-cd")
    probe = "dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>/dev/null; " \
            "dd if=/dev/sr0 bs=2048 count=1 2>&1 | head -c 48; echo; cat /sys/block/sr0/size"
    assert "No medium found" in guest_shell(pvhvm, name, probe)

    iso = imagedir / "medium.iso"
    iso.write_bytes(b"PVHVM-CD-MEDIUM!".ljust(2048 * 16, b"x"))
    assert "no cdrom 'hdd'" in refused(pvhvm, "cd-insert", name, "hdd", str(iso))
    assert "does not exist" in refused(pvhvm, "cd-insert", name, "hdc", str(iso) + ".nope")
    pvhvm.run("cd-insert", name, "hdc", str(iso))
    rows = jsonout.result(pvhvm.run("block-list", name, "--json").stdout)
    assert rows[1]["target"] == str(iso)
    inserted = wait_for("the medium in the guest", lambda: (
        out if "PVHVM-CD-MEDIUM!" in (out := guest_shell(pvhvm, name, probe)) else None), 60)
    assert "64" in [line.strip() for line in inserted.splitlines()]  # 32 KiB, 512 B sectors
    drive = next(a for a in record(pvhvm, name)["argv"] if a.startswith("id=disk-hdc,"))
    assert f"file={iso}" in drive  # a relaunch starts with the medium in

    pvhvm.run("cd-eject", name, "hdc")
    rows = jsonout.result(pvhvm.run("block-list", name, "--json").stdout)
    assert rows[1]["target"] == "(empty)"
    assert "No medium found" in guest_shell(pvhvm, name, probe)
    drive = next(a for a in record(pvhvm, name)["argv"] if a.startswith("id=disk-hdc,"))
    assert drive == "id=disk-hdc,if=none,media=cdrom"
