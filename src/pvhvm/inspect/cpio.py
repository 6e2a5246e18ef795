"""Read an initramfs: what the kernel unpacks (init/initramfs.c), as Debian, Ubuntu and
Fedora build them.

An initramfs is a sequence of segments: uncompressed "newc"/"crc" cpio archives (magic
``070701``/``070702``, 110-byte ASCII header, name and data padded to 4 bytes, ending with
``TRAILER!!!``; kernel ``Documentation/driver-api/early-userspace/buffer-format.rst``), zero
padding between them, and compressed members whose decompressed bytes are again such a
sequence. Early microcode (``kernel/x86/microcode/*.bin``) is an uncompressed archive first;
the main archive follows compressed (update-initramfs, dracut). Compression is recognised by
magic: gzip ``1f 8b``, xz ``fd 37 7a 58 5a 00``, zstd ``28 b5 2f fd``, lz4 legacy
``02 21 4c 18``, bzip2 ``BZh``, lzma ``5d 00 00``. gzip, xz, lzma and bzip2 are Python's own;
zstd and lz4 run Debian's ``zstd``/``lz4`` tools.
"""

from __future__ import annotations

import bz2
import lzma
import re
import shutil
import stat
import subprocess
import zlib
from dataclasses import dataclass, field
from typing import Any

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError

CPIO_MAGICS = (b"070701", b"070702")
HEADER_SIZE = 110
TRAILER = "TRAILER!!!"
COMPRESSIONS = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x02\x21\x4c\x18": "lz4",
    b"BZh": "bzip2",
    b"\x5d\x00\x00": "lzma",
}
#: a cap on what one initramfs may unpack to: far above any real one (~300 MiB)
MAX_UNPACKED = 2 << 30
_MODULE = re.compile(r"(?:^|/)lib/modules/([^/]+)/.*/([^/]+)\.ko(?:\.(?:xz|zst|gz))?$")


@dataclass(frozen=True)
class Member:
    """One archive member (name without a leading slash)."""

    name: str
    mode: int
    size: int

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


@dataclass(frozen=True)
class Segment:
    """One archive in the image: its compression (``none`` for the plain cpio) and size."""

    compression: str
    offset: int
    members: int
    microcode: bool

    def to_json(self) -> dict[str, Any]:
        return {"compression": self.compression, "offset": self.offset,
                "members": self.members, "microcode": self.microcode}


@dataclass
class Initramfs:
    """What one initramfs carries: its segments, members and the kernel modules in it."""

    segments: list[Segment] = field(default_factory=list)
    members: dict[str, Member] = field(default_factory=dict)
    #: small files kept whole (modules.builtin, conf/ and etc/ files the checks read)
    files: dict[str, bytes] = field(default_factory=dict)

    def modules(self) -> dict[str, set[str]]:
        """Kernel release → module names (``xen-blkfront.ko`` → ``xen_blkfront``)."""
        out: dict[str, set[str]] = {}
        for name in self.members:
            match = _MODULE.search(name)
            if match:
                out.setdefault(match.group(1), set()).add(match.group(2).replace("-", "_"))
        return out

    def builtin(self) -> dict[str, set[str]]:
        """Kernel release → modules built into the kernel (the copied modules.builtin)."""
        out: dict[str, set[str]] = {}
        for name, data in self.files.items():
            match = re.search(r"lib/modules/([^/]+)/modules\.builtin$", name)
            if match:
                out[match.group(1)] = {
                    line.rsplit("/", 1)[-1].removesuffix(".ko").replace("-", "_")
                    for line in data.decode(errors="replace").split()
                }
        return out

    @property
    def compression(self) -> str:
        """The main archive's compression (the last segment's)."""
        return self.segments[-1].compression if self.segments else "none"

    @property
    def microcode(self) -> bool:
        return any(s.microcode for s in self.segments)


def _keep(name: str) -> bool:
    return name.endswith(("/modules.builtin", "/modules.dep")) or name in (
        "conf/modules", "etc/modules", "conf/initramfs.conf",
    )


def read_initramfs(data: bytes) -> Initramfs:
    """Parse every segment of an initramfs image (see the module docstring)."""
    result = Initramfs()
    _read_sequence(data, result, compression="none", depth=0)
    if not result.segments:
        raise ImageFormatError("not an initramfs: no cpio archive found")
    return result


