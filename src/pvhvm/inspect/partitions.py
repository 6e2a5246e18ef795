"""Partition tables and filesystem signatures, parsed from the image's bytes.

MBR: the classic table at byte 446 of sector 0 (four 16-byte entries, signature 0x55AA at
510, disk signature at 440); extended partitions (types 0x05, 0x0f, 0x85) are chains of EBRs
whose logical partitions are numbered from 5. PARTUUID of an MBR partition is the disk
signature and the number, ``"%08x-%02x"`` (util-linux blkid).
GPT: UEFI 2.x chapter 5: header "EFI PART" at LBA 1, entry array at the header's LBA, GUIDs
in mixed-endian order (``uuid.UUID(bytes_le=...)``). Sectors are 512 bytes. The image is
untrusted: every size a table gives is checked against the spec and the image before it is
used, so a table cannot make the reader allocate more than :data:`GPT_MAX_ARRAY` bytes.

Filesystem signatures (the superblock fields blkid reads): ext2/3/4 magic 0xEF53 at 1024+56,
swap ``SWAPSPACE2``, FAT's boot sector, XFS ``XFSB``, btrfs ``_BHRfS_M``, LUKS, LVM2.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from pvhvm.inspect.errors import ImageFormatError

SECTOR = 512
EXTENDED_TYPES = (0x05, 0x0F, 0x85)
GPT_PROTECTIVE = 0xEE
#: bounds on a GPT entry array (UEFI asks for at least 16 KiB; 128 entries of 128 bytes is
#: what every tool writes): an entry of at most one 4 KiB sector, an array of at most 1 MiB
GPT_MAX_ENTRY_SIZE = 4096
GPT_MAX_ARRAY = 1 << 20
#: a few GPT partition type GUIDs worth a name
GPT_TYPES = {
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "linux",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "linux-swap",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "efi",
    "21686148-6449-6e6f-744e-656564454649": "bios-boot",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "linux-lvm",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "linux-root-x86-64",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "linux-extended-boot",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "linux-luks",
}
MBR_TYPES = {
    0x83: "linux", 0x82: "linux-swap", 0x8E: "linux-lvm", 0x0C: "fat32-lba", 0x0B: "fat32",
    0x06: "fat16", 0x0E: "fat16-lba", 0xEF: "efi", 0x07: "ntfs/exfat", 0xFD: "linux-raid",
}


@dataclass(frozen=True)
class Partition:
    """One partition: its number as Linux numbers it (sda1, sda5...), where it is, its type."""

    number: int
    start: int
    size: int
    type: str
    partuuid: str
    bootable: bool = False
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number, "start": self.start, "size": self.size, "type": self.type,
            "partuuid": self.partuuid, "bootable": self.bootable, "name": self.name,
        }


@dataclass(frozen=True)
class PartitionTable:
    """The image's table: ``scheme`` is ``mbr``, ``gpt`` or ``none`` (a bare filesystem)."""

    scheme: str
    disk_id: str
    partitions: tuple[Partition, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme, "disk_id": self.disk_id,
            "partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(frozen=True)
class Signature:
    """A filesystem (or container) found at an offset: type, UUID and label as blkid says."""

    type: str
    uuid: str = ""
    label: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "uuid": self.uuid, "label": self.label}


def _read(stream: BinaryIO, offset: int, length: int) -> bytes:
    stream.seek(offset)
    return stream.read(length)


