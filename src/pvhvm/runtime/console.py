"""``pvhvm console``: attach a terminal (or a pipe) to a domain's serial console.

The default serial is a QEMU socket chardev (server, one client at a time) at the record's
``console`` path; ``unix:PATH`` and ``tcp:HOST:PORT`` serials are attached the same way.
``^]`` on stdin detaches, as with ``xl console``. On a terminal, stdin is put in raw mode (and
restored); with a pipe, end of input detaches once the guest has been quiet for
:data:`LINGER` seconds, so ``echo cmd | pvhvm console NAME`` shows the command's output.
A Unix socket is attached only when its peer is this uid (SO_PEERCRED, pvhvm/private.py):
what is typed at a console (passwords) never goes to another user's socket (issue 18).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

from pvhvm.config.values import ChardevKind, is_ipv6, parse_chardev
from pvhvm.errors import DomainError, ForeignPeerError, SpecError
from pvhvm.private import open_private, stranger_on, who
from pvhvm.runtime.state import DomainRecord

ESCAPE = b"\x1d"  # ^]
LINGER = 1.0
CONNECT_TIMEOUT = 5.0


def console_address(record: DomainRecord) -> tuple[int, str | tuple[str, int]]:
    """(address family, address) of the domain's serial console."""
    spec = record.console
    if not spec:
        raise DomainError(f"domain {record.name!r} has no serial console")
    if spec.startswith(("unix:", "tcp:")):
        try:
            chardev = parse_chardev(spec)  # the plan's own spelling, typed (config.values)
        except SpecError as err:
            raise DomainError(f"domain {record.name!r}: {err}") from err
        if chardev.kind is ChardevKind.UNIX and chardev.path is not None:
            return socket.AF_UNIX, chardev.path
        if chardev.host is not None and chardev.port is not None:
            family = socket.AF_INET6 if is_ipv6(chardev.host) else socket.AF_INET
            return family, (chardev.host, chardev.port)
    if spec.startswith("/"):
        return socket.AF_UNIX, spec
    raise DomainError(
        f"domain {record.name!r} has serial = {spec!r}; pvhvm console attaches to the default "
        "socket, unix:PATH and tcp:HOST:PORT serials only"
    )


def connect(record: DomainRecord) -> socket.socket:
    family, address = console_address(record)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(address)
    except OSError as err:
        sock.close()
        where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
        raise DomainError(f"console of domain {record.name!r} at {where}: {err}") from err
    sock.settimeout(None)
    if family == socket.AF_UNIX:
        stranger = stranger_on(sock)
        if stranger is not None:
            raise ForeignPeerError(
                f"another user ({who(stranger)}) listens on the console socket {address} of "
                f"domain {record.name!r}; nothing was sent to it. Stop that user's process, "
                "remove the socket and keep its directory yours and 0700")
    return sock


@contextlib.contextmanager
def _only_console(record: DomainRecord, lock: Path | None) -> Iterator[None]:
    """Hold ``lock`` (flock) while attached. QEMU serves one console client at a time and
    leaves the next one waiting, unanswered, with its typing queued for later: a second
    ``pvhvm console`` is refused instead."""
    if lock is None:
        yield
        return
    try:
        fd = open_private(lock, os.O_RDWR)
    except FileNotFoundError:
        raise DomainError(f"no domain named {record.name!r}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DomainError(
                f"the console of domain {record.name!r} is attached elsewhere (one at a time; "
                "^] detaches the other)"
            ) from None
        yield
    finally:
        os.close(fd)


def attach(
    record: DomainRecord, stdin_fd: int = 0, stdout_fd: int = 1, lock: Path | None = None
) -> None:
    """Copy the console to ``stdout_fd`` and ``stdin_fd`` to the console until ``^]``;
    ``lock`` (the domain's console lock) refuses a second attach."""
    with _only_console(record, lock):
        _attach(record, stdin_fd, stdout_fd)


def _attach(record: DomainRecord, stdin_fd: int, stdout_fd: int) -> None:
    sock = connect(record)
    saved = None
    if os.isatty(stdin_fd):
        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
    try:
        _relay(sock, stdin_fd, stdout_fd)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        sock.close()


def _relay(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    stdin_open = True
    while True:
        watched: list[int] = [sock.fileno()] + ([stdin_fd] if stdin_open else [])
        ready, _, _ = select.select(watched, [], [], None if stdin_open else LINGER)
        if not ready:
            return  # input ended and the guest has been quiet: detach
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return  # QEMU closed the console (the domain is gone)
            try:
                _write_all(stdout_fd, data)
            except BrokenPipeError:
                return  # nobody reads the output any more
        if stdin_open and stdin_fd in ready:
            data = os.read(stdin_fd, 4096)
            if not data:
                stdin_open = False
                continue
            before, escape, _ = data.partition(ESCAPE)
            if before:
                sock.sendall(before)
            if escape:
                return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

