"""Read an initramfs: what the kernel unpacks (init/initramfs.c), as Debian, Ubuntu and
Fedora build them.

An initramfs is a sequence of segments: uncompressed "newc"/"crc" cpio archives (magic
``070701``/``070702``, 110-byte ASCII header, name and data padded to 4 bytes, ending with
``TRAILER!!!``; kernel ``Documentation/driver-api/early-userspace/buffer-format.rst``), zero
padding between them, and compressed members whose decompressed bytes are again cpio archives
and padding (the kernel does not unpack a compressed member inside another one). Early
microcode (``kernel/x86/microcode/*.bin``) is an uncompressed archive first; the main archive
follows compressed (update-initramfs, dracut). Compression is recognised by magic: gzip
``1f 8b``, xz ``fd 37 7a 58 5a 00``, zstd ``28 b5 2f fd``, lz4 legacy ``02 21 4c 18``, bzip2
``BZh``, lzma ``5d 00 00``. gzip, xz, lzma and bzip2 are Python's own; zstd and lz4 run
Debian's ``zstd``/``lz4`` tools through a pipe (:mod:`.sandbox`).

The image is untrusted, so reading it is bounded: every decompressor is read incrementally,
one chunk at a time, and one budget counts the output of all of them together
(:data:`MAX_UNPACKED`, over the whole image, not per member); file data is skipped as it
streams past, so memory stays at a few chunks whatever the image claims. Member count, name
length and the small files kept are capped too.
"""

from __future__ import annotations

import bz2
import lzma
import re
import shutil
import stat
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError
from pvhvm.inspect.sandbox import stream_tool

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
#: what all the compressed members of one initramfs may unpack to, together: far above any
#: real one (Debian's MODULES=most with firmware, ~300 MiB)
MAX_UNPACKED = 1 << 30
#: members of one initramfs (Ubuntu's biggest: ~10,000)
MAX_MEMBERS = 200_000
#: a member name (PATH_MAX, as the kernel's own reader)
MAX_NAME = 4096
#: one small file kept whole, and all of them together
MAX_KEPT_FILE = 4 << 20
MAX_KEPT = 16 << 20
#: bytes handed on at a time by a decompressor
CHUNK = 1 << 20
#: what an xz/lzma decoder may allocate for its dictionary (the header says how much it
#: wants, up to 4 GiB): xz -9 needs 65 MiB, mkinitramfs' and dracut's settings 9 MiB or less
MAX_DECODER_MEMORY = 80 << 20
#: the generators that recognisably built an initramfs, by a file only they put there
GENERATORS = (
    ("initramfs-tools", ("conf/initramfs.conf", "scripts/functions")),
    ("dracut", ("usr/lib/dracut/build-parameter.txt",)),
    ("dracut", ("usr/lib/dracut/modules.txt",)),
    ("dracut", ("dracut-state.sh",)),
)
_MODULE = re.compile(r"(?:^|/)lib/modules/([^/]+)/.*/([^/]+)\.ko(?:\.(?:xz|zst|gz))?$")
_ANY_MODULE = re.compile(r"(?:^|/)([^/]+)\.ko(?:\.(?:xz|zst|gz))?$")
_HEX = re.compile(rb"[0-9A-Fa-f]{104}")
_NONZERO = re.compile(rb"[^\0]")


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
        """Kernel release → module names under lib/modules (``xen-blkfront.ko`` →
        ``xen_blkfront``)."""
        out: dict[str, set[str]] = {}
        for name in self.members:
            match = _MODULE.search(name)
            if match:
                out.setdefault(match.group(1), set()).add(match.group(2).replace("-", "_"))
        return out

    def module_files(self) -> set[str]:
        """Every kernel module the image carries, wherever it is (``.ko``, ``.ko.xz``,
        ``.ko.zst``, ``.ko.gz``): an init of its own may insmod them from any path."""
        return {
            match.group(1).replace("-", "_")
            for name, member in self.members.items()
            if member.is_file and (match := _ANY_MODULE.search(name))
        }

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
    def generator(self) -> str | None:
        """``initramfs-tools`` or ``dracut`` when one of them built it (known by its own
        files), else None: an init of unknown ways."""
        for name, marks in GENERATORS:
            if all(mark in self.members for mark in marks):
                return name
        return None

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


