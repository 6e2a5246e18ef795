"""Inspect and check the real installed Debian 12 guest (pvhvm.guest.installed builds it
from Debian's packages: debootstrap, GRUB in the MBR, root=/dev/sda1), without booting it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.config.domain import load_config
from pvhvm.guest.installed import InstalledGuest, build_installed
from pvhvm.inspect.check import Severity, check_plan
from pvhvm.inspect.image import find_boot_entry, inspect_image
from pvhvm.plan.plan import make_plan

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session", params=["ide", "full"])
def installed(request: pytest.FixtureRequest) -> tuple[str, InstalledGuest]:
    variant = str(request.param)
    return variant, build_installed(variant=variant)


def test_inspect_installed_guest(installed: tuple[str, InstalledGuest], tmp_path: Path) -> None:
    variant, guest = installed
    manifest = guest.manifest()
    report = inspect_image(guest.disk)
    assert report.os_release["ID"] == "debian" and report.os_release["VERSION_ID"] == "12"
    assert report.table.scheme == "mbr" and [p.number for p in report.table.partitions] == [1]
    assert report.root is not None and report.root.partition == 1
    assert report.bootloader is not None and report.bootloader.loader == "grub2"
    entry = report.default_entry
    root_device = manifest["root_device"]  # /dev/sda1 as installed on IDE, or UUID=
    assert entry is not None and entry.argument("root") == root_device
    assert "console=ttyS0,115200" in entry.arguments()
    assert [e.device.spec for e in report.fstab if e.mountpoint == "/"] == [root_device]
    kernel = report.kernel_for(entry)
    assert kernel is not None and kernel.release == manifest["kernel_release"]
    assert kernel.initrd is not None and kernel.initrd.error is None
    drivers = kernel.drivers
    assert drivers["ata_piix"].at_boot and drivers["sd_mod"].at_boot
    assert drivers["virtio_blk"].installed and drivers["virtio_net"].installed
    assert drivers["virtio_blk"].at_boot is (variant == "full")
    assert drivers["virtio_pci"].at_boot is (variant == "full")
    boot = find_boot_entry(guest.disk, tmp_path)
    assert boot.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage's setup header
    assert boot.initrd is not None and boot.initrd.stat().st_size == kernel.initrd.size


def _plan(tmp_path: Path, guest: InstalledGuest, disk: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "installed.cfg"
    cfg.write_text(f'name = "installed"\nbuilder = "hvm"\nmemory = 512\nboot = "c"\n'
                   f'disk = [ "{disk % guest.disk}" ]\nvif = [ "" ]\n')
    return make_plan(load_config(cfg, {}))


def test_check_installed_guest(installed: tuple[str, InstalledGuest], tmp_path: Path) -> None:
    variant, guest = installed
    ide = check_plan(_plan(tmp_path, guest, "file:%s,hda,w"))
    assert not ide.fatal, [p.line() for p in ide.problems]
    pv = check_plan(_plan(tmp_path, guest, "file:%s,hda,w,type=xenbus"))
    fatal = [p.line() for p in pv.problems if p.severity is Severity.FATAL]
    driver = [line for line in fatal if "lacks" in line]
    if variant == "ide":
        assert any("virtio_blk" in line for line in driver)
        assert any("virtio_pci" in line for line in driver)
    else:
        assert driver == []  # MODULES=most carries virtio
    by_name = [line for line in fatal if line.startswith(
        "fatal: root=/dev/sda1: /dev/sda1 will not exist") and "/dev/vda1" in line]
    if guest.manifest()["root_device"] == "/dev/sda1":
        assert by_name  # a PV disk is vda: sda1 will not exist
    else:
        assert fatal == []  # by UUID= and with virtio: the guest passes at once
