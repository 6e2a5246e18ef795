"""Read a FAT filesystem inside an image with mtools, read-only (a SYSLINUX or EFI boot
partition). mtools(1) takes ``-i IMAGE@@OFFSET``; ``mdir -a -b`` lists bare names (a
directory ends in ``/``), ``mtype`` prints a file, ``mcopy -n`` copies one out. FAT names are
case-insensitive, as mtools matches them. mtools parses the untrusted partition confined, as
debugfs does (:mod:`.sandbox`): the image as a descriptor, as ``nobody``, with a timeout.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError
from pvhvm.inspect.extfs import DirEntry
from pvhvm.inspect.sandbox import MAX_OUTPUT, ImageHandle, new_output_file, run_tool


class FatFilesystem:
    """A FAT filesystem at ``offset`` bytes into ``image``, read through mtools."""

    def __init__(self, image: Path, offset: int = 0, handle: ImageHandle | None = None) -> None:
        self.image = image
        self.offset = offset
        self._handle = handle
        if shutil.which("mtype") is None:
            raise ImageUnreadableError("mtools is not installed; cannot read a FAT partition")
        self._listings: dict[str, dict[str, DirEntry] | None] = {}
        self.calls = 0

    def _run(self, tool: str, *args: str, stdout: int | None = None,
             max_output: int = MAX_OUTPUT) -> tuple[bytes, int]:
        """One mtools command on the confined image: (stdout, exit status)."""
        self.calls += 1
        if self._handle is None:
            self._handle = ImageHandle(self.image)
        out, _err, status = run_tool(
            [tool, "-i", f"{self._handle.child_path}@@{self.offset}", *args],
            what=f"{self.image}: {tool}", image=self._handle, stdout=stdout,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, max_output=max_output,
        )
        return out, status

    @staticmethod
    def _path(path: str) -> str:
        if any(c in path for c in "\n*?"):
            raise ImageFormatError(f"cannot read {path!r} from a FAT partition")
        return "::/" + path.strip("/")

    def listdir(self, path: str) -> dict[str, DirEntry] | None:
        key = "/" + path.strip("/")
        if key in self._listings:
            return self._listings[key]
        out, status = self._run("mdir", "-a", "-b", self._path(path))
        entries: dict[str, DirEntry] | None = None
        if status == 0:
            entries = {}
            prefix = self._path(path).rstrip("/") + "/"
            for line in out.decode(errors="replace").splitlines():
                if not line.lower().startswith(prefix.lower()):
                    continue
                name = line[len(prefix):]
                is_dir = name.endswith("/")
                name = name.rstrip("/")
                if name and "/" not in name:
                    mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
                    entries[name] = DirEntry(name, 0, mode, 0)
        self._listings[key] = entries
        return entries

    def resolve(self, path: str) -> str | None:
        parent, _, name = ("/" + path.strip("/")).rpartition("/")
        if not name:
            return "/"
        listing = self.listdir(parent or "/")
        if listing is None:
            return None
        match = next((n for n in listing if n.lower() == name.lower()), None)
        return None if match is None else f"{parent}/{match}"

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        real = self.resolve(path)
        if real is None:
            return None
        listing = self.listdir(real.rpartition("/")[0] or "/") or {}
        entry = listing.get(real.rpartition("/")[2])
        if entry is None or not entry.is_file:
            return None
        out, status = self._run("mtype", self._path(real), max_output=(
            MAX_OUTPUT if limit is None else limit + (64 << 10)))
        if status != 0:
            return None
        if limit is not None and len(out) > limit:
            raise ImageFormatError(f"{self.image}: {path} is over {limit} bytes")
        return out

    def read_text(self, path: str) -> str | None:
        data = self.read(path, limit=4 << 20)
        return None if data is None else data.decode("utf-8", errors="replace")

    def dump(self, path: str, destination: Path) -> bool:
        real = self.resolve(path)
        if real is None:
            return False
        with new_output_file(destination) as (fd, done):
            _out, status = self._run("mtype", self._path(real), stdout=fd)
            done[0] = status == 0
        return done[0]
