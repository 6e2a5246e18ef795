"""Talking to the host supervisor (``runtime/hostd.py``) from the toolstack.

One host supervisor per state directory supervises every qemu-platform domain in it, as
libvirtd does for its host (xl leaves a small monitor per domain instead; a Python process per
domain costs 20+ MiB, one for all costs that once). It listens on ``hostd.sock`` in the state
directory, which is 0700 (pvhvm/private.py), so no other user can take its place there; a
state directory whose path is too long for AF_UNIX (108 bytes) gets an abstract socket named
from its hash instead, a name any local user could bind while no supervisor runs. Either way
the client checks who answers (SO_PEERCRED: its own uid) before it sends anything, and
another uid's socket gets nothing, no descriptor least of all, and a :class:`ForeignPeerError`
(issue 18). Requests are SOCK_SEQPACKET messages, one JSON object each, with the file
descriptors they hand over (the domain's owner lock, the creator's pipes) as SCM_RIGHTS.

This module imports no asyncio: it is on the CLI's path.

Who answers for a domain is still its owner lock: the host supervisor holds the lock of
every domain it supervises, so when it dies (killed, crashed) every lock is free and the next
pvhvm command that looks at a domain (``lifecycle.refresh``) starts a new host supervisor and
hands the domain to it (``adopt``), as it did with per-domain supervisors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pvhvm.errors import DomainError, ForeignPeerError
from pvhvm.private import open_private, stranger_on, who
from pvhvm.runtime.state import StateStore

#: how long a request may take to be answered (the daemon answers at once; it never waits
#: on a guest before replying)
REQUEST_TIMEOUT = 10.0
#: how long starting a host supervisor may take (Python start and imports, under load)
START_TIMEOUT = 30.0
#: seconds the host supervisor stays after its last domain has gone, so a create right after
#: a destroy does not pay its start; PVHVM_HOSTD_LINGER overrides it
LINGER = 60.0
MAX_MESSAGE = 65536


class HostdError(DomainError):
    """The host supervisor could not be reached or refused a request."""


#: the host supervisor's socket in the state directory
SOCKET_NAME = "hostd.sock"
#: sun_path is 108 bytes on Linux, NUL included
MAX_SOCKET_PATH = 107


def address(root: Path) -> str | bytes:
    """Where the host supervisor of state directory ``root`` listens: ``root/hostd.sock``,
    or an abstract name from ``root``'s hash when that path is too long for AF_UNIX."""
    path = root.resolve() / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return str(path)
    return _abstract_name(root)


def _abstract_name(root: Path) -> bytes:
    """The abstract name from ``root``'s hash: where the host supervisor of a too-deep state
    directory listens, and where pvhvm before ``hostd.sock`` listened for every one."""
    digest = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:32]
    return b"\0pvhvm-hostd-" + digest.encode()


def _refusal(root: Path, uid: int) -> str:
    where = address(root)
    if isinstance(where, str):
        return (f"another user ({who(uid)}) holds the host supervisor's socket {where} for "
                f"state directory {root}; pvhvm sent it nothing. Stop that user's process and "
                f"remove the socket, and keep {root} yours and 0700")
    return (f"another user ({who(uid)}) holds the host supervisor's socket name for state "
            f"directory {root} (an abstract socket: its path is too long for a socket file); "
            "pvhvm sent it nothing. Stop that user's process (ss -xlp names it) or set "
            "PVHVM_STATE_DIR to a shorter path")


def linger() -> float:
    raw = os.environ.get("PVHVM_HOSTD_LINGER")
    if raw is None:
        return LINGER
    try:
        value = float(raw)
    except ValueError:
        raise HostdError(f"PVHVM_HOSTD_LINGER must be a number of seconds, not {raw!r}") from None
    if not 0 <= value < 1e6:
        raise HostdError(f"PVHVM_HOSTD_LINGER must be between 0 and 1e6 seconds, not {raw!r}")
    return value


def _connect(root: Path) -> socket.socket | None:
    """A connection to ``root``'s host supervisor, None when nobody listens; another uid
    that answers is refused (ForeignPeerError) before a byte is sent.

    When nobody listens on ``hostd.sock``, the abstract name is tried too: a host supervisor
    started by an older pvhvm keeps its domains there until they are gone (it holds the
    state directory's lock meanwhile, so no new one can start). Only this uid's is used; a
    squatter of that name is not the supervisor of record, and is ignored, told nothing."""
    where = address(root)
    sock, stranger = _reach(where)
    if stranger is not None:
        raise ForeignPeerError(_refusal(root, stranger))
    if sock is None and isinstance(where, str):
        sock, _ = _reach(_abstract_name(root))
    return sock


