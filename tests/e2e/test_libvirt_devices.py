"""The live-device verbs on ``--platform libvirt``, through a real libvirtd (started privately,
TCG), seen from inside the guest (its busybox shell over ``pvhvm console``, which is ``virsh
console`` here, on a pty as virsh wants).

One guest, booted once (PV root, an empty emulated CD drive, so machine pc; memory 192 of
maxmem 320), walks: the ioemu attach refused; a PV disk attached, seen and written by the
guest; a PV NIC with pvhvm's MAC seen by the guest; CD media inserted and ejected; mem-set
moving the guest's MemTotal; save (libvirt's own image, the domain gone) and restore (uptime
goes on, the hot-plugged devices still there); a forced detach while the guest is paused;
then both devices detached and gone from the guest. A second, boot-less test checks against the same daemon that q35's reserved hotplug
ports stay empty once libvirt has placed the domain's devices.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import subprocess
import sys
import termios
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pvhvm.guest.report import END
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm
from tests.e2e.test_hotplug import refused, wait_for
from tests.e2e.test_libvirt import libvirtd, listed, lv_create  # noqa: F401 (a fixture)
from tests.libvirt.daemon import PrivateLibvirtd

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("libvirt")]

NAME = "lvdev"
MAC = "00:16:3e:7a:00:02"


def shell(pvhvm: Pvhvm, command: str, timeout: float = 60) -> str:
    """Run ``command`` in the guest's shell over ``pvhvm console`` (virsh console, which
    needs a terminal: it gets a pty); the output, echoed command included."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pvhvm", "console", NAME], stdin=slave,
                            stdout=slave, stderr=slave, env=pvhvm.env(), start_new_session=True)
    os.close(slave)
    number = random.randrange(10_000, 90_000)
    marker = f"done-{number + 1}".encode()
    seen = b""

    def read_until(wanted: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while wanted not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the console went away
                    break

    try:
        read_until(b"Escape character")
        # virsh makes the terminal raw after saying so, flushing what was typed before
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(master)[3] & termios.ECHO and time.monotonic() < deadline:
            time.sleep(0.02)
        os.write(master, f"\n{command}; echo done-$(({number}+1))\n".encode())
        read_until(marker)
        os.write(master, b"\x1d")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    log = pvhvm.state / "libvirt" / "logs" / f"{NAME}.console.log"
    assert marker.decode() in text, (text[-800:], log.read_text(errors="replace")[-1500:])
    return text


def uptime(pvhvm: Pvhvm) -> float:
    text = shell(pvhvm, "cat /proc/uptime").split("cat /proc/uptime")[-1]
    lines = [ln for ln in text.splitlines() if ln.strip() and ln.split()[0][0].isdigit()]
    return float(lines[0].split()[0])


def mem_total_kib(pvhvm: Pvhvm) -> int:
    match = re.search(r"MemTotal:\s+(\d+) kB", shell(pvhvm, "grep MemTotal /proc/meminfo"))
    assert match
    return int(match.group(1))


def balloon_mib(daemon: PrivateLibvirtd) -> int:
    """The balloon's size as libvirt reads it from QEMU (virsh dommemstat: actual)."""
    stats = dict(line.split() for line in daemon.virsh("dommemstat", NAME).splitlines()
                 if line.strip())
    return int(stats["actual"]) // 1024


def rows(pvhvm: Pvhvm, verb: str) -> list[dict[str, Any]]:
    document = jsonout.result(pvhvm.run(verb, NAME, "--json").stdout)
    assert isinstance(document, list)
    return document


def blocks(pvhvm: Pvhvm) -> list[tuple[str, str, str]]:
    return [(r["vdev"], r["type"], r["driver"]) for r in rows(pvhvm, "block-list")]


def test_live_devices_save_restore_and_mem_set_through_libvirt(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path, tmp_path: Path  # noqa: F811
) -> None:
    config = tmp_path / "lvdev.cfg"
    text = (EXAMPLES / "pv-only.cfg").read_text().replace(
        'target=%s/rootfs.ext4" % imagedir ]',
        'target=%s/rootfs.ext4" % imagedir, ",hdc:cdrom,r" ]')
    assert "hdc:cdrom" in text
    config.write_text(text)
    pvhvm.run("create", str(config), f"imagedir={imagedir}", f"name={NAME}", "memory=192",
              "maxmem=320", "--platform", "libvirt", "--connect", libvirtd.uri,
              "--accel", "tcg")
    log = pvhvm.state / "libvirt" / "logs" / f"{NAME}.console.log"
    try:
        wait_for("the guest's report", lambda: log.exists() and END in log.read_text(
            errors="replace"), 300)
        assert blocks(pvhvm) == [("xvda", "xenbus", "libvirt virtio vda"),
                                 ("hdc", "ioemu", "libvirt ide hdc")]

        # pvhvm's rules on libvirt too: an emulated disk is refused in one line
        data = imagedir / "data.img"
        assert "IDE has no hotplug" in refused(
            pvhvm, "block-attach", NAME, f"{data},raw,hdb,w,type=ioemu")
        assert "hdb" not in libvirtd.virsh("domblklist", NAME)

        # a PV disk, in the xl spelling: libvirt's vdb, the guest's vdb, which it writes
        pvhvm.run("block-attach", NAME, f"format=raw, vdev=xvdb, access=rw, target={data}")
        assert blocks(pvhvm)[-1] == ("xvdb", "xenbus", "libvirt virtio vdb")
        assert str(data) in libvirtd.virsh("domblklist", NAME)
        wait_for("vdb in the guest", lambda: "vdb" in shell(pvhvm, "cat /proc/partitions"), 60)
        shell(pvhvm, "echo PVHVM-LIBVIRT-WRITE > /dev/vdb; sync")
        assert data.read_bytes()[:19] == b"PVHVM-LIBVIRT-WRITE"

        # a PV NIC with a given MAC, seen by the guest
        pvhvm.run("network-attach", NAME, f"mac={MAC}")
        assert [(n["devid"], n["mac"]) for n in rows(pvhvm, "network-list")][-1] == (1, MAC)
        wait_for("the new NIC in the guest", lambda: MAC in shell(
            pvhvm, "cat /sys/class/net/*/address"), 60)

        # CD media in the empty emulated drive, then out
        probe = ("dd if=/dev/sr0 of=/dev/null bs=2048 count=1 2>/dev/null; "
                 "dd if=/dev/sr0 bs=2048 count=1 2>&1 | head -c 48; echo")
        assert "No medium found" in shell(pvhvm, probe)
        iso = imagedir / "medium.iso"
        iso.write_bytes(b"PVHVM-CD-MEDIUM!".ljust(2048 * 16, b"x"))
        assert "no cdrom 'hdd'" in refused(pvhvm, "cd-insert", NAME, "hdd", str(iso))
        pvhvm.run("cd-insert", NAME, "hdc", str(iso))
        assert rows(pvhvm, "block-list")[1]["target"] == str(iso)
        wait_for("the medium in the guest", lambda: "PVHVM-CD-MEDIUM!" in shell(pvhvm, probe),
                 60)
        pvhvm.run("cd-eject", NAME, "hdc")
        assert rows(pvhvm, "block-list")[1]["target"] == "(empty)"
        assert "No medium found" in shell(pvhvm, probe)

        # mem-set: the balloon (the domain booted with maxmem 320, held at 192)
        booted = mem_total_kib(pvhvm)
        assert booted < 200 * 1024, booted
        assert "maxmem = 320 MiB" in refused(pvhvm, "mem-set", NAME, "321")
        pvhvm.run("mem-set", NAME, "256")
        assert wait_for("the balloon at 256 MiB", lambda: balloon_mib(libvirtd) == 256, 60)
        high = wait_for("MemTotal up", lambda: (
            kib if (kib := mem_total_kib(pvhvm)) >= booted + 60 * 1024 else None), 60)
        assert high - booted <= 68 * 1024, (booted, high)
        pvhvm.run("mem-set", NAME, "160")
        assert wait_for("the balloon at 160 MiB", lambda: balloon_mib(libvirtd) == 160, 60)
        wait_for("MemTotal down", lambda: 92 * 1024 <= high - mem_total_kib(pvhvm) <= 100 * 1024,
                 60)
        assert jsonout.result(pvhvm.run("list", "-l", NAME).stdout)[0]["plan"]["memory"] == 160

        # save: libvirt's own image; the domain is gone from pvhvm and from libvirt
        disks, nics = rows(pvhvm, "block-list"), rows(pvhvm, "network-list")
        before = uptime(pvhvm)
        image = tmp_path / "lvdev.save"
        assert "save -c and -p are not on it" in refused(pvhvm, "save", "-c", NAME, str(image))
        started = time.monotonic()
        saved = pvhvm.run("save", NAME, str(image), timeout=180)
        print(f"\n{saved.stderr.strip()} [CLI wall {time.monotonic() - started:.2f}s]")
        assert image.read_bytes()[:16] == b"LibvirtQemudSave"
        assert NAME not in listed(pvhvm)
        assert libvirtd.virsh("list", "--all", "--name").split() == []
        assert not list(tmp_path.glob(".lvdev.save.*"))

        # restore: the same guest goes on, with its hot-plugged devices
        started = time.monotonic()
        # the daemon the file names is never taken from the file: the user names it
        unnamed = pvhvm.run("restore", str(image), check=False)
        assert unnamed.returncode == 1 and unnamed.stderr.strip().endswith(
            f"to restore it there, add --connect {libvirtd.uri}")
        restored = pvhvm.run("restore", str(image), "--connect", libvirtd.uri, timeout=180)
        print(f"{restored.stderr.strip()} [CLI wall {time.monotonic() - started:.2f}s]")
        assert listed(pvhvm)[NAME] == "running"
        assert uptime(pvhvm) > before
        assert rows(pvhvm, "block-list") == disks
        assert rows(pvhvm, "network-list") == nics
        assert "vdb" in shell(pvhvm, "cat /proc/partitions")
        again = pvhvm.run("restore", str(image), "--connect", libvirtd.uri, check=False)
        assert again.returncode == 1 and "already exists" in again.stderr

        # a guest that cannot let go (paused): the detach times out; --force forgets the
        # disk, and libvirt removes it once the running guest has released it
        spare = imagedir / "spare.img"
        spare.write_bytes(bytes(1 << 20))
        pvhvm.run("block-attach", NAME, f"{spare},raw,xvdc,w")
        assert str(spare) in libvirtd.virsh("domblklist", NAME)
        pvhvm.run("pause", NAME)
        assert "did not release it within 2s" in refused(
            pvhvm, "block-detach", NAME, "xvdc", "--timeout", "2")
        assert blocks(pvhvm)[-1][0] == "xvdc"
        forced = pvhvm.run("block-detach", NAME, "xvdc", "--force", "--timeout", "2")
        assert "has not released it yet" in forced.stderr
        assert "xvdc" not in [b[0] for b in blocks(pvhvm)]
        assert str(spare) in libvirtd.virsh("domblklist", NAME)
        pvhvm.run("unpause", NAME)
        wait_for("libvirt to drop the forced disk", lambda: str(spare) not in libvirtd.virsh(
            "domblklist", NAME), 60)

        # detach both: the guest lets go, and they are gone from it and from the listings
        pvhvm.run("block-detach", NAME, "xvdb", timeout=120)
        assert [b[0] for b in blocks(pvhvm)] == ["xvda", "hdc"]
        wait_for("vdb gone from the guest", lambda: "vdb" not in shell(
            pvhvm, "cat /proc/partitions").split("echo done")[-1], 60)
        pvhvm.run("network-detach", NAME, MAC, timeout=120)
        assert [n["devid"] for n in rows(pvhvm, "network-list")] == [0]
        wait_for("the NIC gone from the guest", lambda: MAC not in shell(
            pvhvm, "cat /sys/class/net/*/address").split("echo done")[-1], 60)
        assert "has no disk xvdb" in refused(pvhvm, "block-detach", NAME, "xvdb")
    finally:
        pvhvm.run("destroy", NAME, check=False)
    assert not libvirtd.qemu_pids()


def test_q35_hotplug_ports_stay_free_in_libvirt(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """libvirt places a q35 domain's own devices on the root bus, as the XML says, and leaves
    the ``hotplug_slots`` pcie-root-ports empty for block-/network-attach (defined only)."""
    xml = tmp_path / "q35.xml"
    pvhvm.run("export-libvirt", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
              "--virt-type", "qemu", "-o", str(xml))
    libvirtd.virsh("define", str(xml))
    try:
        placed = ET.fromstring(libvirtd.virsh("dumpxml", "pv-only"))
    finally:
        libvirtd.virsh("undefine", "pv-only")
    ports = {c.get("index") for c in placed.findall("devices/controller[@model='pcie-root-port']")
             if (c.find("alias") is not None
                 and str(c.find("alias").get("name")).startswith("ua-hotplug"))}  # type: ignore[union-attr]
    assert len(ports) == 2
    used = {int(str(a.get("bus")), 16) for a in placed.iter("address") if a.get("type") == "pci"}
    assert not {int(p) for p in ports if p} & used
