"""Small host file-system helpers that several stages share.

* :func:`directory_lock` — one builder at a time for a cache directory (the guest kit, its
  bench extras, the tests' downloaded peers): an exclusive flock on ``DIR/.lock``.
* :func:`socket_path_state` — what sits at a path where a Unix socket is to listen: nothing,
  a stale socket (safe to replace), a live one, or something that is not a socket at all.
* :func:`cache_home` — pvhvm's per-user cache directory, ``$XDG_CACHE_HOME/pvhvm``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from collections.abc import Iterator
from enum import Enum
from pathlib import Path


def cache_home() -> Path:
    """pvhvm's per-user cache: ``$XDG_CACHE_HOME/pvhvm``, by default ``~/.cache/pvhvm``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pvhvm"


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``directory/.lock`` (the directory is made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


class SocketPath(Enum):
    """What is at a path a Unix socket server wants to bind."""

    ABSENT = "absent"
    STALE = "stale"  # a socket nobody listens on: may be replaced
    LIVE = "live"  # a socket something answers on
    OTHER = "other"  # a file, directory, ...: never to be replaced


def socket_path_state(path: str | os.PathLike[str]) -> SocketPath:
    """Probe ``path`` (lstat, then a connect for a socket)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return SocketPath.ABSENT
    if not stat.S_ISSOCK(mode):
        return SocketPath.OTHER
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return SocketPath.STALE
    return SocketPath.LIVE
