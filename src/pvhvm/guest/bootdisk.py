"""A firmware-bootable disk: MBR + FAT boot partition with SYSLINUX + the ext4 root partition.

Layout (512-byte sectors)::

    LBA 0            syslinux mbr.bin (boot code, 440 bytes) + MBR partition table
    LBA 2048         partition 1: FAT16, active, type 0x0e; ldlinux.sys/.c32, syslinux.cfg,
                     vmlinuz, initramfs.cpio.gz
    after it         partition 2: type 0x83, a byte copy of rootfs.ext4 (label pvhvm-root)

The MBR partition table is written here (no fdisk/sfdisk needed). The FAT is made with mtools
(``mformat -i image@@offset``) and SYSLINUX installed with the mtools-based ``syslinux
--install --offset`` from the Debian package; no mount, no loop device. SeaBIOS runs mbr.bin,
which chain-loads the active partition's boot sector, whether the disk is IDE or virtio-blk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import GuestImageError
from pvhvm.guest.debs import run

SECTOR = 512
ALIGN_SECTORS = 2048  # 1 MiB
BOOT_PARTITION_MIB = 32
FAT_LABEL = "PVHVMBOOT"
MBR_SIGNATURE = b"\x55\xaa"
TYPE_FAT16_LBA = 0x0E
TYPE_LINUX = 0x83


@dataclass(frozen=True)
class Partition:
    """One primary MBR partition, in sectors."""

    start: int
    sectors: int
    type_id: int
    active: bool = False

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def end(self) -> int:
        return self.start + self.sectors


def chs(lba: int, heads: int = 255, sectors: int = 63) -> bytes:
    """The 3-byte CHS address of an LBA (1023/254/63 when it does not fit, as fdisk writes)."""
    cylinder, rest = divmod(lba, heads * sectors)
    if cylinder > 1023:
        return bytes((254, 0xFF, 0xFF))
    head, sector = divmod(rest, sectors)
    sector += 1
    return bytes((head, ((cylinder >> 2) & 0xC0) | sector, cylinder & 0xFF))


def mbr(boot_code: bytes, partitions: Sequence[Partition], disk_id: int) -> bytes:
    """Sector 0: boot code (<= 440 bytes), disk signature, four partition entries, 0x55AA."""
    if len(boot_code) > 440:
        raise GuestImageError(f"MBR boot code is {len(boot_code)} bytes, more than 440")
    if len(partitions) > 4:
        raise GuestImageError("an MBR holds at most four primary partitions")
    table = b""
    for part in partitions:
        table += struct.pack(
            "<B3sB3sII", 0x80 if part.active else 0, chs(part.start), part.type_id,
            chs(part.end - 1), part.start, part.sectors,
        )
    table = table.ljust(64, b"\0")
    head = boot_code.ljust(440, b"\0") + struct.pack("<IH", disk_id, 0)
    return head + table + MBR_SIGNATURE


def layout(rootfs_bytes: int, boot_mib: int = BOOT_PARTITION_MIB) -> tuple[Partition, Partition]:
    """The two partitions for a root image of ``rootfs_bytes`` bytes."""
    if rootfs_bytes % SECTOR:
        raise GuestImageError("root image size is not a multiple of 512 bytes")
    boot = Partition(ALIGN_SECTORS, boot_mib * 2048, TYPE_FAT16_LBA, active=True)
    root = Partition(boot.end, rootfs_bytes // SECTOR, TYPE_LINUX)
    return boot, root


def syslinux_cfg(append: str) -> str:
    """``syslinux.cfg``: serial console, no prompt, boot at once.

    Label ``pvhvm`` (the default) keeps running after the report; label ``pvhvm-poweroff``
    adds ``pvhvm.poweroff=1``.
    """
    return (
        "SERIAL 0 115200\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "DEFAULT pvhvm\n"
        "LABEL pvhvm\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initramfs.cpio.gz\n"
        f"  APPEND {append}\n"
        "LABEL pvhvm-poweroff\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initramfs.cpio.gz\n"
        f"  APPEND {append} pvhvm.poweroff=1\n"
    )


def copy_sparse(source: Path, target: Path, offset: int) -> None:
    """Copy ``source`` into ``target`` at ``offset``, leaving all-zero MiB blocks as holes."""
    block = 1 << 20
    zero = bytes(block)
    with open(source, "rb") as src, open(target, "r+b") as dst:
        position = offset
        while chunk := src.read(block):
            if chunk != zero[:len(chunk)]:
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


def build_bootdisk(
    output: Path, *, vmlinuz: Path, initramfs: Path, rootfs: Path, mbr_bin: Path,
    syslinux: Path, mtools_bin: Path, append: str, disk_id: int = 0x50564856,
) -> None:
    """Assemble the bootable disk at ``output`` (see the module docstring for the layout)."""
    boot, root = layout(rootfs.stat().st_size)
    for needed in (vmlinuz, initramfs):
        if needed.stat().st_size > (boot.sectors - 512) * SECTOR:
            raise GuestImageError(f"{needed.name} does not fit the {BOOT_PARTITION_MIB} MiB "
                                  "boot partition")
    env = dict(os.environ)
    env["PATH"] = f"{mtools_bin}{os.pathsep}{env.get('PATH', '')}"
    env["MTOOLS_SKIP_CHECK"] = "1"
    env["MTOOLSRC"] = os.devnull
    if output.exists():
        output.unlink()
    with open(output, "wb") as disk:
        disk.truncate(root.end * SECTOR)
    fat = f"{output}@@{boot.offset}"
    run([
        str(mtools_bin / "mformat"), "-i", fat, "-T", str(boot.sectors), "-h", "64", "-s", "32",
        "-H", str(boot.start), "-v", FAT_LABEL, "-N", f"{disk_id:08x}", "::",
    ], env=env)
    config = output.with_name(output.name + ".syslinux.cfg")
    config.write_text(syslinux_cfg(append))
    try:
        run([
            str(mtools_bin / "mcopy"), "-i", fat, str(vmlinuz), "::vmlinuz",
        ], env=env)
        run([str(mtools_bin / "mcopy"), "-i", fat, str(initramfs), "::initramfs.cpio.gz"],
            env=env)
        run([str(mtools_bin / "mcopy"), "-i", fat, str(config), "::syslinux.cfg"], env=env)
    finally:
        config.unlink()
    run([str(syslinux), "--install", "--offset", str(boot.offset), str(output)], env=env)
    copy_sparse(rootfs, output, root.offset)
    with open(output, "r+b") as disk:
        disk.write(mbr(mbr_bin.read_bytes(), [boot, root], disk_id))
