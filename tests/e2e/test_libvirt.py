"""``--platform libvirt`` through a real libvirtd (started privately by the test, TCG guests):
the PV-only example boots with no IDE controller and its root on virtio_blk, the default
example has IDE; list, pause, unpause, shutdown -w, destroy, block-/network-list go through
libvirt, and virsh sees the same domains. A second host reached over TCP, and live migration
between hosts, are in test_libvirt_hosts.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import jsonout
from tests.e2e.conftest import BOOT_TIMEOUT, EXAMPLES, Pvhvm
from tests.libvirt.daemon import PrivateLibvirtd

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("libvirt")]


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    for tool in ("libvirtd", "virsh", "unshare"):
        assert shutil.which(tool), f"{tool} is missing: run dev/setup"
    daemon = PrivateLibvirtd()
    daemon.start()
    try:
        yield daemon
    finally:
        leftovers = daemon.stop()
        assert not leftovers, f"domains left running in libvirt: {leftovers}"


def lv_create(pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, example: str, imagedir: Path,
              *extra: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return pvhvm.run("create", str(EXAMPLES / example), f"imagedir={imagedir}",
                     "--platform", "libvirt", "--connect", libvirtd.uri, "--accel", "tcg",
                     *extra, check=check)


def report(pvhvm: Pvhvm, name: str) -> dict[str, object]:
    done = pvhvm.run("report", name, "--json", "--timeout", str(BOOT_TIMEOUT),
                     timeout=BOOT_TIMEOUT + 60)
    document = jsonout.result(done.stdout)
    assert isinstance(document, dict)
    return document


def listed(pvhvm: Pvhvm) -> dict[str, str]:
    rows = jsonout.result(pvhvm.run("list", "--json").stdout)
    return {row["name"]: row["state"] for row in rows}


def test_pv_only_guest_through_libvirt(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path
) -> None:
    created = lv_create(pvhvm, libvirtd, "pv-only.cfg", imagedir)
    assert "libvirt always adds q35's integrated SATA controller" in " ".join(
        created.stderr.split())
    try:
        assert libvirtd.virsh("list", "--name").split() == ["pv-only"]
        record = jsonout.result(pvhvm.run("list", "-l", "pv-only").stdout)[0]
        assert record["platform"] == "libvirt" and record["accel"] == "tcg"
        assert listed(pvhvm)["pv-only"] == "running"

        seen = report(pvhvm, "pv-only")
        assert seen["ide_controller"] is False
        assert seen["root"] == "/dev/vda"
        blocks = {b["name"]: b["driver"] for b in seen["blocks"]}  # type: ignore[attr-defined]
        assert blocks["vda"] == "virtio_blk"
        # What libvirt adds on q35 and pvhvm's own QEMU does not (the export's NOTE says so)
        assert seen["sata_controller"] is True
        nets = seen["nets"]
        assert [(n["driver"], n["mac"]) for n in nets] == [  # type: ignore[attr-defined]
            ("virtio_net", record["plan"]["vifs"][0]["mac"])]

        (row,) = jsonout.result(pvhvm.run("list", "--json", "pv-only").stdout)
        assert row["cpu_seconds"] > 0  # libvirt's CPU time of a guest that has booted
        disks = jsonout.result(pvhvm.run("block-list", "pv-only", "--json").stdout)
        assert [(d["vdev"], d["type"], d["driver"]) for d in disks] == [
            ("xvda", "xenbus", "libvirt virtio vda")]
        nics = jsonout.result(pvhvm.run("network-list", "pv-only", "--json").stdout)
        # no xenbr0 here: user networking, said in a field of its own (not in the driver)
        assert [(n["driver"], n["bridge"], n["user_networking"]) for n in nics] == [
            ("libvirt virtio", "xenbr0", True)]

        pvhvm.run("pause", "pv-only")
        assert listed(pvhvm)["pv-only"] == "paused"
        assert "paused" in libvirtd.virsh("domstate", "pv-only")
        refused = pvhvm.run("shutdown", "-w", "pv-only", check=False)
        assert refused.returncode == 1 and "is paused" in refused.stderr
        pvhvm.run("unpause", "pv-only")
        assert listed(pvhvm)["pv-only"] == "running"

        pvhvm.run("shutdown", "-w", "pv-only", "--timeout", "120", timeout=180)
        assert "pv-only" not in listed(pvhvm)
        assert libvirtd.virsh("list", "--all", "--name").split() == []
        assert not (pvhvm.state / "libvirt" / "domains" / "pv-only").exists()
    finally:
        pvhvm.run("destroy", "pv-only", check=False)


def test_default_guest_has_ide_and_destroy_leaves_nothing(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path
) -> None:
    lv_create(pvhvm, libvirtd, "default.cfg", imagedir)
    try:
        assert len(libvirtd.qemu_pids(settle=0)) == 1
        seen = report(pvhvm, "default")
        assert seen["ide_controller"] is True
        assert str(seen["root"]).startswith("/dev/sda")
        blocks = {b["name"]: b["driver"] for b in seen["blocks"]}  # type: ignore[attr-defined]
        assert blocks == {"sda": "ata_piix"}
        assert [n["driver"] for n in seen["nets"]] in (  # type: ignore[attr-defined]
            ["8139cp"], ["8139too"])
        disks = jsonout.result(pvhvm.run("block-list", "default", "--json").stdout)
        assert [(d["vdev"], d["type"], d["driver"]) for d in disks] == [
            ("hda", "ioemu", "libvirt ide hda")]
        # names stay unique across platforms: the qemu platform refuses this one
        clash = pvhvm.run("create", str(EXAMPLES / "default.cfg"), f"imagedir={imagedir}",
                          "--accel", "tcg", check=False)
        assert clash.returncode == 1
        assert "domain 'default' already exists (on the libvirt platform)" in clash.stderr
    finally:
        pvhvm.run("destroy", "default")
    assert libvirtd.virsh("list", "--all", "--name").split() == []
    assert not libvirtd.qemu_pids()
    gone = pvhvm.run("destroy", "default", check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == "pvhvm: error: no domain named 'default'"
    # The console log outlives the domain and a new run appends to it after a start marker,
    # as on the qemu platform: the first run's report is kept.
    log = pvhvm.state / "libvirt" / "logs" / "default.console.log"
    first = log.read_text(errors="replace")
    assert first.startswith("--- pvhvm: domain default started at ")
    assert "(started by libvirt) ---" in first.splitlines()[0] and "ata_piix" in first
    lv_create(pvhvm, libvirtd, "default.cfg", imagedir, "-p")
    try:
        again = log.read_text(errors="replace")
        assert again.startswith(first) and again.count("--- pvhvm: domain default started") == 2
        assert (log.stat().st_mode & 0o777) == 0o600
    finally:
        pvhvm.run("destroy", "default")


def test_failed_libvirt_create_leaves_nothing(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path, tmp_path: Path
) -> None:
    nobody = f"qemu+unix:///system?socket={tmp_path / 'nobody.sock'}"
    failed = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                       "--platform", "libvirt", "--connect", nobody, "--accel", "tcg",
                       check=False)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pvhvm: error: cannot connect to libvirt at {nobody}: ")
    assert "Traceback" not in failed.stderr
    assert not list((pvhvm.state / "libvirt" / "domains").glob("*"))
    # --connect belongs to the libvirt platform only
    wrong = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                      "--connect", libvirtd.uri, check=False)
    assert wrong.returncode == 1 and "--connect applies to --platform libvirt only" in wrong.stderr


def test_emulated_scsi_disk_through_libvirt(
    pvhvm: Pvhvm, libvirtd: PrivateLibvirtd, imagedir: Path, tmp_path: Path
) -> None:
    """An untyped sda of an HVM guest (issue 20: emulated SCSI, as xl emulates it) exported to
    libvirt as bus='scsi' on an lsilogic controller: libvirt's QEMU gives the guest the same
    lsi53c895a that pvhvm's own QEMU gives it, and the guest boots from it (sym53c8xx)."""
    cfg = tmp_path / "lvscsi.cfg"
    cfg.write_text('name = "lvscsi"\nbuilder = "hvm"\nmemory = 256\nboot = "c"\n'
                   f'disk = [ "{imagedir}/boot.img,raw,sda,rw" ]\n')
    pvhvm.run("create", str(cfg), "--platform", "libvirt", "--connect", libvirtd.uri,
              "--accel", "tcg")
    try:
        assert "model='lsilogic'" in libvirtd.virsh("dumpxml", "lvscsi").replace('"', "'")
        seen = report(pvhvm, "lvscsi")
        assert seen["ide_controller"] is False
        blocks = {b["name"]: b["driver"] for b in seen["blocks"]}  # type: ignore[attr-defined]
        assert blocks.get("sda") == "sym53c8xx"
        assert str(seen["root"]).startswith("/dev/sda")
    finally:
        pvhvm.run("destroy", "lvscsi")
