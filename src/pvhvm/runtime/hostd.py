"""The host supervisor: one process per state directory that supervises all its domains.

``python -m pvhvm.runtime.hostd --state-dir DIR`` is started by the first pvhvm command that
needs it (``runtime/hostctl.py``), in a session of its own, and goes away
``PVHVM_HOSTD_LINGER`` seconds (default 60) after its last domain has. Each domain is one
:class:`~pvhvm.runtime.supervisor.Supervisor` task in its event loop, with what a per-domain
supervisor process had: the domain's owner lock (handed over by its creator), its QEMU as a
child in a session of its own (so that nothing done to this process reaches the guests), its
QMP connection and its log file (``logs/supervisor-NAME.log``).

Requests (``hostctl``): ``start`` and ``adopt`` a domain, ``stop`` (destroy) one, ``ping``.
Only the uid this daemon runs as (or root) may ask (SO_PEERCRED, pvhvm/private.py; the
client checks this daemon the same way). It runs under umask 077, so its logs and its
QEMUs' sockets and logs are the user's alone (issue 18). SIGTERM or SIGINT make it exit at once
without touching a guest, as if killed: the domains' owner locks come free and the next pvhvm
command adopts them into a new host supervisor, which acts on what happened meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import IO, Any

from pvhvm.errors import DomainError, ForeignPeerError
from pvhvm.private import foreign_peer, open_private, private_dir
from pvhvm.runtime import hostctl, logs
from pvhvm.runtime.state import StateStore
from pvhvm.runtime.supervisor import Incoming, Supervisor

log = logging.getLogger("pvhvm.hostd")
#: this daemon's stderr, in the state directory's logs/ (runtime/hostctl.py opens it)
HOSTD_LOG = "hostd.log"

#: the domain whose supervisor is logging (each supervisor task sets it for itself)
current_domain: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_domain", default=None)

FORMAT = "%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s"


class DomainLogs(logging.Handler):
    """Each supervisor's lines go to its own domain's log; the daemon's own to stderr."""

    def __init__(self, store: StateStore) -> None:
        super().__init__()
        self.store = store
        self.files: dict[str, IO[str]] = {}
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        name = current_domain.get()
        try:
            line = self.format(record) + "\n"
            if name is None:
                sys.stderr.write(line)
                sys.stderr.flush()
                return
            out = self.files.get(name)
            if out is None:
                path = self.store.paths(name).supervisor_log
                private_dir(path.parent)
                out = self.files[name] = os.fdopen(open_private(path), "a", encoding="utf-8")
            out.write(line)
            out.flush()
        except Exception:  # a log that cannot be written must not take a domain down
            self.handleError(record)

    def done(self, name: str) -> None:
        out = self.files.pop(name, None)
        if out is not None:
            out.close()