def read_table(stream: BinaryIO, image_size: int) -> PartitionTable:
    """The partition table of an image, or scheme ``none`` when sector 0 holds no MBR."""
    sector0 = _read(stream, 0, SECTOR)
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        return PartitionTable("none", "", ())
    entries = [_mbr_entry(sector0, i) for i in range(4)]
    # a FAT or NTFS boot sector also ends in 55AA: a table needs sane entries
    if any(e[1] == GPT_PROTECTIVE for e in entries if e[3]):
        gpt = _read_gpt(stream, image_size)
        if gpt is not None:
            return gpt
    if not _plausible_mbr(entries, image_size):
        return PartitionTable("none", "", ())
    signature = struct.unpack_from("<I", sector0, 440)[0]
    disk_id = f"{signature:08x}"
    partitions: list[Partition] = []
    for index, (status, ptype, start, count) in enumerate(entries):
        if count == 0 or ptype == 0:
            continue
        if ptype in EXTENDED_TYPES:
            partitions += _logical(stream, start, image_size, disk_id)
            continue
        partitions.append(Partition(
            number=index + 1, start=start * SECTOR, size=count * SECTOR,
            type=MBR_TYPES.get(ptype, f"0x{ptype:02x}"),
            partuuid=f"{disk_id}-{index + 1:02x}", bootable=status == 0x80,
        ))
    return PartitionTable("mbr", disk_id, tuple(sorted(partitions, key=lambda p: p.number)))


def _mbr_entry(sector: bytes, index: int) -> tuple[int, int, int, int]:
    base = 446 + 16 * index
    status, ptype = sector[base], sector[base + 4]
    start, count = struct.unpack_from("<II", sector, base + 8)
    return status, ptype, start, count


def _plausible_mbr(entries: list[tuple[int, int, int, int]], image_size: int) -> bool:
    used = [e for e in entries if e[1] != 0 and e[3] != 0]
    if not used:
        return False
    for status, _ptype, start, count in used:
        if status not in (0, 0x80) or start == 0:
            return False
        if (start + count) * SECTOR > image_size + SECTOR * 2048:
            return False  # far beyond the image: not a table (a slightly short image is ok)
    return True


def _logical(stream: BinaryIO, ext_start: int, image_size: int, disk_id: str) -> list[Partition]:
    """Logical partitions: a chain of EBRs, each naming one partition and the next EBR."""
    out: list[Partition] = []
    ebr = ext_start
    seen: set[int] = set()
    number = 5
    while ebr and ebr not in seen and ebr * SECTOR < image_size and len(out) < 128:
        seen.add(ebr)
        sector = _read(stream, ebr * SECTOR, SECTOR)
        if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
            raise ImageFormatError(f"extended partition: no EBR signature at sector {ebr}")
        _s, ptype, start, count = _mbr_entry(sector, 0)
        if ptype and count:
            if (ebr + start) * SECTOR >= image_size:
                raise ImageFormatError(f"logical partition {number}: starts at sector "
                                       f"{ebr + start}, past the end of the image")
            out.append(Partition(
                number=number, start=(ebr + start) * SECTOR, size=count * SECTOR,
                type=MBR_TYPES.get(ptype, f"0x{ptype:02x}"), partuuid=f"{disk_id}-{number:02x}",
            ))
            number += 1
        _s, next_type, next_start, _c = _mbr_entry(sector, 1)
        ebr = ext_start + next_start if next_type in EXTENDED_TYPES and next_start else 0
    return out


