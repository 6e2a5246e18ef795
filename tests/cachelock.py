"""One builder at a time for a test cache shared by xdist workers.

Two workers that each find a cache empty would otherwise download, unpack and compile into the
same directory at once, and one could exec a binary the other is still writing (ETXTBSY) or
read a half-unpacked tree. The first worker to take the lock fills the cache; the others wait
for it and then find the cache complete.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``cache/.lock`` (the directory is made if missing)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock

