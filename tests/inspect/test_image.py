"""inspect_image and find_boot_entry on whole installed-looking disks built in the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError
from pvhvm.inspect.etcfiles import Naming
from pvhvm.inspect.extfs import ExtFilesystem
from pvhvm.inspect.image import find_boot_entry, inspect_image
from tests.inspect.conftest import (
    BOOT_UUID,
    COMPRESSORS,
    IDE_MODULES,
    MIB,
    PV_MODULES,
    RELEASE,
    ROOT_UUID,
    InstalledImage,
    cpio_of,
    installed_image,
    make_ext4,
    write_tree,
)


def test_installed_ide_guest(ide_install: InstalledImage) -> None:
    report = inspect_image(ide_install.path)
    assert report.table.scheme == "mbr"
    roles = {fs.partition: (fs.signature.type if fs.signature else None, fs.role)
             for fs in report.filesystems}
    assert roles == {1: ("ext4", "boot"), 2: ("ext4", "root"), 5: ("swap", "")}
    assert report.root is not None and report.root.signature is not None
    assert report.root.signature.uuid == ROOT_UUID
    assert report.os_release["ID"] == "debian" and report.os_release["VERSION_ID"] == "12"
    assert report.bootloader is not None and report.bootloader.loader == "grub2"
    assert report.bootloader.path == "partition 1:/grub/grub.cfg"
    entry = report.default_entry
    assert entry is not None
    assert entry.kernel == f"/boot/vmlinuz-{RELEASE}"  # /boot is its own partition
    assert entry.argument("root") == "/dev/sda2"
    assert [k.release for k in report.kernels] == [RELEASE]
    kernel = report.kernels[0]
    assert kernel.initrd is not None and kernel.initrd.error is None
    assert kernel.initrd.compression == "zstd" and kernel.initrd.microcode
    assert kernel.drivers["ata_piix"].initramfs is True
    assert kernel.drivers["virtio_blk"].initramfs is False
    assert kernel.drivers["virtio_blk"].installed is True  # in modules.dep, via /lib -> usr/lib
    assert kernel.drivers["ext4"].builtin  # CONFIG_EXT4_FS=y in /boot/config-*
    assert [(e.mountpoint, e.device.naming) for e in report.fstab] == [
        ("/", Naming.KERNEL_NAME), ("/boot", Naming.KERNEL_NAME), ("none", Naming.KERNEL_NAME),
        ("/media/cdrom0", Naming.OTHER_PATH),
    ]
    assert report.default_grub["GRUB_CMDLINE_LINUX"] == "console=ttyS0,115200"
    assert report.gettys == ["tty1"]
    document = report.to_json()
    assert document["kernels"][0]["initrd"]["compression"] == "zstd"
    assert document["filesystems"][0]["uuid"] == BOOT_UUID


def test_find_boot_entry_extracts_kernel_and_initrd(ide_install: InstalledImage,
                                                   tmp_path: Path) -> None:
    boot = find_boot_entry(ide_install.path, tmp_path)
    assert boot.kernel.read_bytes() == ide_install.kernel
    assert boot.initrd is not None and boot.initrd.read_bytes() == ide_install.initrd
    assert boot.cmdline == "root=/dev/sda2 ro console=ttyS0,115200"


def test_saved_default_entry(tmp_path: Path) -> None:
    image = installed_image(tmp_path, default="${saved_entry}")
    report = inspect_image(image.path)
    # grubenv's 1>1 is entry 1 of the submenu: the third entry, flattened
    assert report.bootloader is not None and report.bootloader.default == 2
    assert report.default_entry is not None
    assert report.default_entry.title.endswith("(recovery mode)")


def test_ext_reader_offsets_and_symlinks(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t", {
        "usr/lib/modules/6.1/modules.dep": "kernel/a.ko:\n", "lib": "-> usr/lib",
        "boot/vmlinuz-6.1": "kernel", "vmlinuz": "-> boot/vmlinuz-6.1",
        "etc/alternatives/x": "-> /usr/lib/modules/6.1/modules.dep", "etc/loop": "-> loop",
    })
    fs_image = make_ext4(tmp_path / "fs.ext4", tree, 8)
    image = tmp_path / "offset.img"
    image.write_bytes(b"\0" * 3 * MIB + fs_image.read_bytes())
    fs = ExtFilesystem(image, 3 * MIB)
    assert fs.read("/lib/modules/6.1/modules.dep") == b"kernel/a.ko:\n"
    assert fs.read("/vmlinuz") == b"kernel"
    assert fs.read("/etc/alternatives/x") == b"kernel/a.ko:\n"
    assert fs.resolve("/etc/loop") is None  # a loop of links is missing, not a hang
    assert fs.read("/nonexistent") is None
    assert fs.read("/etc") is None
    listing = fs.listdir("/lib/modules")
    assert listing is not None and set(listing) == {"6.1"}
    dest = tmp_path / "out"
    assert fs.dump("/vmlinuz", dest) and dest.read_bytes() == b"kernel"
    with pytest.raises(ImageFormatError):
        ExtFilesystem(image, 1 * MIB).listdir("/")


def test_unreadable_images(tmp_path: Path) -> None:
    with pytest.raises(ImageUnreadableError, match="no such file"):
        inspect_image(tmp_path / "missing.img")
    with pytest.raises(ImageUnreadableError, match="directory"):
        inspect_image(tmp_path)
    qcow = tmp_path / "disk.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 100)
    with pytest.raises(ImageUnreadableError, match="qcow2"):
        inspect_image(qcow)
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * MIB)
    report = inspect_image(blank)
    assert report.root is None and "no Linux root filesystem" in report.notes[0]


def test_full_initramfs_variant(tmp_path: Path) -> None:
    image = installed_image(tmp_path, modules=(*IDE_MODULES, *PV_MODULES), compression="xz")
    kernel = inspect_image(image.path).kernels[0]
    assert kernel.initrd is not None and kernel.initrd.compression == "xz"
    assert kernel.drivers["virtio_blk"].at_boot and kernel.drivers["virtio_pci"].at_boot


def test_fedora_like_guest_bls_dracut_xz_modules(tmp_path: Path) -> None:
    """One root filesystem, grub.cfg with blscfg, BLS entries, a dracut-style initramfs:
    microcode first, then xz, modules as .ko.xz under usr/lib/modules."""
    release = "6.10.3-200.fc39.x86_64"
    early = write_tree(tmp_path / "early", {"kernel/x86/microcode/AuthenticAMD.bin": b"\2" * 64})
    main = write_tree(tmp_path / "main", {
        f"usr/lib/modules/{release}/kernel/drivers/block/virtio_blk.ko.xz": b"x",
        f"usr/lib/modules/{release}/kernel/drivers/virtio/virtio_pci.ko.xz": b"x",
        f"usr/lib/modules/{release}/kernel/drivers/block/xen-blkfront.ko.xz": b"x",
        "init": "-> usr/lib/systemd/systemd",
    })
    initrd = cpio_of(early) + COMPRESSORS["xz"](cpio_of(main))
    tree = write_tree(tmp_path / "root", {
        "etc/os-release": "-> ../usr/lib/os-release",
        "usr/lib/os-release": 'NAME="Fedora Linux"\nVERSION_ID=39\nID=fedora\n'
                              'PRETTY_NAME="Fedora Linux 39 (Server Edition)"\n',
        "etc/fstab": "UUID=2f1f5c6e-0d2a-4c55-9b43-1f3a5c7e9d01 / ext4 defaults 1 1\n",
        "boot/grub2/grub.cfg": "set default=\"${saved_entry}\"\ninsmod blscfg\nblscfg\n",
        "boot/grub2/grubenv": "saved_entry=\nkernelopts=root=UUID=2f1f5c6e-0d2a-4c55-9b43-"
                              "1f3a5c7e9d01 ro console=ttyS0\n",
        f"boot/loader/entries/m-{release}.conf":
            f"title Fedora\nversion {release}\nlinux /vmlinuz-{release}\n"
            f"initrd /initramfs-{release}.img\noptions $kernelopts\n",
        f"boot/vmlinuz-{release}": b"MZ",
        f"boot/initramfs-{release}.img": initrd,
        "lib": "-> usr/lib",
        f"usr/lib/modules/{release}/modules.dep": "kernel/drivers/block/virtio_blk.ko.xz:\n",
    })
    image = make_ext4(tmp_path / "root.ext4", tree, 16, uuid=ROOT_UUID)
    report = inspect_image(image)
    assert report.os_release["ID"] == "fedora"
    assert report.bootloader is not None and report.bootloader.loader == "grub2-bls"
    entry = report.default_entry
    assert entry is not None
    assert entry.kernel == f"/boot/vmlinuz-{release}"
    assert entry.cmdline == f"root=UUID={ROOT_UUID} ro console=ttyS0"
    kernel = report.kernel_for(entry)
    assert kernel is not None and kernel.initrd is not None
    assert kernel.initrd.compression == "xz" and kernel.initrd.microcode
    assert kernel.drivers["virtio_blk"].at_boot and kernel.drivers["xen_blkfront"].at_boot
    assert not kernel.drivers["ata_piix"].at_boot


def test_find_boot_entry_missing_kernel_leaves_nothing(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t", {
        "etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n",
        "boot/grub/grub.cfg": "menuentry 'gone' {\n linux /boot/vmlinuz-9 root=/dev/sda1\n}\n",
    })
    image = make_ext4(tmp_path / "fs.ext4", tree, 8)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageFormatError, match="kernel /boot/vmlinuz-9 is not in the image"):
        find_boot_entry(image, out)
    assert list(out.iterdir()) == []
