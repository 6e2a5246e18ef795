"""The installed Debian guest: GRUB's boot sector and core placement, the built disks, and
``guest prepare`` on a real copy of the ide disk (no boot: tests/e2e boots it)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvhvm.guest import bootdisk
from pvhvm.guest.appliance import ApplianceError
from pvhvm.guest.installed import (
    IDE_INITRAMFS_MODULES,
    InstalledGuest,
    build_installed,
    copy_disk,
    grub_cfg,
    patch_boot,
    patch_core,
)
from pvhvm.guest.prepare import (
    BACKUP_SUFFIX,
    ImageInUseError,
    PrepareError,
    prepare_image,
    workdir_prefix,
)
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.extfs import ExtFilesystem
from pvhvm.runtime.state import StateStore

pytestmark = pytest.mark.xdist_group("installed-guest")


def test_boot_sector_points_at_core_and_skips_the_floppy_check() -> None:
    boot_img = bytes(range(256)) * 2
    code = patch_boot(boot_img, core_sector=1)
    assert len(code) == 440  # the disk signature and partition table stay the disk's
    assert struct.unpack_from("<Q", code, 0x5C)[0] == 1
    assert code[0x66:0x68] == b"\x90\x90"
    assert code[:0x5C] == boot_img[:0x5C]
    with pytest.raises(Exception, match="not 512"):
        patch_boot(b"\0" * 100)


def test_core_blocklist_names_the_sectors_after_the_first() -> None:
    core = b"\xaa" * (512 * 60 + 100)
    patched = patch_core(core, first_sector=1)
    assert len(patched) == 512 * 61
    start, length, segment = struct.unpack_from("<QHH", patched, 500)
    assert (start, length, segment) == (2, 60, 0x820)
    assert patched[512:] == core[512:].ljust(512 * 60, b"\0")


def test_grub_cfg_boots_the_kernel_on_the_serial_console() -> None:
    text = grub_cfg("6.1.0-9-amd64", "/dev/sda1", "console=ttyS0,115200")
    assert "serial --unit=0 --speed=115200" in text
    assert "linux\t/boot/vmlinuz-6.1.0-9-amd64 root=/dev/sda1 ro console=ttyS0,115200" in text
    assert "initrd\t/boot/initrd.img-6.1.0-9-amd64" in text


def _built(variant: str) -> InstalledGuest:
    if os.geteuid() != 0:
        pytest.skip("building the installed guest needs root (debootstrap, chroot)")
    return build_installed(variant=variant)


@pytest.fixture(scope="module")
def ide() -> InstalledGuest:
    return _built("ide")


@pytest.fixture(scope="module")
def full() -> InstalledGuest:
    return _built("full")


def _root_fs(disk: Path) -> ExtFilesystem:
    return ExtFilesystem(disk, bootdisk.ALIGN_SECTORS * bootdisk.SECTOR)


def _initramfs_modules(fs: ExtFilesystem, release: str) -> set[str]:
    data = fs.read(f"/boot/initrd.img-{release}")
    assert data is not None
    return read_initramfs(data).modules()[release]


def test_ide_disk_is_an_mbr_install_on_sda1_without_virtio(ide: InstalledGuest) -> None:
    manifest = ide.manifest()
    with open(ide.disk, "rb") as disk:
        mbr = disk.read(512)
    assert mbr[510:] == b"\x55\xaa"
    status, ptype, start, sectors = (mbr[446], mbr[450],
                                     *struct.unpack_from("<II", mbr, 454))
    assert (status, ptype, start) == (0x80, 0x83, 2048)
    assert (start + sectors) * 512 == ide.disk.stat().st_size
    fs = _root_fs(ide.disk)
    fstab = fs.read_text("/etc/fstab") or ""
    assert "/dev/sda1\t/\text4" in fstab
    assert "root=/dev/sda1 ro" in (fs.read_text("/boot/grub/grub.cfg") or "")
    assert fs.exists("/boot/grub/i386-pc/normal.mod")
    assert fs.exists("/etc/systemd/system/multi-user.target.wants/pvhvm-report.service")
    release = manifest["kernel_release"]
    modules = _initramfs_modules(fs, release)
    assert {"ata_piix", "ext4", "sd_mod"} <= modules
    assert not {"virtio_blk", "virtio_pci", "virtio_net"} & modules
    assert manifest["initramfs_modules"] == sorted(modules)
    conf = fs.read_text("/etc/initramfs-tools/initramfs.conf") or ""
    assert "MODULES=list" in conf
    listed = fs.read_text("/etc/initramfs-tools/modules") or ""
    assert all(name in listed.split() for name in IDE_INITRAMFS_MODULES)


def test_full_disk_carries_virtio_and_names_its_root_by_uuid(full: InstalledGuest) -> None:
    manifest = full.manifest()
    fs = _root_fs(full.disk)
    assert f"UUID={manifest['root_uuid']}\t/\text4" in (fs.read_text("/etc/fstab") or "")
    modules = _initramfs_modules(fs, manifest["kernel_release"])
    assert {"virtio_blk", "virtio_pci", "ata_piix"} <= modules


def test_a_second_build_is_a_no_op(ide: InstalledGuest) -> None:
    before = ide.disk.stat().st_mtime_ns
    again = build_installed(variant="ide")
    assert again.disk.stat().st_mtime_ns == before


def test_prepare_rebuilds_the_initramfs_and_renames_devices(
    ide: InstalledGuest, tmp_path: Path,
) -> None:
    disk = copy_disk(ide, tmp_path / "disk.img")
    store = StateStore(tmp_path / "state")
    manifest = ide.manifest()
    release, uuid = manifest["kernel_release"], manifest["root_uuid"]

    before = disk.stat().st_mtime_ns
    dry = prepare_image(disk, dry_run=True, store=store)
    assert disk.stat().st_mtime_ns == before
    assert {c.path for c in dry.changes} == {
        "/etc/initramfs-tools/modules", f"/boot/initrd.img-{release}", "/etc/fstab",
        "/boot/grub/grub.cfg", "/etc/default/grub",
    }
    assert dry.written == []
    assert "/dev/sda1" in (_root_fs(disk).read_text("/etc/fstab") or "")

    result = prepare_image(disk, store=store)
    fs = _root_fs(disk)
    assert f"UUID={uuid}\t/\text4" in (fs.read_text("/etc/fstab") or "")
    assert "/dev/sda1\t/" in (fs.read_text("/etc/fstab" + BACKUP_SUFFIX) or "")
    assert f"root=UUID={uuid} ro" in (fs.read_text("/boot/grub/grub.cfg") or "")
    assert "#GRUB_DISABLE_LINUX_UUID=true" in (fs.read_text("/etc/default/grub") or "")
    modules = _initramfs_modules(fs, release)
    # the default prepare appends what root on virtio needs (virtio_net is not), and the
    # generator's config names every virtio driver for the guest's own next rebuild
    assert result.initramfs == "append"
    assert {"virtio_blk", "virtio_pci", "ata_piix"} <= modules
    assert "virtio_net" in (fs.read_text("/etc/initramfs-tools/modules") or "")
    old = fs.read(f"/boot/initrd.img-{release}{BACKUP_SUFFIX}")
    assert old is not None and "virtio_blk" not in read_initramfs(old).modules()[release]
    assert set(result.seconds) >= {"copy", "launch", "initramfs", "commit"}
    stat = subprocess.run(["debugfs", "-R", "stat /etc/fstab",
                           f"{disk}?offset={bootdisk.ALIGN_SECTORS * bootdisk.SECTOR}"],
                          capture_output=True, text=True, check=True).stdout
    assert "Mode:  0644" in stat and "User:     0   Group:     0" in stat
    fsck = subprocess.run(["e2fsck", "-fn", f"{disk}?offset={1 << 20}"], capture_output=True,
                          text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not list(tmp_path.glob(f"{workdir_prefix(disk)}*"))  # the killed run's too

    # A second prepare adds nothing twice and keeps the first backups.
    second = prepare_image(disk, store=store)
    assert [c.path for c in second.changes] == [f"/boot/initrd.img-{release}"]
    assert "/dev/sda1\t/" in (_root_fs(disk).read_text("/etc/fstab" + BACKUP_SUFFIX) or "")


def test_prepare_refuses_an_image_a_domain_uses(ide: InstalledGuest, tmp_path: Path) -> None:
    disk = copy_disk(ide, tmp_path / "disk.img")
    store = StateStore(tmp_path / "state")
    record = tmp_path / "state" / "domains" / "busy" / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({
        "name": "busy", "domid": 1, "uuid": "u", "platform": "qemu", "memory_mib": 512,
        "vcpus": 1, "argv": [], "on_poweroff": "destroy", "on_reboot": "restart",
        "on_crash": "destroy", "plan": {"disks": [{"target": str(disk)}]},
    }))
    with pytest.raises(ImageInUseError, match="in use by running domain busy"):
        prepare_image(disk, store=store)


def test_prepare_refuses_what_is_not_a_linux_root(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as image:
        image.truncate(8 << 20)
    with pytest.raises(ApplianceError, match="no Linux root filesystem found"):
        prepare_image(blank, dry_run=True, store=StateStore(tmp_path / "state"))
    with pytest.raises(PrepareError, match="not an image file"):
        prepare_image(tmp_path / "missing.img", store=StateStore(tmp_path / "state"))


def _prepare_cli(config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pvhvm", "guest", "prepare", str(config), *args],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PVHVM_STATE_DIR": str(tmp_path / "state")},
    )


@pytest.mark.parametrize(("disk", "expected"), [
    ("file:{d}/blank.img,hda,w", "no Linux root filesystem found"),
    ("tap:qcow2:{d}/blank.img,hda,w", "hda is qcow2; prepare works on raw images"),
    ("file:{d}/missing.img,hda,w", "g.cfg:3:10: disk 'hda': image"),
])
def test_prepare_cli_bad_input_is_one_line(tmp_path: Path, disk: str, expected: str) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as image:
        image.truncate(8 << 20)
    config = tmp_path / "g.cfg"
    config.write_text(f'name = "g"\nbuilder = "hvm"\ndisk = [ "{disk.format(d=tmp_path)}" ]\n')
    done = _prepare_cli(config, tmp_path, "--dry-run")
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvhvm: error:"), done.stderr
    assert expected in lines[0]


def test_an_interrupted_prepare_leaves_the_image_as_it_was(
    ide: InstalledGuest, tmp_path: Path,
) -> None:
    """SIGKILL in the middle (the work copy exists): the image is untouched; the next prepare
    clears the stale copy and completes."""
    disk = copy_disk(ide, tmp_path / "disk.img")
    config = tmp_path / "g.cfg"
    config.write_text(f'name = "g"\nbuilder = "hvm"\ndisk = [ "file:{disk},hda,w" ]\n')
    before = (disk.stat().st_mtime_ns, disk.stat().st_ino)
    process = subprocess.Popen(
        [sys.executable, "-m", "pvhvm", "guest", "prepare", str(config), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PVHVM_STATE_DIR": str(tmp_path / "state")},
    )
    deadline = time.monotonic() + 120
    while (not list(tmp_path.glob(f"{workdir_prefix(disk)}*/disk.img"))
           and process.poll() is None and time.monotonic() < deadline):
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "prepare finished before it was killed"
    assert (disk.stat().st_mtime_ns, disk.stat().st_ino) == before
    assert "/dev/sda1\t/" in (_root_fs(disk).read_text("/etc/fstab") or "")
    assert not _root_fs(disk).exists("/etc/fstab" + BACKUP_SUFFIX)
    prepare_image(disk, store=StateStore(tmp_path / "state"))
    assert "UUID=" in (_root_fs(disk).read_text("/etc/fstab") or "")
    assert not list(tmp_path.glob(f"{workdir_prefix(disk)}*"))  # the killed run's too
