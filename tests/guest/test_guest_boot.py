"""Real boots of the guest image kit under QEMU/TCG (run them in parallel: ``-n 2``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pvhvm.guest.kit import Kit, build_kit
from pvhvm.guest.report import IDE_CLASS, SATA_CLASS

BootFn = Callable[..., Any]  # the `boot` fixture of conftest.py

pytestmark = pytest.mark.e2e

DIRECT_APPEND = "console=ttyS0 pvhvm.poweroff=1"


def direct(kit: Kit, append: str = DIRECT_APPEND) -> list[str]:
    return ["-kernel", str(kit.vmlinuz), "-initrd", str(kit.initramfs), "-append", append]


def drive(path: object, drive_id: str = "d0") -> list[str]:
    return ["-drive", f"file={path},if=none,id={drive_id},format=raw,snapshot=on"]


def test_rebuild_is_a_noop(kit: Kit) -> None:
    before = kit.manifest()
    again = build_kit(kit.directory)
    assert again == kit
    assert again.manifest() == before


def test_direct_boot_virtio_blk_on_q35(kit: Kit, boot: BootFn) -> None:
    """(a) PV only: root on virtio-blk, no IDE or SATA function, a virtio NIC."""
    result = boot(
        "-M", "q35,sata=off,smbus=off", *direct(kit), *drive(kit.rootfs),
        "-device", "virtio-blk-pci,drive=d0",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=00:16:3e:00:00:01",
        name="direct-virtio",
    )
    report = result.report
    print(f"direct virtio boot: report after {result.seconds_to_report:.1f}s")
    assert result.exited, "pvhvm.poweroff=1 should power the guest off"
    assert report.root == "/dev/vda"
    assert report.rootfstype == "ext4"
    vda = report.block("vda")
    assert vda is not None and vda.driver == "virtio_blk"
    assert vda.sectors == kit.rootfs.stat().st_size // 512
    assert not report.has_class(IDE_CLASS)
    assert not report.has_class(SATA_CLASS)
    assert [(n.driver, n.mac) for n in report.nets] == [("virtio_net", "00:16:3e:00:00:01")]


def test_direct_boot_ide_on_pc(kit: Kit, boot: BootFn) -> None:
    """(b) emulated: root on an IDE disk behind ata_piix, an rtl8139 NIC, an empty CD."""
    result = boot(
        "-M", "pc", *direct(kit), *drive(kit.rootfs),
        "-device", "ide-hd,drive=d0,bus=ide.0,unit=0", "-device", "ide-cd,bus=ide.1,unit=0",
        "-netdev", "user,id=n0", "-device", "rtl8139,netdev=n0,mac=00:16:3e:00:00:02",
        name="direct-ide",
    )
    report = result.report
    print(f"direct IDE boot: report after {result.seconds_to_report:.1f}s")
    assert result.exited
    assert report.root == "/dev/sda"
    sda = report.block("sda")
    assert sda is not None and sda.driver == "ata_piix"
    sr0 = report.block("sr0")
    assert sr0 is not None and sr0.driver == "ata_piix"
    ide = [f for f in report.pci if f.pci_class == IDE_CLASS]
    assert [(f.slot, f.driver) for f in ide] == [("0000:00:01.1", "ata_piix")]
    assert [(n.driver, n.mac) for n in report.nets] == [("8139cp", "00:16:3e:00:00:02")]
    root_disk = report.root_disk()
    assert root_disk is not None and root_disk.name == "sda"


def test_firmware_boot_virtio_blk_on_q35(kit: Kit, boot: BootFn) -> None:
    """(c) SeaBIOS boots boot.img from virtio-blk; the ACPI power button then powers it off."""
    result = boot(
        "-M", "q35,sata=off,smbus=off", *drive(kit.bootdisk),
        "-device", "virtio-blk-pci,drive=d0,bootindex=0",
        "-netdev", "user,id=n0", "-device", "e1000,netdev=n0,mac=00:16:3e:00:00:03",
        name="firmware-virtio", expect_exit=False, powerdown=True,
    )
    report = result.report
    print(f"firmware virtio boot: report after {result.seconds_to_report:.1f}s")
    assert "SYSLINUX" in result.log
    assert report.root == "/dev/vda2"
    vda = report.block("vda")
    assert vda is not None and vda.driver == "virtio_blk"
    assert vda.sectors == kit.bootdisk.stat().st_size // 512
    assert not report.has_class(IDE_CLASS)
    assert [(n.driver, n.mac) for n in report.nets] == [("e1000", "00:16:3e:00:00:03")]
    assert result.exited, "the guest should power off on the ACPI power button"


def test_firmware_boot_ide_on_pc(kit: Kit, boot: BootFn) -> None:
    """SeaBIOS boots boot.img from the primary IDE master; root found by label on sda2."""
    result = boot(
        "-M", "pc", *drive(kit.bootdisk), "-device", "ide-hd,drive=d0,bus=ide.0,unit=0",
        name="firmware-ide", expect_exit=False,
    )
    report = result.report
    print(f"firmware IDE boot: report after {result.seconds_to_report:.1f}s")
    assert report.root == "/dev/sda2"
    sda = report.block("sda")
    assert sda is not None and sda.driver == "ata_piix"
    assert report.nets == []


def test_root_by_label_on_second_disk(kit: Kit, boot: BootFn) -> None:
    """Without root=, the initramfs finds the disk labelled pvhvm-root wherever it is."""
    result = boot(
        "-M", "q35,sata=off,smbus=off", *direct(kit),
        "-drive", "if=none,id=blank,driver=null-co,size=8M",
        "-device", "virtio-blk-pci,drive=blank", *drive(kit.rootfs),
        "-device", "virtio-blk-pci,drive=d0",
        name="label",
    )
    assert result.report.root == "/dev/vdb"
    assert [b.name for b in result.report.blocks] == ["vda", "vdb"]


def test_missing_root_reports_an_error(kit: Kit, boot: BootFn) -> None:
    """A root= that never appears gives PVHVM-ERROR (and poweroff), not a hang."""
    with pytest.raises(pytest.fail.Exception, match="PVHVM-ERROR"):
        boot(
            "-M", "q35,sata=off,smbus=off",
            *direct(kit, DIRECT_APPEND + " root=/dev/vdz rootwait=2"),
            name="noroot",
        )
