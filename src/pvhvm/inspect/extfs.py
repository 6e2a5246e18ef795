"""Read an ext2/3/4 filesystem inside an image with e2fsprogs' debugfs, read-only.

debugfs(8) opens the filesystem itself (libext2fs), so nothing is mounted on the host. The
filesystem may start inside the image: libext2fs takes unix_io options after a ``?`` in the
device name, and ``offset=N`` is one of them (e2fsprogs 1.47: ``debugfs -R 'cat /etc/fstab'
'disk.img?offset=1048576'``). ``-c`` (catastrophic mode) skips reading the bitmaps and
always opens read-only. debugfs follows symlinks in the middle of a path but not the last
component, so this module resolves paths itself from directory listings (``ls -p``:
``/inode/mode/uid/gid/name/size/``) and ``stat``'s "Fast link dest".

The filesystem is untrusted input to debugfs, so debugfs never runs as root on it: it gets the
image as a descriptor this process opened, as the unprivileged user ``nobody`` in namespaces
of its own, with a timeout (:mod:`.sandbox`); a file copied out (``dump``) is written by this
process from debugfs' ``cat`` on stdout, never by debugfs to a host path.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError
from pvhvm.inspect.sandbox import (
    MAX_OUTPUT,
    TOOL_TIMEOUT,
    ImageHandle,
    new_output_file,
    run_tool,
)

MAX_SYMLINKS = 16
#: files up to this size are kept once read
SMALL_FILE = 1 << 20
#: the largest file copied out (a kernel or an initramfs)
MAX_DUMP = 512 << 20
_BANNER = re.compile(r"^debugfs \d")
_FAST_LINK = re.compile(r'Fast link dest: "(.*)"\s*$', re.M)


def _quote(path: str) -> str:
    """A path as one debugfs argument; a name debugfs cannot quote is refused, so a name in a
    guest image can never turn into a second argument (``dump``'s host destination)."""
    if '"' in path or "\n" in path or "\\" in path:
        raise ImageFormatError(f"cannot read {path!r}: debugfs cannot quote that name")
    return f'"{path}"'


@dataclass(frozen=True)
class DirEntry:
    """One name in a directory listing."""

    name: str
    inode: int
    mode: int
    size: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


class ExtFilesystem:
    """An ext2/3/4 filesystem at ``offset`` bytes into ``image``, read through debugfs."""

    def __init__(self, image: Path, offset: int = 0, debugfs: str | None = None,
                 handle: ImageHandle | None = None) -> None:
        self.image = image
        self.offset = offset
        #: the image as the confined debugfs reads it (shared by the filesystems of an image)
        self._handle = handle
        tool = debugfs or shutil.which("debugfs") or shutil.which("/sbin/debugfs")
        if tool is None:
            raise ImageUnreadableError("debugfs (e2fsprogs) is not installed; cannot read ext4")
        self._debugfs = tool
        self._listings: dict[str, dict[str, DirEntry] | None] = {}
        self._links: dict[str, str | None] = {}
        #: small files already read (fstab is wanted by two steps of an inspection)
        self._small: dict[str, bytes] = {}
        #: debugfs invocations made (the benchmark counts them)
        self.calls = 0

    @property
    def handle(self) -> ImageHandle:
        """The image opened for debugfs (opened at the first read)."""
        if self._handle is None:
            self._handle = ImageHandle(self.image)
        return self._handle

    @property
    def _device(self) -> str:
        path = self.handle.child_path
        return f"{path}?offset={self.offset}" if self.offset else path

    def _run(self, request: str, stdout: int | None = None,
             max_output: int = MAX_OUTPUT) -> tuple[bytes, list[str]]:
        """Run one debugfs request; its stdout, and stderr lines other than the banner."""
        self.calls += 1
        device = self._device
        out, err, _status = run_tool(
            [self._debugfs, "-c", "-R", request, device], what=f"{self.image}: debugfs",
            timeout=TOOL_TIMEOUT, image=self.handle, stdout=stdout, max_output=max_output,
        )
        errors = [
            line.replace(device, str(self.image))
            for line in err.decode(errors="replace").splitlines()
            if line.strip() and not _BANNER.match(line) and "catastrophic mode" not in line
        ]
        if any("while opening filesystem" in line or "while trying to open" in line
               for line in errors):
            raise ImageFormatError(
                f"{self.image} at offset {self.offset}: not a readable ext2/3/4 filesystem "
                f"({errors[0].strip()})"
            )
        return out, errors

    def listdir(self, path: str) -> dict[str, DirEntry] | None:
        """The entries of directory ``path`` (symlinks resolved), None when it is not one."""
        real = self.resolve(path)
        if real is None:
            return None
        return self._listing(real)

    def _listing(self, real: str) -> dict[str, DirEntry] | None:
        if real in self._listings:
            return self._listings[real]
        out, errors = self._run(f"ls -p {_quote(real)}")
        entries: dict[str, DirEntry] | None = None
        if not errors:
            entries = {}
            for line in out.decode(errors="surrogateescape").splitlines():
                fields = line.split("/")
                if len(fields) < 7 or not fields[1].isdigit():
                    continue
                name = "/".join(fields[5:-2])
                if name in (".", ".."):
                    continue
                size = int(fields[-2]) if fields[-2].isdigit() else 0
                entries[name] = DirEntry(name, int(fields[1]), int(fields[2], 8), size)
        self._listings[real] = entries
        return entries

    def _entry(self, real_dir: str, name: str) -> DirEntry | None:
        listing = self._listing(real_dir)
        return None if listing is None else listing.get(name)

    def readlink(self, real: str) -> str | None:
        """The target of the symlink at resolved-parent path ``real``."""
        if real not in self._links:
            self._links[real] = self._readlink(real)
        return self._links[real]

    def _readlink(self, real: str) -> str | None:
        out, errors = self._run(f"stat {_quote(real)}")
        text = out.decode(errors="surrogateescape")
        match = _FAST_LINK.search(text)
        if match:
            return match.group(1)
        data, errors = self._run(f"cat {_quote(real)}", max_output=1 << 20)  # a link target
        return None if errors else data.decode(errors="surrogateescape")

    def resolve(self, path: str) -> str | None:
        """``path`` with every symlink resolved inside this filesystem; None if it is missing.

        Absolute symlinks are taken relative to this filesystem's root, as a chroot would.
        """
        parts = [p for p in path.split("/") if p and p != "."]
        current = "/"
        hops = 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                current = posixpath.dirname(current) or "/"
                continue
            entry = self._entry(current, name)
            if entry is None:
                return None
            here = posixpath.join(current, name)
            if entry.is_symlink:
                hops += 1
                target = self.readlink(here)
                if target is None or hops > MAX_SYMLINKS:
                    return None
                if target.startswith("/"):
                    current = "/"
                parts = [p for p in target.split("/") if p and p != "."] + parts
                continue
            current = here
        return current

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        """The contents of regular file ``path``; None when it is missing or not a file."""
        real = self.resolve(path)
        if real is None or real == "/":
            return None
        entry = self._entry(posixpath.dirname(real), posixpath.basename(real))
        if entry is None or not entry.is_file:
            return None
        if limit is not None and entry.size > limit:
            raise ImageFormatError(f"{self.image}: {path} is {entry.size} bytes, over {limit}")
        if real in self._small:
            return self._small[real]
        data, errors = self._run(f"cat {_quote(real)}", max_output=(
            MAX_OUTPUT if limit is None else limit + (64 << 10)))
        if errors:
            raise ImageFormatError(f"{self.image}: cannot read {path}: {errors[0].strip()}")
        if len(data) <= SMALL_FILE:
            self._small[real] = data
        return data

    def read_text(self, path: str) -> str | None:
        data = self.read(path, limit=4 << 20)
        return None if data is None else data.decode("utf-8", errors="replace")

    def dump(self, path: str, destination: Path, limit: int = MAX_DUMP) -> bool:
        """Copy regular file ``path`` out to ``destination``, a new file (debugfs ``cat``
        into a descriptor this process opened with O_EXCL, at most ``limit`` bytes: a file
        over it is refused; a partial copy is removed)."""
        real = self.resolve(path)
        if real is None or real == "/":
            return False
        entry = self._entry(posixpath.dirname(real), posixpath.basename(real))
        if entry is None or not entry.is_file:
            return False
        if entry.size > limit:
            raise ImageFormatError(f"{self.image}: {path} is {entry.size} bytes, over {limit}")
        with new_output_file(destination) as (fd, done):
            _out, errors = self._run(f"cat {_quote(real)}", stdout=fd, max_output=limit)
            done[0] = not errors and os.fstat(fd).st_size == entry.size
        return done[0]
