"""XenStore clients, synchronous and asyncio, sharing the `pvhvm.xenstore.wire` codec.

Both find the daemon as libxenstore does (`default_socket_path`): ``$XENSTORED_PATH``,
else ``$XENSTORED_RUNDIR/socket``, else ``/var/run/xenstored/socket``, and talk to it only
when it runs as root or as this uid (SO_PEERCRED, pvhvm/private.py): a socket another user
bound there gets no request (issue 18).

Paths are ``str``; values are ``bytes`` (``str`` is accepted for writing and encoded as
UTF-8). Every failed request raises `XenStoreErrnoError` with the errno name of the
XS_ERROR reply; a transaction whose commit answers EAGAIN raises
`XenStoreConflictError`, which `run_transaction` retries::

    with XenStoreClient() as xs:
        def create(t: Transaction) -> None:
            t.write("/local/domain/0/backend/vbd/5/768/state", "1")
            t.set_perms("/local/domain/0/backend/vbd/5/768", ["n0", "r5"])
        xs.run_transaction(create)

Watch events that arrive while waiting for a reply are kept and returned in order by
`XenStoreClient.read_watch` (or `AsyncXenStoreClient.read_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from pvhvm.private import foreign_peer, who
from pvhvm.xenstore.errors import (
    XenStoreConflictError,
    XenStoreConnectionError,
    XenStoreErrnoError,
)
from pvhvm.xenstore.wire import (
    Op,
    Packet,
    Parser,
    Permission,
    encode,
    join_strings,
    parse_error_payload,
    parse_permissions,
    permissions_payload,
    split_strings,
)

T = TypeVar("T")

#: XEN_RUN_STORED, libxenstore's default run directory.
DEFAULT_RUNDIR = "/var/run/xenstored"
#: How often run_transaction tries before giving up on EAGAIN.
DEFAULT_ATTEMPTS = 100


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """xs_daemon_socket(): ``$XENSTORED_PATH``, ``$XENSTORED_RUNDIR/socket`` or the default."""
    env = os.environ if environ is None else environ
    explicit = env.get("XENSTORED_PATH")
    if explicit:
        return explicit
    return os.path.join(env.get("XENSTORED_RUNDIR") or DEFAULT_RUNDIR, "socket")


def _check_peer(sock: socket.socket, path: str) -> None:
    """XenStoreConnectionError unless the daemon at ``path`` runs as root or as this uid
    (checked before the first request is sent)."""
    stranger = foreign_peer(sock, also=(0,))
    if stranger is not None:
        raise XenStoreConnectionError(
            f"another user ({who(stranger)}) listens on the XenStore socket {path}, where "
            "xenstored (root) or your own daemon should; nothing was sent to it. Stop that "
            "process or point XENSTORED_PATH at your daemon's socket")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A WATCH_EVENT: the path that changed and the watch's token (xenstore.txt)."""

    path: str
    token: str


PermissionLike = Permission | str


def _path(path: str) -> bytes:
    return path.encode() + b"\0"