class _Budget:
    """The one output allowance of every decompressor of an image."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise ImageFormatError(
                f"the initramfs unpacks to more than {self.limit >> 20} MiB; not read further "
                "(a real one is far smaller)"
            )


class _Reader:
    """Bytes pulled from a chunk iterator as they are needed; skipped bytes are dropped as
    they pass, so memory stays at about one chunk."""

    def __init__(self, chunks: Iterator[bytes], budget: _Budget | None) -> None:
        self._chunks = chunks
        self._budget = budget
        self._buffer = b""
        self._at = 0
        #: bytes consumed so far
        self.offset = 0

    def _pull(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        if self._budget is not None:
            self._budget.charge(len(chunk))
        self._buffer = self._buffer[self._at:] + bytes(chunk)
        self._at = 0
        return True

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end)."""
        while len(self._buffer) - self._at < size and self._pull():
            pass
        out = self._buffer[self._at:self._at + size]
        self._at += len(out)
        self.offset += len(out)
        return out

    def skip(self, size: int) -> int:
        """Drop ``size`` bytes; how many there were."""
        left = size
        while left:
            if self._at == len(self._buffer) and not self._pull():
                break
            step = min(left, len(self._buffer) - self._at)
            self._at += step
            left -= step
        self.offset += size - left
        return size - left

    def skip_zeros(self) -> bool:
        """Drop zero padding; False at the end of the data."""
        while True:
            match = _NONZERO.search(self._buffer, self._at)
            if match is not None:
                self.offset += match.start() - self._at
                self._at = match.start()
                return True
            self.offset += len(self._buffer) - self._at
            self._at = len(self._buffer)
            if not self._pull():
                return False

    def peek(self, size: int) -> bytes:
        while len(self._buffer) - self._at < size and self._pull():
            pass
        return self._buffer[self._at:self._at + size]


def read_initramfs(data: bytes, limit: int = MAX_UNPACKED) -> Initramfs:
    """Parse every segment of an initramfs image (see the module docstring); ``limit`` is
    what all its compressed members together may unpack to."""
    result = Initramfs()
    budget = _Budget(limit)
    view = memoryview(data)
    pos = 0
    while True:
        found = _NONZERO.search(data, pos)
        if found is None:
            break
        pos = found.start()
        if bytes(view[pos:pos + 6]) in CPIO_MAGICS:
            reader = _Reader(_slices(view, pos), None)
            count, microcode = _read_archive(reader, result, pos)
            result.segments.append(Segment("none", pos, count, microcode))
            pos += reader.offset
            continue
        kind = next((k for magic, k in COMPRESSIONS.items() if data.startswith(magic, pos)), None)
        if kind is None:
            if result.segments:
                break  # trailing bytes after the archives (a signature, padding): ignored
            raise ImageFormatError(f"not an initramfs: unknown data at byte {pos}")
        decoder = _Decoder(kind, view[pos:])
        chunks = decoder.chunks()
        try:
            _read_stream(_Reader(chunks, budget), result, kind)
        finally:
            chunks.close()
        if decoder.consumed is None:
            break  # a tool's member runs to the end of the image
        pos += decoder.consumed
    if not result.segments:
        raise ImageFormatError("not an initramfs: no cpio archive found")
    return result


def _slices(view: memoryview, start: int) -> Iterator[bytes]:
    for at in range(start, len(view), CHUNK):
        yield bytes(view[at:at + CHUNK])


def _read_stream(reader: _Reader, result: Initramfs, compression: str) -> None:
    """The decompressed bytes of one member: cpio archives and zero padding (the kernel
    calls anything else junk; after an archive it is ignored here, as trailing data)."""
    archives = 0
    while reader.skip_zeros():
        start = reader.offset
        if reader.peek(6) not in CPIO_MAGICS:
            if archives:
                return  # left unread: the image is not read past this member either
            raise ImageFormatError(
                f"not an initramfs: {compression} data holds no cpio archive "
                f"(unknown data at byte {start} of it)")
        count, microcode = _read_archive(reader, result, 0)
        result.segments.append(Segment(compression, start, count, microcode))
        archives += 1


def _read_archive(reader: _Reader, result: Initramfs, base: int) -> tuple[int, bool]:
    """One cpio archive up to its trailer: (members, holds microcode). Offsets in messages
    and the 4-byte alignment count from ``base`` + the reader's offset."""
    count = 0
    microcode = False
    kept = sum(len(v) for v in result.files.values())
    while True:
        where = base + reader.offset
        header = reader.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise ImageFormatError(f"cpio archive truncated at byte {where}")
        if header[:6] not in CPIO_MAGICS:
            raise ImageFormatError(f"bad cpio header magic {header[:6]!r} at byte {where}")
        if not _HEX.fullmatch(header, 6):
            raise ImageFormatError(f"bad cpio header at byte {where}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        if not 0 < namesize <= MAX_NAME:
            raise ImageFormatError(f"cpio header at byte {where}: name of {namesize} bytes")
        raw = reader.read(namesize)
        if len(raw) < namesize:
            raise ImageFormatError(f"cpio archive truncated at byte {where}")
        name = raw.rstrip(b"\0").decode(errors="surrogateescape")
        reader.skip(-(base + reader.offset) % 4)
        if name == TRAILER:
            return count, microcode
        name = name.removeprefix("./").lstrip("/")
        keep = _keep(name) and filesize <= MAX_KEPT_FILE and kept + filesize <= MAX_KEPT
        if keep:
            content = reader.read(filesize)
            got = len(content)
        else:
            got = reader.skip(filesize)
        if got < filesize:
            raise ImageFormatError(f"cpio member {name!r} runs past the end of the archive")
        reader.skip(-(base + reader.offset) % 4)
        count += 1
        if name not in result.members and len(result.members) >= MAX_MEMBERS:
            raise ImageFormatError(f"the initramfs has more than {MAX_MEMBERS} members")
        result.members[name] = Member(name, mode, filesize)
        if name.startswith("kernel/x86/microcode/") and filesize:
            microcode = True
        if keep:
            kept += filesize - len(result.files.get(name, b""))
            result.files[name] = content


class _Decoder:
    """One compressed member, decompressed a chunk at a time; ``consumed`` is how much of the
    input it took once done (None when a tool read to the end of the image)."""

    def __init__(self, kind: str, data: memoryview) -> None:
        self.kind = kind
        self.data = data
        self.consumed: int | None = None

    def chunks(self) -> Generator[bytes, None, None]:
        if self.kind == "gzip":
            return self._zlib()
        if self.kind in ("xz", "lzma", "bzip2"):
            return self._lzma_like()
        return self._tool()

    def _zlib(self) -> Generator[bytes, None, None]:
        decoder = zlib.decompressobj(wbits=31)
        pos = 0
        try:
            while not decoder.eof:
                if decoder.unconsumed_tail:
                    given = decoder.unconsumed_tail
                elif pos < len(self.data):
                    given = bytes(self.data[pos:pos + CHUNK])
                    pos += len(given)
                else:
                    given = b""
                out = decoder.decompress(given, CHUNK)
                if out:
                    yield out
                elif not given:
                    raise ImageFormatError("gzip data is truncated")
        except zlib.error as err:
            raise ImageFormatError(f"bad gzip data: {err}") from err
        self.consumed = pos - len(decoder.unused_data)

    def _lzma_like(self) -> Generator[bytes, None, None]:
        decoder: Any
        if self.kind == "bzip2":
            decoder = bz2.BZ2Decompressor()
        else:
            decoder = lzma.LZMADecompressor(
                format=lzma.FORMAT_XZ if self.kind == "xz" else lzma.FORMAT_ALONE,
                memlimit=MAX_DECODER_MEMORY)
        pos = 0
        try:
            while not decoder.eof:
                given = b""
                if decoder.needs_input:
                    if pos >= len(self.data):
                        raise ImageFormatError(f"{self.kind} data is truncated")
                    given = bytes(self.data[pos:pos + CHUNK])
                    pos += len(given)
                out = decoder.decompress(given, CHUNK)
                if out:
                    yield out
        except (lzma.LZMAError, OSError, EOFError, ValueError) as err:
            raise ImageFormatError(f"bad {self.kind} data: {err}") from err
        self.consumed = pos - len(decoder.unused_data)

    def _tool(self) -> Generator[bytes, None, None]:
        """zstd and lz4 through Debian's own tools (``-dc``: to stdout). A zstd member is one
        frame, as the kernel's unzstd decodes it (what follows, an appended archive say, is
        the next member); an lz4 member runs to the end of the image."""
        tool = shutil.which(self.kind)
        if tool is None:
            raise ImageUnreadableError(
                f"the initramfs is {self.kind}-compressed and the {self.kind} tool is not "
                f"installed (apt-get install {self.kind})"
            )
        end = zstd_frame_end(self.data) if self.kind == "zstd" else None
        data = self.data if end is None else self.data[:end]
        self.consumed = end
        yield from stream_tool([tool, "-dc"], data, what=f"{self.kind} -dc")


def zstd_frame_end(data: memoryview | bytes) -> int | None:
    """Where the zstd frame at the start of ``data`` ends (RFC 8878, 3.1.1: its header, then
    3-byte block headers each giving the block's size, then the optional checksum); None
    when the frame is truncated or malformed (then the tool is given the rest of the image)."""
    view = memoryview(data)
    if len(view) < 6 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = view[4]
    single_segment = bool(descriptor & 0x20)
    checksum = bool(descriptor & 0x04)
    content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size
    while True:
        if pos + 3 > len(view):
            return None
        header = int.from_bytes(view[pos:pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            return None
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    pos += 4 if checksum else 0
    return pos if pos <= len(view) else None

