"""What is the user's own stays the user's own (issue 18, items 2 and 5).

* :func:`foreign_peer` — who answers on a Unix socket pvhvm reached (SO_PEERCRED, unix(7)):
  checked before anything, a descriptor least of all, is sent on it. The host supervisor's
  socket (runtime/hostctl.py, and hostd.py for its own clients), QMP (qemu/qmp.py), the
  serial console (runtime/console.py) and XenStore (xenstore/client.py) all ask it, as
  libvirt checks the peers on its sockets.
* :func:`private_dir` and :func:`open_private` — state directories 0700 and the files in them
  0600, made so from the start (mkdir/open modes, never a chmod after the fact), and an
  older pvhvm's looser ones tightened at first use through a descriptor opened with
  O_NOFOLLOW: a symlink is never followed to chmod what it points to.

This module imports nothing of pvhvm: every stage may use it.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterable
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED:
    for a listening peer, its credentials when it called listen)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def foreign_peer(sock: socket.socket, also: Iterable[int] = ()) -> int | None:
    """The uid at the other end of ``sock`` when it is neither this process's uid nor one
    of ``also`` (root's own peers must be root); None for a peer that may be talked to."""
    uid = peer_uid(sock)
    return None if uid == os.getuid() or uid in also else uid


def stranger_on(sock: socket.socket, also: Iterable[int] = ()) -> int | None:
    """:func:`foreign_peer` for a socket just connected: a stranger's uid, with ``sock``
    closed (nothing was sent on it); None, with ``sock`` still open, for a peer that may be
    talked to. ``sock`` is closed too when the check itself fails."""
    try:
        stranger = foreign_peer(sock, also)
    except BaseException:
        sock.close()
        raise
    if stranger is not None:
        sock.close()
    return stranger


def who(uid: int) -> str:
    """``uid 65534 (nobody)``: a uid as a refusal names it."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def private_dir(path: Path, tighten: bool = True) -> None:
    """Make directory ``path`` (and its missing parents) 0700, or, when it exists and
    ``tighten``, take group and other bits off it (an older pvhvm made it 0755).

    The directory is opened with O_NOFOLLOW and changed through that descriptor, so a
    symlink at ``path`` is never followed to chmod its target: it is left as it is. One that
    another user owns (not root) is refused with PermissionError: whatever pvhvm put in it
    would be theirs to read or replace."""
    missing = [path]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    for directory in reversed(missing):  # the umask only takes bits away from 0700
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if directory == path:
                break
        else:
            if directory == path:
                return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            return  # a symlink (or not a directory: its user will say so): not changed
        raise
    try:
        _check_owner(fd, path)
        if tighten:
            _tighten(fd, DIR_MODE)
    finally:
        os.close(fd)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """A descriptor on file ``path``, created 0600 when missing (``flags`` plus O_CREAT),
    tightened to 0600 when an older pvhvm left it readable by others; O_NOFOLLOW: a symlink
    at ``path`` is an error (ELOOP), not followed; another user's file is refused
    (PermissionError)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        _check_owner(fd, path)
        _tighten(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_owner(fd: int, path: Path) -> None:
    owner = os.fstat(fd).st_uid
    if owner not in (os.getuid(), 0):
        raise PermissionError(errno.EPERM, f"owned by another user ({who(owner)})", str(path))


def _tighten(fd: int, mode: int) -> None:
    info = os.fstat(fd)
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~0o077 | mode)