def _reach(where: str | bytes) -> tuple[socket.socket | None, int | None]:
    """(a connection to ``where``, None) when this uid listens there; (None, its uid) when
    another does (the connection closed, nothing sent); (None, None) when nobody does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(where)
    except OSError:  # ECONNREFUSED, ENOENT: nobody listens there
        sock.close()
        return None, None
    stranger = stranger_on(sock)
    if stranger is not None:
        return None, stranger
    return sock, None


def _exchange(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    data = json.dumps(message).encode()
    sock.settimeout(REQUEST_TIMEOUT)
    try:
        socket.send_fds(sock, [data], fds)
        reply = sock.recv(MAX_MESSAGE)
    except TimeoutError:
        raise HostdError("the host supervisor did not answer within "
                         f"{REQUEST_TIMEOUT:.0f}s") from None
    except OSError as err:
        raise HostdError(f"the host supervisor went away ({err.strerror or err})") from None
    if not reply:
        raise HostdError("the host supervisor closed the connection without an answer")
    try:
        answer = json.loads(reply)
    except ValueError:
        raise HostdError("the host supervisor gave an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise HostdError("the host supervisor gave an answer that is not an object")
    return answer


def request(root: Path, message: dict[str, Any], fds: list[int] | None = None,
            start: bool = True) -> dict[str, Any]:
    """Send ``message`` (and ``fds``) to ``root``'s host supervisor, starting one if none
    runs and ``start``; its answer. HostdError when it refuses or cannot be reached,
    ForeignPeerError (nothing sent) when another user holds its socket."""
    for _ in range(3):
        sock = _connect(root)
        if sock is None:
            if not start:
                raise HostdError("no host supervisor runs for this state directory")
            _spawn(root)
            continue
        try:
            answer = _exchange(sock, message, fds or [])
        finally:
            sock.close()
        if answer.get("error") == "exiting":  # it was leaving as we came: start another
            continue
        if "error" in answer:
            raise HostdError(str(answer["error"]))
        return answer
    raise HostdError("the host supervisor kept going away while being asked")


def running(root: Path) -> int | None:
    """The pid of ``root``'s host supervisor, or None when none runs."""
    try:
        answer = request(root, {"verb": "ping"}, start=False)
    except HostdError:
        return None
    pid = answer.get("pid")
    return pid if isinstance(pid, int) else None


def supervise(root: Path, name: str, owner_fd: int, *, ready_fd: int | None = None,
              adopt: bool = False, incoming: tuple[int, int] | None = None) -> int:
    """Hand domain ``name`` to the host supervisor (started if need be); its pid.

    ``owner_fd``: the domain's owner lock, which the host supervisor holds from now on.
    ``ready_fd``: where it says ``ok`` or ``error: ...`` once QEMU runs (the create pipe).
    ``adopt``: take over a domain whose supervisor died. ``incoming``: (stream fd, commit fd)
    of a domain QEMU loads from a migration stream (runtime/incoming.py)."""
    fds = [owner_fd]
    message: dict[str, Any] = {"verb": "adopt" if adopt else "start", "name": name,
                               "ready": ready_fd is not None, "incoming": incoming is not None}
    if ready_fd is not None:
        fds.append(ready_fd)
    if incoming is not None:
        fds += incoming
    answer = request(root, message, fds)
    pid = answer.get("pid")
    if not isinstance(pid, int):
        raise HostdError("the host supervisor did not say its pid")
    return pid


def stop(root: Path, name: str) -> bool:
    """Ask the host supervisor to destroy ``name``; False when none runs or it does not
    supervise that domain."""
    try:
        answer = request(root, {"verb": "stop", "name": name}, start=False)
    except HostdError:
        return False
    return bool(answer.get("stopping"))


def _spawn(root: Path) -> None:
    """Start a host supervisor for ``root`` and wait until it listens (or another does)."""
    logs = root / "logs"
    StateStore(root).make_private()
    read_fd, write_fd = os.pipe()
    try:
        log = open_private(logs / "hostd.log")
        try:
            # umask 077: what it and its QEMUs make (logs, sockets) is the user's alone
            proc = subprocess.Popen(
                [sys.executable, "-m", "pvhvm.runtime.hostd", "--state-dir", str(root.absolute()),
                 "--ready-fd", str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[write_fd],
                start_new_session=True, close_fds=True, umask=0o077,
            )
        finally:
            os.close(log)
    except OSError as err:
        os.close(read_fd)
        raise HostdError(f"cannot start the host supervisor: {err.strerror or err}") from None
    finally:
        os.close(write_fd)
    try:
        said = read_until_eof(read_fd, START_TIMEOUT)
    finally:
        os.close(read_fd)
    if said in ("ready", "running"):
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    raise HostdError("the host supervisor did not start: "
                     + (said.removeprefix("error: ") or f"see {logs / 'hostd.log'}"))


def read_until_eof(fd: int, timeout: float) -> str:
    """What is written on pipe ``fd`` until its writer closes it, stripped (the creator's
    pipe of a domain, a starting host supervisor's word); a timeout is said as such."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"timed out after {timeout:.0f}s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)