def _value(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _perms(perms: Sequence[PermissionLike]) -> bytes:
    if not perms:
        raise ValueError("a permission list needs at least the owner entry")
    parsed = [p if isinstance(p, Permission) else Permission.parse(p) for p in perms]
    return permissions_payload(parsed)


def _strings(payload: bytes) -> list[str]:
    return [s.decode() for s in split_strings(payload)]


def _first(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode()


def _event(packet: Packet) -> WatchEvent:
    parts = packet.payload.split(b"\0")
    token = parts[1].decode() if len(parts) > 1 else ""
    return WatchEvent(parts[0].decode(), token)


def _check(packet: Packet, what: str) -> bytes:
    if packet.op == Op.ERROR:
        raise XenStoreErrnoError.create(parse_error_payload(packet.payload), path=what or None)
    return packet.payload


class _SyncOps:
    """The node operations, for a client (tx 0) or a transaction."""

    def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        raise NotImplementedError

    def read(self, path: str) -> bytes:
        """READ: the value at ``path``."""
        return self._call(Op.READ, _path(path), path)

    def write(self, path: str, value: bytes | str) -> None:
        """WRITE: set the value, creating missing parents."""
        self._call(Op.WRITE, path.encode() + b"\0" + _value(value), path)

    def mkdir(self, path: str) -> None:
        """MKDIR: make sure ``path`` exists."""
        self._call(Op.MKDIR, _path(path), path)

    def rm(self, path: str) -> None:
        """RM: remove ``path`` and its subtree (no error if only it is missing)."""
        self._call(Op.RM, _path(path), path)

    def directory(self, path: str) -> list[str]:
        """DIRECTORY: the children's names."""
        return _strings(self._call(Op.DIRECTORY, _path(path), path))

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (READ answers anything but ENOENT)."""
        try:
            self.read(path)
        except XenStoreErrnoError as err:
            if err.errno_name == "ENOENT":
                return False
            raise
        return True

    def get_perms(self, path: str) -> list[Permission]:
        """GET_PERMS: the permission list, owner first."""
        return list(parse_permissions(split_strings(self._call(Op.GET_PERMS, _path(path), path))))

    def set_perms(self, path: str, perms: Sequence[PermissionLike]) -> None:
        """SET_PERMS: e.g. ``["n5", "r0"]`` or `Permission` values; owner first."""
        self._call(Op.SET_PERMS, _path(path) + _perms(perms), path)


class Transaction(_SyncOps):
    """An open transaction of a `XenStoreClient`; node operations run inside it."""

    def __init__(self, client: XenStoreClient, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id
        self.open = True

    def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        return self.client._request(op, payload, tx_id=self.tx_id, what=what)

    def commit(self) -> None:
        """TRANSACTION_END T; raises XenStoreConflictError on EAGAIN."""
        self.open = False
        self.client.transaction_end(self.tx_id, commit=True)

    def abort(self) -> None:
        """TRANSACTION_END F."""
        self.open = False
        self.client.transaction_end(self.tx_id, commit=False)


class XenStoreClient(_SyncOps):
    """A blocking client on the daemon's Unix socket. Thread-safe; use as a context
    manager or call `close`."""

    def __init__(self, socket_path: str | os.PathLike[str] | None = None, *,
                 timeout: float | None = 30.0) -> None:
        self.socket_path = os.fspath(socket_path) if socket_path is not None \
            else default_socket_path()
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(self.socket_path)
            _check_peer(self._sock, self.socket_path)
        except OSError as err:
            self._sock.close()
            raise XenStoreConnectionError(
                f"cannot connect to xenstored at {self.socket_path}: {err}") from err
        except BaseException:
            self._sock.close()
            raise
        self._parser = Parser()
        self._pending: deque[Packet] = deque()
        self._events: deque[WatchEvent] = deque()
        self._lock = threading.RLock()
        self._req_id = 0

    # --- transport ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (the daemon drops its watches and transactions)."""
        self._sock.close()

    def __enter__(self) -> XenStoreClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _receive(self, timeout: float | None) -> bool:
        """Read once from the socket into the queues; False on timeout."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return False
        except OSError as err:
            raise XenStoreConnectionError(f"xenstored connection failed: {err}") from err
        if not data:
            raise XenStoreConnectionError("xenstored closed the connection")
        for packet in self._parser.feed(data):
            if packet.op == Op.WATCH_EVENT:
                self._events.append(_event(packet))
            else:
                self._pending.append(packet)
        return True

    def _request(self, op: Op, payload: bytes, *, tx_id: int = 0, what: str = "") -> bytes:
        with self._lock:
            self._req_id = (self._req_id + 1) & 0xFFFFFFFF
            req_id = self._req_id
            try:
                self._sock.sendall(encode(op, payload, req_id=req_id, tx_id=tx_id))
            except OSError as err:
                raise XenStoreConnectionError(f"xenstored connection failed: {err}") from err
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while True:
                while self._pending:
                    packet = self._pending.popleft()
                    if packet.req_id == req_id:
                        return _check(packet, what)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._receive(remaining):
                    raise XenStoreConnectionError(f"no reply from xenstored to {op.name}")

    def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        return self._request(op, payload, what=what)

    # --- watches -----------------------------------------------------------------------
    def watch(self, path: str, token: str) -> None:
        """WATCH: events for ``path`` and its subtree, the first one straight away."""
        self._request(Op.WATCH, join_strings(path, token), what=path)

    def unwatch(self, path: str, token: str) -> None:
        """UNWATCH."""
        self._request(Op.UNWATCH, join_strings(path, token), what=path)

    def reset_watches(self) -> None:
        """RESET_WATCHES: drop all watches and transactions of this connection."""
        self._request(Op.RESET_WATCHES, b"")

    def read_watch(self, timeout: float | None = None) -> WatchEvent | None:
        """The next watch event; None if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._events:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if remaining == 0.0 or not self._receive(remaining):
                    return None
            return self._events.popleft()

    # --- transactions --------------------------------------------------------------------
    def transaction_start(self) -> int:
        """TRANSACTION_START: a new transaction id."""
        return int(_first(self._request(Op.TRANSACTION_START, b"\0")))

    def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        """TRANSACTION_END: commit (T) or abort (F); XenStoreConflictError on EAGAIN."""
        self._request(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id=tx_id)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One attempt: commit on normal exit (XenStoreConflictError on EAGAIN), abort on
        an exception. `run_transaction` retries conflicts for you."""
        t = Transaction(self, self.transaction_start())
        try:
            yield t
        except BaseException:
            if t.open:
                with contextlib.suppress(XenStoreErrnoError, XenStoreConnectionError):
                    t.abort()
            raise
        if t.open:
            t.commit()

    def run_transaction(self, body: Callable[[Transaction], T], *,
                        attempts: int = DEFAULT_ATTEMPTS) -> T:
        """Run ``body(t)`` in a transaction and commit, again from the start on EAGAIN
        (``body`` may run several times). Returns what the committed run returned."""
        for attempt in range(attempts):
            try:
                with self.transaction() as t:
                    result = body(t)
                return result
            except XenStoreConflictError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # --- domains -----------------------------------------------------------------------
    def introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        """INTRODUCE (dom0 only)."""
        self._request(Op.INTRODUCE, join_strings(str(domid), str(gfn), str(evtchn)))

    def release(self, domid: int) -> None:
        """RELEASE (dom0 only): the domain's nodes go, @releaseDomain fires."""
        self._request(Op.RELEASE, join_strings(str(domid)))

    def resume(self, domid: int) -> None:
        """RESUME (dom0 only)."""
        self._request(Op.RESUME, join_strings(str(domid)))

    def set_target(self, domid: int, target: int) -> None:
        """SET_TARGET (dom0 only): ``domid`` acts with ``target``'s rights."""
        self._request(Op.SET_TARGET, join_strings(str(domid), str(target)))

    def get_domain_path(self, domid: int) -> str:
        """GET_DOMAIN_PATH: ``/local/domain/<domid>``."""
        return _first(self._request(Op.GET_DOMAIN_PATH, join_strings(str(domid))))

    def is_domain_introduced(self, domid: int) -> bool:
        """IS_DOMAIN_INTRODUCED (dom0 only)."""
        return _first(self._request(Op.IS_DOMAIN_INTRODUCED, join_strings(str(domid)))) == "T"


class _AsyncOps:
    """The node operations, for an asyncio client (tx 0) or a transaction."""

    async def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        raise NotImplementedError

    async def read(self, path: str) -> bytes:
        """READ: the value at ``path``."""
        return await self._call(Op.READ, _path(path), path)

    async def write(self, path: str, value: bytes | str) -> None:
        """WRITE."""
        await self._call(Op.WRITE, path.encode() + b"\0" + _value(value), path)

    async def mkdir(self, path: str) -> None:
        """MKDIR."""
        await self._call(Op.MKDIR, _path(path), path)

    async def rm(self, path: str) -> None:
        """RM."""
        await self._call(Op.RM, _path(path), path)

    async def directory(self, path: str) -> list[str]:
        """DIRECTORY."""
        return _strings(await self._call(Op.DIRECTORY, _path(path), path))

    async def get_perms(self, path: str) -> list[Permission]:
        """GET_PERMS."""
        payload = await self._call(Op.GET_PERMS, _path(path), path)
        return list(parse_permissions(split_strings(payload)))

    async def set_perms(self, path: str, perms: Sequence[PermissionLike]) -> None:
        """SET_PERMS."""
        await self._call(Op.SET_PERMS, _path(path) + _perms(perms), path)



class AsyncTransaction(_AsyncOps):
    """An open transaction of an `AsyncXenStoreClient`."""

    def __init__(self, client: AsyncXenStoreClient, tx_id: int) -> None:
        self.client = client
        self.tx_id = tx_id
        self.open = True

    async def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        return await self.client._request(op, payload, tx_id=self.tx_id, what=what)

    async def commit(self) -> None:
        """TRANSACTION_END T; raises XenStoreConflictError on EAGAIN."""
        self.open = False
        await self.client.transaction_end(self.tx_id, commit=True)

    async def abort(self) -> None:
        """TRANSACTION_END F."""
        self.open = False
        await self.client.transaction_end(self.tx_id, commit=False)


class AsyncXenStoreClient(_AsyncOps):
    """An asyncio client: ``client = await AsyncXenStoreClient.connect(path)``.

    Requests may be issued concurrently from several tasks; replies are matched by
    req_id. Node operations are those of `AsyncTransaction`, outside any transaction.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 socket_path: str) -> None:
        self.socket_path = socket_path
        self._reader = reader
        self._writer = writer
        self._req_id = 0
        self._waiting: dict[int, asyncio.Future[Packet]] = {}
        self._events: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._closed: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, socket_path: str | os.PathLike[str] | None = None
                      ) -> AsyncXenStoreClient:
        """Connect to the daemon (default: `default_socket_path`)."""
        path = os.fspath(socket_path) if socket_path is not None else default_socket_path()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as err:
            raise XenStoreConnectionError(f"cannot connect to xenstored at {path}: {err}") \
                from err
        try:
            _check_peer(writer.get_extra_info("socket"), path)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, path)

    async def close(self) -> None:
        """Close the connection."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AsyncXenStoreClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        parser = Parser()
        error: BaseException = XenStoreConnectionError("xenstored closed the connection")
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for packet in parser.feed(data):
                    if packet.op == Op.WATCH_EVENT:
                        self._events.put_nowait(_event(packet))
                        continue
                    future = self._waiting.pop(packet.req_id, None)
                    if future is not None and not future.done():
                        future.set_result(packet)
        except asyncio.CancelledError:
            error = XenStoreConnectionError("client closed")
            raise
        except OSError as err:
            error = XenStoreConnectionError(f"xenstored connection failed: {err}")
        finally:
            self._closed = error
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error)
            self._waiting.clear()
            self._events.put_nowait(None)

    async def _request(self, op: Op, payload: bytes, *, tx_id: int = 0, what: str = "") -> bytes:
        if self._closed is not None:
            raise XenStoreConnectionError(str(self._closed))
        self._req_id = (self._req_id + 1) & 0xFFFFFFFF
        req_id = self._req_id
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = future
        self._writer.write(encode(op, payload, req_id=req_id, tx_id=tx_id))
        await self._writer.drain()
        return _check(await future, what)

    async def _call(self, op: Op, payload: bytes, what: str = "") -> bytes:
        return await self._request(op, payload, what=what)

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        try:
            await self.read(path)
        except XenStoreErrnoError as err:
            if err.errno_name == "ENOENT":
                return False
            raise
        return True

    async def watch(self, path: str, token: str) -> None:
        """WATCH (the first event comes straight away)."""
        await self._request(Op.WATCH, join_strings(path, token), what=path)

    async def unwatch(self, path: str, token: str) -> None:
        """UNWATCH."""
        await self._request(Op.UNWATCH, join_strings(path, token), what=path)

    async def reset_watches(self) -> None:
        """RESET_WATCHES."""
        await self._request(Op.RESET_WATCHES, b"")

    async def read_watch(self, timeout: float | None = None) -> WatchEvent | None:
        """The next watch event; None on timeout or when the connection is gone."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None
        if event is None:
            self._events.put_nowait(None)
        return event

    async def watch_events(self) -> AsyncIterator[WatchEvent]:
        """Watch events until the connection closes."""
        while True:
            event = await self.read_watch()
            if event is None:
                return
            yield event

    async def transaction_start(self) -> int:
        """TRANSACTION_START."""
        return int(_first(await self._request(Op.TRANSACTION_START, b"\0")))

    async def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        """TRANSACTION_END; XenStoreConflictError on EAGAIN."""
        await self._request(Op.TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id=tx_id)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTransaction]:
        """One attempt: commit on normal exit, abort on an exception."""
        t = AsyncTransaction(self, await self.transaction_start())
        try:
            yield t
        except BaseException:
            if t.open:
                with contextlib.suppress(XenStoreErrnoError, XenStoreConnectionError):
                    await t.abort()
            raise
        if t.open:
            await t.commit()

    async def run_transaction(self, body: Callable[[AsyncTransaction], Awaitable[T]], *,
                              attempts: int = DEFAULT_ATTEMPTS) -> T:
        """Run ``await body(t)`` in a transaction, again from the start on EAGAIN."""
        for attempt in range(attempts):
            try:
                async with self.transaction() as t:
                    result = await body(t)
                return result
            except XenStoreConflictError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    async def introduce(self, domid: int, gfn: int, evtchn: int) -> None:
        """INTRODUCE (dom0 only)."""
        await self._request(Op.INTRODUCE, join_strings(str(domid), str(gfn), str(evtchn)))

    async def release(self, domid: int) -> None:
        """RELEASE (dom0 only)."""
        await self._request(Op.RELEASE, join_strings(str(domid)))

    async def resume(self, domid: int) -> None:
        """RESUME (dom0 only)."""
        await self._request(Op.RESUME, join_strings(str(domid)))

    async def set_target(self, domid: int, target: int) -> None:
        """SET_TARGET (dom0 only)."""
        await self._request(Op.SET_TARGET, join_strings(str(domid), str(target)))

    async def get_domain_path(self, domid: int) -> str:
        """GET_DOMAIN_PATH."""
        return _first(await self._request(Op.GET_DOMAIN_PATH, join_strings(str(domid))))

    async def is_domain_introduced(self, domid: int) -> bool:
        """IS_DOMAIN_INTRODUCED (dom0 only)."""
        payload = await self._request(Op.IS_DOMAIN_INTRODUCED, join_strings(str(domid)))
        return _first(payload) == "T"
