"""The logs a domain leaves (issue 21, item 3): kept across QEMU starts, marked, rotated.

Every QEMU start appends to the domain's console log (QEMU's ``logappend=on``) and to its
QEMU log; the supervisor writes a marker line into the console log as each QEMU starts::

    --- pvhvm: domain NAME started at 2026-12-06T22:00:00+00:00 (QEMU pid 1234) ---

so a panic trace of the run before an ``on_crash=restart`` stays readable above the new run's
output, and whatever reads the guest's words (``pvhvm report``) reads only the part after the
last marker (:func:`current_run`).

Rotation, as virtlogd does it by size: a log larger than :data:`ROTATE_SIZE` becomes
``LOG.1`` (``.1`` → ``.2`` … up to :data:`KEEP` old files, the oldest dropped), checked at
each QEMU start (:func:`rotate`, the file renamed: nobody writes it then) and periodically by
the supervisor while QEMU runs (:func:`rotate_open`: copied, then truncated in place, as
logrotate's ``copytruncate``, because QEMU keeps its descriptor; both write with O_APPEND, so
QEMU's next write lands at the new end). Every file is 0600 (pvhvm/private.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

from pvhvm.private import open_private

#: a log larger than this is rotated (bytes)
ROTATE_SIZE = 1 << 20
#: how many rotated files are kept (LOG.1 … LOG.KEEP)
KEEP = 3
#: how often the supervisor looks at the logs of a running QEMU (seconds)
ROTATE_INTERVAL = 60.0
#: the start of the line the supervisor writes into the console log at each QEMU start
MARKER_PREFIX = "--- pvhvm: domain "


def marker(name: str, qemu_pid: int | None, when: datetime.datetime | None = None) -> str:
    """The console log's line for a QEMU start (ISO 8601 time, UTC); ``qemu_pid`` None: a
    QEMU that libvirt started (its pid is libvirt's business)."""
    moment = (when or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds")
    who = "started by libvirt" if qemu_pid is None else f"QEMU pid {qemu_pid}"
    return f"{MARKER_PREFIX}{name} started at {moment} ({who}) ---\n"


def write_marker(path: Path, name: str, qemu_pid: int | None) -> None:
    """Append the start marker to the console log ``path`` (created 0600 when missing).

    The marker starts a line of its own even when the last run's output ended mid-line."""
    fd = open_private(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        lead = "\n" if size and os.pread(fd, 1, size - 1) != b"\n" else ""
        os.write(fd, (lead + marker(name, qemu_pid)).encode())
    finally:
        os.close(fd)


def current_run(text: str) -> str:
    """The part of a console log after its last start marker (all of it without one)."""
    at = text.rfind("\n" + MARKER_PREFIX)
    if at < 0:
        if not text.startswith(MARKER_PREFIX):
            return text
        at = 0
    else:
        at += 1
    end = text.find("\n", at)
    return "" if end < 0 else text[end + 1:]


def rotated(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _shift(path: Path, keep: int) -> None:
    """LOG.(keep-1) → LOG.keep … LOG.1 → LOG.2 (LOG.keep dropped)."""
    for index in range(keep - 1, 0, -1):
        older = rotated(path, index)
        with contextlib.suppress(FileNotFoundError):
            os.replace(older, rotated(path, index + 1))


def _too_big(path: Path, limit: int) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return info.st_size > limit and not os.path.islink(path)


def rotate(path: Path, limit: int | None = None, keep: int = KEEP) -> bool:
    """Rotate ``path`` by renaming when it is larger than ``limit`` (nobody writes it now);
    True when it was."""
    if not _too_big(path, ROTATE_SIZE if limit is None else limit):
        return False
    _shift(path, keep)
    os.replace(path, rotated(path, 1))
    return True


def rotate_open(path: Path, limit: int | None = None, keep: int = KEEP) -> bool:
    """Rotate ``path``, which a running QEMU keeps open (O_APPEND), by copying it to
    ``LOG.1`` and truncating it in place; True when it was. Output written between the copy
    and the truncation is lost, as with logrotate's copytruncate."""
    if not _too_big(path, ROTATE_SIZE if limit is None else limit):
        return False
    _shift(path, keep)
    source = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        target = open_private(rotated(path, 1), os.O_WRONLY | os.O_TRUNC)
        try:
            while chunk := os.read(source, 1 << 16):
                os.write(target, chunk)
        finally:
            os.close(target)
        os.ftruncate(source, 0)
    finally:
        os.close(source)
    return True
