"""The initramfs: a gzip'd "newc" cpio archive written in Python (no host cpio, no root).

Format: the kernel's ``Documentation/driver-api/early-userspace/buffer-format.rst`` (SVR4
"newc", magic ``070701``): a 110-byte ASCII header, the NUL-terminated name padded to 4 bytes,
the data padded to 4 bytes; the archive ends with an entry named ``TRAILER!!!``.

Device nodes (``/dev/console``, which the kernel opens for /init's stdio before /init runs) are
archive entries, so no ``mknod`` is needed on the host.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import GuestImageError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``name`` has no leading slash (``bin/busybox``)."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    mtime: int = 0

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: CpioEntry, ino: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, entry.mtime, len(entry.data), 0, 0,
        entry.rdev_major, entry.rdev_minor, len(name), 0,
    )
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    return header + name + _pad4(len(header) + len(name))


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries (in the given order; parents must come before children)."""
    chunks: list[bytes] = []
    ino = 0
    for ino, entry in enumerate(entries, start=1):
        if entry.name.startswith("/") or not entry.name:
            raise GuestImageError(f"bad cpio member name {entry.name!r}")
        chunks.append(_header(entry, ino))
        chunks.append(entry.data + _pad4(len(entry.data)))
    chunks.append(_header(CpioEntry(TRAILER, 0), ino + 1))
    return b"".join(chunks)


def tree_entries(root: Path) -> Iterator[CpioEntry]:
    """Entries for everything under a staging directory, sorted, parents first."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        names = sorted([*dirnames, *filenames])
        for name in names:
            path = base / name
            relname = path.relative_to(root).as_posix()
            info = path.lstat()
            perm = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                yield CpioEntry.symlink(relname, os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                yield CpioEntry.directory(relname, perm)
            elif stat.S_ISREG(info.st_mode):
                yield CpioEntry.file(relname, path.read_bytes(), perm)
            else:
                raise GuestImageError(f"cannot archive {path}: not a file, directory or link")


def write_initramfs(staging: Path, output: Path, *, extra: Iterable[CpioEntry] = ()) -> None:
    """Write ``staging`` plus ``extra`` entries as a gzip'd newc archive (mtime 0: reproducible)."""
    entries = [*tree_entries(staging), *extra]
    archive = cpio_newc(entries)
    try:
        with open(output, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0,
        ) as gz:
            gz.write(archive)
    except OSError as err:
        raise GuestImageError(f"cannot write {output}: {err}") from err


def console_nodes() -> list[CpioEntry]:
    """The device nodes the kernel needs before devtmpfs is mounted."""
    return [
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.char_device("dev/null", 1, 3, 0o666),
        CpioEntry.char_device("dev/ttyS0", 4, 64, 0o660),
    ]