def _read_sequence(data: bytes, result: Initramfs, compression: str, depth: int) -> None:
    pos = 0
    size = len(data)
    while pos < size:
        while pos < size and data[pos] == 0:
            pos += 1
        if pos >= size:
            return
        head = data[pos:pos + 6]
        if head in CPIO_MAGICS:
            start = pos
            pos, count, microcode = _read_archive(data, pos, result)
            result.segments.append(Segment(compression, start, count, microcode))
            continue
        kind = next((k for magic, k in COMPRESSIONS.items() if data.startswith(magic, pos)), None)
        if kind is None or depth > 2:
            if result.segments:
                return  # trailing bytes after the archives (a signature, padding): ignored
            raise ImageFormatError(f"not an initramfs: unknown data at byte {pos}")
        unpacked = _decompress(kind, data[pos:])
        _read_sequence(unpacked, result, compression=kind, depth=depth + 1)
        return  # a compressed member runs to the end of the image


def _read_archive(data: bytes, pos: int, result: Initramfs) -> tuple[int, int, bool]:
    """One cpio archive from ``pos`` to its trailer: (end, members, holds microcode)."""
    count = 0
    microcode = False
    while True:
        if pos + HEADER_SIZE > len(data):
            raise ImageFormatError(f"cpio archive truncated at byte {pos}")
        header = data[pos:pos + HEADER_SIZE]
        if header[:6] not in CPIO_MAGICS:
            raise ImageFormatError(f"bad cpio header magic {header[:6]!r} at byte {pos}")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError as err:
            raise ImageFormatError(f"bad cpio header at byte {pos}") from err
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = pos + HEADER_SIZE
        name = data[name_start:name_start + namesize].rstrip(b"\0").decode(
            errors="surrogateescape")
        data_start = name_start + namesize
        data_start += -data_start % 4
        end = data_start + filesize
        if end > len(data):
            raise ImageFormatError(f"cpio member {name!r} runs past the end of the archive")
        pos = end + (-end % 4)
        if name == TRAILER:
            return pos, count, microcode
        name = name.removeprefix("./").lstrip("/")
        count += 1
        result.members[name] = Member(name, mode, filesize)
        if name.startswith("kernel/x86/microcode/") and filesize:
            microcode = True
        if _keep(name) and filesize < (4 << 20):
            result.files[name] = data[data_start:end]


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return _zlib_members(data)
    if kind in ("xz", "lzma"):
        return _lzma_members(data, lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE)
    if kind == "bzip2":
        decoder = bz2.BZ2Decompressor()
        try:
            out = decoder.decompress(data, MAX_UNPACKED)
        except (OSError, ValueError) as err:
            raise ImageFormatError(f"bad bzip2 data: {err}") from err
        if not decoder.eof:
            raise ImageFormatError("bzip2 data is truncated or unpacks to more than 2 GiB")
        return out
    return _tool(kind, data)


def _zlib_members(data: bytes) -> bytes:
    """gzip members one after another (zero padding after the last one is allowed)."""
    out: list[bytes] = []
    total = 0
    while data and data.strip(b"\0"):
        decoder = zlib.decompressobj(wbits=31)
        try:
            out.append(decoder.decompress(data, MAX_UNPACKED - total))
        except zlib.error as err:
            if out:
                break  # trailing bytes after a member: the kernel stops there too
            raise ImageFormatError(f"bad gzip data: {err}") from err
        total += len(out[-1])
        if decoder.unconsumed_tail:
            raise ImageFormatError("initramfs unpacks to more than 2 GiB")
        if not decoder.eof:
            raise ImageFormatError("gzip data is truncated")
        data = decoder.unused_data
    return b"".join(out)


def _lzma_members(data: bytes, form: int) -> bytes:
    out: list[bytes] = []
    while data and data.strip(b"\0"):
        decoder = lzma.LZMADecompressor(format=form)
        try:
            out.append(decoder.decompress(data, MAX_UNPACKED))
        except lzma.LZMAError as err:
            if out:
                break
            raise ImageFormatError(f"bad xz/lzma data: {err}") from err
        if not decoder.eof:
            if decoder.needs_input:
                raise ImageFormatError("xz/lzma data is truncated")
            raise ImageFormatError("initramfs unpacks to more than 2 GiB")
        data = decoder.unused_data
    return b"".join(out)


def _tool(kind: str, data: bytes) -> bytes:
    """zstd and lz4 through Debian's own tools (``-dc``: to stdout, concatenated frames)."""
    tool = shutil.which(kind)
    if tool is None:
        raise ImageUnreadableError(
            f"the initramfs is {kind}-compressed and the {kind} tool is not installed "
            f"(apt-get install {kind})"
        )
    try:
        done = subprocess.run(
            [tool, "-dc"], input=data, capture_output=True, check=False, timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ImageUnreadableError(f"{kind} -dc failed: {err}") from err
    if done.returncode != 0 and not done.stdout:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise ImageFormatError(f"bad {kind} data: {message[-1] if message else 'no output'}")
    return done.stdout