def _read_gpt(stream: BinaryIO, image_size: int) -> PartitionTable | None:
    """The GPT at LBA 1, its sizes checked against UEFI 2.x 5.3 and the image before anything
    is read: header size 92..512, entries a multiple of 128 bytes (at most
    :data:`GPT_MAX_ENTRY_SIZE`), the array at most :data:`GPT_MAX_ARRAY` bytes and inside the
    image, each partition's first..last LBA inside the image."""
    header = _read(stream, SECTOR, SECTOR)
    if header[:8] != b"EFI PART" or len(header) < 92:
        return None
    header_size = struct.unpack_from("<I", header, 12)[0]
    disk_guid = str(uuidlib.UUID(bytes_le=header[56:72]))
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    layout = (f"GPT header: entry array at LBA {entries_lba}, {count} entries of {entry_size} "
              "bytes")
    if not 92 <= header_size <= SECTOR:
        raise ImageFormatError(f"GPT header: header size {header_size} (92 to {SECTOR} allowed)")
    if entry_size < 128 or entry_size % 128 or entry_size > GPT_MAX_ENTRY_SIZE:
        raise ImageFormatError(f"{layout}: an entry size must be a multiple of 128 up to "
                               f"{GPT_MAX_ENTRY_SIZE}")
    array_size = count * entry_size
    if array_size > GPT_MAX_ARRAY:
        raise ImageFormatError(f"{layout}: the array would be {array_size} bytes, over "
                               f"{GPT_MAX_ARRAY}")
    if entries_lba < 2 or (entries_lba * SECTOR + array_size) > image_size:
        raise ImageFormatError(f"{layout} does not lie inside the {image_size}-byte image")
    array = _read(stream, entries_lba * SECTOR, array_size)
    partitions: list[Partition] = []
    sectors = image_size // SECTOR
    for index in range(count):
        raw = array[index * entry_size:(index + 1) * entry_size]
        if len(raw) < 128 or raw[:16] == b"\0" * 16:
            continue
        type_guid = str(uuidlib.UUID(bytes_le=raw[:16]))
        part_guid = str(uuidlib.UUID(bytes_le=raw[16:32]))
        first, last = struct.unpack_from("<QQ", raw, 32)
        if not 0 < first <= last < sectors:
            raise ImageFormatError(
                f"GPT entry {index + 1}: LBA {first}..{last} is not inside the image "
                f"({sectors} sectors)")
        name = raw[56:128].decode("utf-16-le", errors="replace").split("\0")[0]
        partitions.append(Partition(
            number=index + 1, start=first * SECTOR, size=(last - first + 1) * SECTOR,
            type=GPT_TYPES.get(type_guid, type_guid), partuuid=part_guid, name=name,
        ))
    return PartitionTable("gpt", disk_guid, tuple(partitions))


def _text(raw: bytes) -> str:
    return raw.split(b"\0")[0].decode("utf-8", errors="replace").strip()


def probe_signature(stream: BinaryIO, offset: int) -> Signature | None:
    """What filesystem (or container) starts at ``offset``; None when nothing is recognised."""
    head = _read(stream, offset, 8192)
    if len(head) < 2048:
        return None
    if head[1024 + 56:1024 + 58] == b"\x53\xef":
        sb = head[1024:2048]
        compat, incompat = struct.unpack_from("<II", sb, 92)
        kind = "ext2"
        if compat & 0x4:
            kind = "ext3"
        if incompat & (0x40 | 0x80 | 0x200):  # extents, 64bit, flex_bg
            kind = "ext4"
        return Signature(kind, str(uuidlib.UUID(bytes=sb[104:120])), _text(sb[120:136]))
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return Signature("swap", str(uuidlib.UUID(bytes=head[1024 + 12:1024 + 28])),
                         _text(head[1024 + 28:1024 + 44]))
    if head[:6] == b"LUKS\xba\xbe":
        return Signature("crypto_LUKS", _text(head[168:208]))
    if head[:4] == b"XFSB":
        return Signature("xfs", str(uuidlib.UUID(bytes=head[32:48])), _text(head[108:120]))
    if head[512 + 24:512 + 32] == b"LVM2 001" and head[512:520] == b"LABELONE":
        return Signature("LVM2_member")
    if head[510:512] == b"\x55\xaa" and head[82:87] == b"FAT32":
        serial = struct.unpack_from("<I", head, 67)[0]
        return Signature("vfat", f"{serial >> 16:04X}-{serial & 0xFFFF:04X}", _text(head[71:82]))
    if head[510:512] == b"\x55\xaa" and head[54:59] in (b"FAT12", b"FAT16"):
        serial = struct.unpack_from("<I", head, 39)[0]
        return Signature("vfat", f"{serial >> 16:04X}-{serial & 0xFFFF:04X}", _text(head[43:54]))
    btrfs = _read(stream, offset + 0x10000, 0x200)
    if btrfs[0x40:0x48] == b"_BHRfS_M":
        return Signature("btrfs", str(uuidlib.UUID(bytes=btrfs[0x20:0x30])),
                         _text(btrfs[0x12B:0x12B + 256]))
    return None
