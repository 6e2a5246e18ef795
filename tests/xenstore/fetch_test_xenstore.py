"""Fetch Xen's own ``test-xenstore`` (Debian xen-utils-4.17) into a cache directory.

Usable as a script (``python tests/xenstore/fetch_test_xenstore.py [CACHE_DIR]``) and from the
test fixtures. It runs ``apt-get download`` for xen-utils-4.17 and, when the host lacks
them, for the libraries test-xenstore links (libxenstore4, libxentoolcore1), then
``dpkg-deb -x`` each into the cache. Nothing is installed system-wide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "xen-utils-4.17"
LIBRARY_PACKAGES = ("libxenstore4", "libxentoolcore1")
BINARY = Path("usr/lib/xen-4.17/bin/test-xenstore")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pvhvm" \
    / "xen-utils"


class FetchError(Exception):
    """The package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class XenTestProgram:
    """Where the unpacked binary is and what LD_LIBRARY_PATH it needs."""

    binary: Path
    library_path: str

    def environment(self, socket_path: str | os.PathLike[str]) -> dict[str, str]:
        """An environment that points the binary at ``socket_path``."""
        env = dict(os.environ)
        env["XENSTORED_PATH"] = os.fspath(socket_path)
        if self.library_path:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (self.library_path, env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def _run(argv: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"{' '.join(argv)}: {err}") from err
    if result.returncode != 0:
        raise FetchError(f"{' '.join(argv)} failed ({result.returncode}): "
                         f"{result.stderr.strip()[-500:]}")


def _missing_libraries(binary: Path) -> bool:
    if shutil.which("ldd") is None:
        return True
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    return "not found" in result.stdout


def fetch(cache: Path = DEFAULT_CACHE) -> XenTestProgram:
    """Download and unpack (once) and return the binary. Raises FetchError."""
    root = cache / "root"
    binary = root / BINARY
    debs = cache / "debs"
    if not binary.exists():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise FetchError("apt-get and dpkg-deb are needed to fetch test-xenstore")
        debs.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", "download", PACKAGE], debs)
        for deb in sorted(debs.glob(f"{PACKAGE}_*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], cache)
        if not binary.exists():
            raise FetchError(f"{PACKAGE} has no {BINARY}")
    libdirs = [root / "usr/lib/x86_64-linux-gnu", root / "lib/x86_64-linux-gnu"]
    library_path = os.pathsep.join(str(d) for d in libdirs)
    if _missing_libraries(binary) and not any((d / "libxenstore.so.4").exists()
                                               for d in libdirs):
        debs.mkdir(parents=True, exist_ok=True)
        for package in LIBRARY_PACKAGES:
            _run(["apt-get", "download", package], debs)
            for deb in sorted(debs.glob(f"{package}_*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(root)], cache)
    return XenTestProgram(binary, library_path)


if __name__ == "__main__":
    where = fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE)
    print(f"{where.binary}\nLD_LIBRARY_PATH={where.library_path}")