class HostDaemon:
    """The request socket and the supervisor tasks of one state directory."""

    def __init__(self, store: StateStore, logs: DomainLogs, linger: float) -> None:
        self.store = store
        self.logs = logs
        self.linger = linger
        self.domains: dict[str, tuple[Supervisor, asyncio.Task[None]]] = {}
        self.clients: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        #: (device, inode) of the socket file it listens on, removed when it leaves
        self.socket_file: tuple[int, int] | None = None
        self.finished: asyncio.Future[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- the socket -----------------------------------------------------------------------

    def listen(self) -> None:
        """Listen on the state directory's address (its host supervisor lock is held, so a
        socket file already there is one a killed supervisor left behind)."""
        where = hostctl.address(self.store.root)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK)
        try:
            if isinstance(where, str):
                _remove_stale_socket(where)
            sock.bind(where)
            sock.listen(128)
            if isinstance(where, str):
                info = os.lstat(where)
                self.socket_file = (info.st_dev, info.st_ino)
        except BaseException:
            sock.close()
            raise
        self.listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # EMFILE and the like: refuse this one, keep serving
            log.warning("cannot accept a request: %s", err)
            return
        if foreign_peer(conn, also=(0,)) is not None:
            conn.close()
            return
        conn.setblocking(False)
        self.clients.add(conn)
        asyncio.get_running_loop().add_reader(conn.fileno(), self._readable, conn)

    def _readable(self, conn: socket.socket) -> None:
        try:
            data, fds, _flags, _ = socket.recv_fds(conn, hostctl.MAX_MESSAGE, 8)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:
            os.set_inheritable(fd, False)
        if not data:
            for fd in fds:
                os.close(fd)
            self._hang_up(conn)
            return
        try:
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            answer = self.handle(message, fds)
        except (ValueError, KeyError, TypeError, DomainError) as err:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            answer = {"error": f"bad request: {err}"}
        with contextlib.suppress(OSError):
            conn.send(json.dumps(answer).encode())

    def _hang_up(self, conn: socket.socket) -> None:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        self.clients.discard(conn)
        conn.close()
        self._idle_check()

    # --- requests -------------------------------------------------------------------------

    def handle(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Answer one request; every fd in ``fds`` is taken (kept or closed)."""
        verb = message.get("verb")
        if verb == "ping":
            for fd in fds:
                os.close(fd)
            return {"pid": os.getpid(), "domains": sorted(self.domains)}
        if self.finished is None or self.finished.done():
            for fd in fds:
                os.close(fd)
            return {"error": "exiting"}
        name = message["name"]
        if not isinstance(name, str):
            raise TypeError("name is not a string")
        self.store.paths(name)  # DomainError for a name no domain can have
        if verb == "stop":
            for fd in fds:
                os.close(fd)
            entry = self.domains.get(name)
            if entry is None:
                return {"stopping": False}
            entry[0].request_stop()
            return {"stopping": True}
        if verb in ("start", "adopt"):
            return self._supervise(name, verb == "adopt", message, fds)
        for fd in fds:
            os.close(fd)
        return {"error": f"bad request: unknown verb {verb!r}"}

    def _supervise(self, name: str, adopt: bool, message: dict[str, Any],
                   fds: list[int]) -> dict[str, Any]:
        wanted = 1 + bool(message.get("ready")) + 2 * bool(message.get("incoming"))
        if len(fds) != wanted or name in self.domains:
            for fd in fds:
                os.close(fd)
            if name in self.domains:  # its lock is held here, so nobody else can hand it
                return {"error": f"domain {name!r} is already supervised"}
            return {"error": f"bad request: {len(fds)} descriptors, {wanted} expected"}
        owner_fd, rest = fds[0], fds[1:]
        ready_fd = rest.pop(0) if message.get("ready") else None
        incoming = Incoming(stream_fd=rest[0], commit_fd=rest[1]) if rest else None
        supervisor = Supervisor(self.store, name, ready_fd, adopt=adopt, incoming=incoming)
        task = asyncio.get_running_loop().create_task(self._run(name, supervisor, owner_fd))
        self.domains[name] = (supervisor, task)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        return {"pid": os.getpid()}

    async def _run(self, name: str, supervisor: Supervisor, owner_fd: int) -> None:
        current_domain.set(name)
        try:
            await supervisor.run()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # one domain's failure must not take the others down
            log.exception("supervisor failed")
            supervisor.tell_creator(f"error: supervisor failed: {err}")
            if supervisor.proc is not None and supervisor.proc.returncode is None:
                supervisor.proc.kill()
            self.store.release(name)
        finally:
            os.close(owner_fd)  # after the release: the domain is gone before it is free
            self.domains.pop(name, None)
            self.logs.done(name)
            self._idle_check()

    # --- life -----------------------------------------------------------------------------

    def _idle_check(self) -> None:
        if self.domains or self.clients or self.idle_timer is not None:
            return
        self.idle_timer = asyncio.get_running_loop().call_later(self.linger, self._idle_end)

    def _idle_end(self) -> None:
        self.idle_timer = None
        if self.domains or self.clients:
            return
        log.info("no domain left: exiting")
        self.close_listener()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def close_listener(self) -> None:
        if self.listener is not None:
            asyncio.get_running_loop().remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
        where = hostctl.address(self.store.root)
        if self.socket_file is not None and isinstance(where, str):
            with contextlib.suppress(OSError):
                info = os.lstat(where)
                if (info.st_dev, info.st_ino) == self.socket_file:
                    os.unlink(where)
            self.socket_file = None

    def killed(self, signum: int) -> None:
        """SIGTERM/SIGINT: leave at once, guests untouched (the next command adopts them)."""
        log.warning("signal %d: exiting, leaving %d domain(s) to be adopted", signum,
                    len(self.domains))
        logging.shutdown()
        os._exit(0)

    async def main(self, ready_fd: int | None) -> int:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.killed, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.listen()
        log.info("host supervisor %d for %s", os.getpid(), self.store.root)
        _tell(ready_fd, "ready")
        self._idle_check()
        rotation = asyncio.create_task(self.rotate_own_log())
        try:
            await self.finished
        finally:
            rotation.cancel()
        return 0

    async def rotate_own_log(self) -> None:
        """Rotate ``logs/hostd.log`` (this daemon's stderr, O_APPEND) by size, every
        ROTATE_INTERVAL seconds (runtime/logs.py); each domain's supervisor rotates its own."""
        path = self.store.root / "logs" / HOSTD_LOG
        while True:
            await asyncio.sleep(logs.ROTATE_INTERVAL)
            try:
                logs.rotate_open(path)
            except OSError as err:
                log.warning("cannot rotate %s: %s", path, err)


def _remove_stale_socket(path: str) -> None:
    """Remove the socket file a supervisor that was killed left at ``path``; anything that
    is not a socket stays, and binding over it fails."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _tell(fd: int | None, word: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, word.encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def _claim(root: Path, ready_fd: int | None, timeout: float = 15.0) -> int | None:
    """The host supervisor's lock on ``root`` (its fd), or None when another one serves it.

    A daemon that is leaving holds the lock until it has exited: wait for it."""
    fd = os.open(root / "hostd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        try:
            serving = hostctl.running(root) is not None
        except ForeignPeerError as err:
            os.close(fd)
            _tell(ready_fd, f"error: {err}")
            return None
        if serving:
            os.close(fd)
            _tell(ready_fd, "running")
            return None
        if time.monotonic() > deadline:
            os.close(fd)
            _tell(ready_fd, "error: another host supervisor holds its lock and does not answer")
            return None
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvhvm-hostd")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    store = StateStore(args.state_dir.absolute())
    os.chdir("/")  # hold no directory of the command that started it
    os.umask(0o077)  # its logs, and its QEMUs' sockets and logs: the user's alone
    try:
        store.make_private()  # an older pvhvm's 0755 directories are tightened here too
    except DomainError as err:
        _tell(args.ready_fd, f"error: {err}")
        return 1
    logs = DomainLogs(store)
    logging.basicConfig(level=logging.INFO, handlers=[logs])
    try:
        linger = hostctl.linger()
    except hostctl.HostdError as err:
        _tell(args.ready_fd, f"error: {err}")
        return 1
    lock_fd = _claim(store.root, args.ready_fd)
    if lock_fd is None:
        return 0
    daemon = HostDaemon(store, logs, linger)
    try:
        return asyncio.run(daemon.main(args.ready_fd))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            _tell(args.ready_fd, "running")
            return 0
        _tell(args.ready_fd, f"error: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
