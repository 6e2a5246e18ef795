"""The XenStore daemon on Unix sockets: a thin asyncio adapter around `server.reply`.

Each connection has its own `wire.Parser`; requests are answered in order as their
bytes arrive, so a client that sends half a header only holds its own parser. All
connections read into one buffer of the daemon's, and the replies to one read go out in
one write (profiled: see benchmarks/xenstore/README.md). A client that does not read
its replies has its requests held once its output buffer passes a high-water mark
(the other clients carry on), and watch events for it are dropped, not built, once its
buffer passes a hard limit -- as xenstored drops events over a domain's memory quota
(see `_ClientProtocol`). A header announcing more than XENSTORE_PAYLOAD_MAX bytes drops
that connection only (xenstore.txt), after the complete requests before it in the same
read are answered. Every log line a client can cause goes
through `LogLimiter`: at most one line per kind every LOG_INTERVAL seconds.

With ``domain_socket_dir`` set, every introduced domain also gets a socket
``<dir>/domain-<domid>`` whose clients act as that domain (as through its ring page):
unprivileged, relative paths under ``/local/domain/<domid>``. It goes away on RELEASE.

Helpers: `run_daemon` (foreground, until SIGTERM/SIGINT), `spawn_daemon` (subprocess)
and `run_in_thread` (in-process), the last two as context managers that stop the daemon
and remove its socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from pvhvm.hostfs import SocketPath, socket_path_state
from pvhvm.xenstore.errors import XenStoreConnectionError, XenStoreProtocolError
from pvhvm.xenstore.quota import Quota, is_privileged
from pvhvm.xenstore.server import (
    Close,
    Connection,
    DomainIntroduced,
    DomainReleased,
    Effect,
    Send,
    XenStore,
    reply,
)
from pvhvm.xenstore.wire import HEADER, Op, Packet, Parser

log = logging.getLogger(__name__)

#: Stop taking a client's requests while this much output waits for it.
OUTPUT_HIGH_WATER = 256 * 1024
#: Drop watch events for a Unix-socket client with this much output waiting.
OUTPUT_HARD_LIMIT = 4 * 1024 * 1024
#: At most one log line per this many seconds for each kind of client-caused trouble.
LOG_INTERVAL = 10.0
#: sizeof(sockaddr_un.sun_path) - 1 on Linux: the longest path a Unix socket can have.
SUN_PATH_MAX = 107
#: Bytes read from a client at once (into the daemon's one read buffer).
READ_SIZE = 64 * 1024
#: A batch's output goes to the transport once it is this large (and at its end).
BATCH_MAX = 64 * 1024
#: How often a stalled client's output is looked at when no transport callback will come.
_DRAIN_POLL = 0.05
#: Op.WATCH_EVENT as a plain int (the hot path compares it once per effect)
_WATCH_EVENT = int(Op.WATCH_EVENT)


class LogLimiter:
    """Log lines a client can cause, at most one per ``interval`` for each kind: the
    first at once, then one summary with the count since the last line."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        #: kind -> [count not yet logged, time of the last line]
        self._state: dict[str, list[float]] = {}
        #: lines written, per kind (for tests and the benchmark)
        self.lines: dict[str, int] = {}

    def note(self, kind: str, count: int, message: str) -> None:
        """Count ``count`` occurrences of ``kind``; log ``message`` (``{count}`` is the
        number since the last line) if the interval has passed."""
        state = self._state.setdefault(kind, [0, float("-inf")])
        state[0] += count
        now = self.clock()
        if now - state[1] < self.interval:
            return
        self.logger.warning(message.format(count=int(state[0])))
        self.lines[kind] = self.lines.get(kind, 0) + 1
        state[0] = 0
        state[1] = now


def _braces_escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class _ClientProtocol(asyncio.BufferedProtocol):
    """One client connection.

    Requests are answered in order while the client's output is under its limit: over
    OUTPUT_HIGH_WATER (or, for an unprivileged domain, once ``outstanding`` replies wait
    unread) the parsed requests wait and reading stops, so the daemon holds at most one
    read's worth of requests for a client that does not read. Watch events for it are
    not built at all while it is ``stalled`` (over OUTPUT_HARD_LIMIT, or over its
    domain's memory quota); they are counted and logged once per interval. This is the
    choice made here: drop, as C xenstored drops events over a domain's memory quota and
    after its watch-event timeout, but keep the connection, which gets every reply.
    """

    def __init__(self, daemon: XenStoreDaemon, domid: int, as_domain: bool) -> None:
        self.daemon = daemon
        self.domid = domid
        self.as_domain = as_domain
        self.parser = Parser()
        self.transport: asyncio.Transport | None = None
        self.connection: Connection | None = None
        self.pending: collections.deque[Packet] = collections.deque()
        self.parse_error: XenStoreProtocolError | None = None
        self.reading_paused = False
        self.writing_paused = False
        #: replies queued since the output buffer was last empty (``outstanding``)
        self.queued_replies = 0
        self.unprivileged = as_domain and not is_privileged(domid)
        #: output of the batch under way (`process`): one transport write per batch
        self.out: list[bytes] = []
        self.out_size = 0
        self.batching = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # An unprivileged domain hears when its output is drained, for ``outstanding``.
        transport.set_write_buffer_limits(high=0 if self.unprivileged else OUTPUT_HIGH_WATER)
        name = f"dom{self.domid}" if self.as_domain else f"socket#{id(self):x}"
        self.connection = self.daemon.store.connect(
            self.domid, as_domain=self.as_domain, name=name)
        self.daemon.clients[self.connection] = self

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for all connections: the loop calls recv_into and buffer_updated
        # right after this, before any other connection's callback. (A plain Protocol
        # gets recv(256 KiB), which allocates and frees 256 KiB per read: a send and
        # recv of 30 bytes took 10 µs so here against 0.9 µs with a 64 KiB read.)
        return self.daemon.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        connection = self.connection
        if connection is None or connection.closed:
            return
        packets, error = self.parser.feed_until_error(self.daemon.read_buffer[:nbytes])
        self.pending.extend(packets)
        if error is not None:
            self.parse_error = error
            self.pause_reading()
        self.process()

    def blocked(self) -> bool:
        """Whether the client must read before more of its requests are answered."""
        transport = self.transport
        if transport is None:
            return False
        waiting = transport.get_write_buffer_size() + self.out_size
        if waiting == 0:
            self.queued_replies = 0
            return False
        if self.unprivileged:
            return self.queued_replies >= self.daemon.store.quota.outstanding
        return waiting > OUTPUT_HIGH_WATER

    def process(self) -> None:
        """Answer the waiting requests, as far as the client's output allows; their
        replies (and events for this client) go out in one write at the end."""
        self.batching = True
        try:
            blocked = self._answer_pending()
        finally:
            self.batching = False
            self.flush()
        connection = self.connection
        if blocked or connection is None or connection.closed:
            return
        if self.parse_error is not None:
            self.daemon.log_limiter.note(
                "protocol-error", 1,
                _braces_escaped(f"{connection.name}: {self.parse_error}")
                + "; dropping the connection ({count} dropped since the last such line)")
            self.drop(flush=True)
            return
        self.resume_reading()

    def _answer_pending(self) -> bool:
        """Reply to the pending requests in order; True if the client's output blocked
        them (reading is then paused).

        The hot path of the daemon: a reply to this very client (nearly every effect)
        is encoded and batched here; anything else goes through `carry_out`.
        """
        daemon = self.daemon
        store = daemon.store
        connection = self.connection
        pending = self.pending
        out = self.out
        pack = HEADER.pack
        while pending and connection is not None and not connection.closed:
            if self.out_size > BATCH_MAX:
                self.flush()
            if self.blocked():
                if not out:
                    self.pause_reading()
                    return True
                self.flush()  # the batch may have gone out at once: look again
                continue
            dropped = store.dropped_events
            effects = reply(store, connection, pending.popleft())
            for effect in effects:
                if type(effect) is Send and effect.connection is connection:
                    packet = effect.packet
                    if packet.op != _WATCH_EVENT:
                        # reply() keeps payloads within XENSTORE_PAYLOAD_MAX (E2BIG)
                        data = pack(packet.op, packet.req_id, packet.tx_id,
                                    len(packet.payload)) + packet.payload
                        out.append(data)
                        self.out_size += len(data)
                        self.queued_replies += 1
                        continue
                daemon.carry_out((effect,))
            if store.dropped_events != dropped:
                daemon.log_limiter.note(
                    "dropped-events", store.dropped_events - dropped,
                    "watch events dropped for clients that do not read their socket: "
                    "{count} since the last such line")
        return False

    def flush(self) -> None:
        """Hand the batch's output to the transport, in one write."""
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_size = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused and \
                not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # Requests are held by process() once the output is over its limit.
        self.writing_paused = True

    def resume_writing(self) -> None:
        # The client has read: it gets events again, and its waiting requests are answered.
        self.writing_paused = False
        self.queued_replies = 0
        if self.connection is not None:
            self.connection.stalled = False
        self.process()

    def _stall(self) -> None:
        """Stop building events for this client until its output drains; resume_writing
        says so when the transport was over its high-water mark, else a timer checks."""
        connection = self.connection
        if connection is None or connection.stalled:
            return
        connection.stalled = True
        if not self.writing_paused and self.daemon.loop is not None:
            self.daemon.loop.call_later(_DRAIN_POLL, self._check_drained)

    def _check_drained(self) -> None:
        transport, connection = self.transport, self.connection
        if transport is None or connection is None or connection.closed or \
                not connection.stalled:
            return
        if self.writing_paused:
            return  # resume_writing will come
        if transport.get_write_buffer_size() <= self.event_limit() // 2:
            connection.stalled = False
            self.process()
        elif self.daemon.loop is not None:
            self.daemon.loop.call_later(_DRAIN_POLL, self._check_drained)

    def event_limit(self) -> int:
        """Output bytes over which watch events for this client are dropped."""
        if not self.unprivileged:
            return OUTPUT_HARD_LIMIT
        domain = self.daemon.store.domains.find(self.domid)
        used = domain.memory if domain is not None else 0
        return max(0, self.daemon.store.quota.memory - used)

    def send(self, data: bytes, *, droppable: bool) -> None:
        transport = self.transport
        connection = self.connection
        if transport is None or transport.is_closing() or connection is None:
            return
        if droppable and transport.get_write_buffer_size() + self.out_size + len(data) > \
                self.event_limit():
            self._stall()
            connection.dropped_events += 1
            self.daemon.store.dropped_events += 1
            return
        if not droppable:
            self.queued_replies += 1
        if self.batching:
            self.out.append(data)
            self.out_size += len(data)
        else:
            transport.write(data)

    def drop(self, *, flush: bool = False) -> None:
        """Disconnect; with ``flush`` the replies already queued still go out."""
        if self.connection is not None:
            self.daemon.store.disconnect(self.connection)
        self.pending.clear()
        if self.transport is not None:
            if flush:
                self.flush()
                self.transport.close()
            else:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self.daemon.store.disconnect(self.connection)
            self.daemon.clients.pop(self.connection, None)
        self.pending.clear()


class XenStoreDaemon:
    """The daemon: a `XenStore` served on a Unix socket."""

    def __init__(self, socket_path: str | os.PathLike[str], *, store: XenStore | None = None,
                 quota: Quota | None = None,
                 domain_socket_dir: str | os.PathLike[str] | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.store = store or XenStore(quota)
        self.domain_socket_dir = Path(domain_socket_dir) if domain_socket_dir else None
        self.clients: dict[Connection, _ClientProtocol] = {}
        self.log_limiter = LogLimiter(log)
        #: what every connection reads into (`_ClientProtocol.get_buffer`)
        self.read_buffer = memoryview(bytearray(READ_SIZE))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._domain_servers: dict[int, asyncio.AbstractServer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def domain_socket(self, domid: int) -> Path:
        """Where clients connect to act as ``domid`` (needs ``domain_socket_dir``)."""
        if self.domain_socket_dir is None:
            raise XenStoreConnectionError("the daemon has no domain_socket_dir")
        return self.domain_socket_dir / f"domain-{domid}"

    async def start(self) -> None:
        """Listen on the socket (a stale socket file is replaced; a live one is an error)."""
        self._loop = self.loop = asyncio.get_running_loop()
        size = len(os.fsencode(self.socket_path))
        if size > SUN_PATH_MAX:
            raise XenStoreConnectionError(
                f"socket path {str(self.socket_path)!r} is {size} bytes, over the "
                f"{SUN_PATH_MAX} a Unix socket's path may have; give a shorter one")
        _claim_socket_path(self.socket_path)
        try:
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self._server = await self._loop.create_unix_server(
                lambda: _ClientProtocol(self, 0, False), path=str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            if self.domain_socket_dir is not None:
                self.domain_socket_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if self._server is not None:
                self._server.close()
                self._server = None
                unlink_socket(self.socket_path)
            raise XenStoreConnectionError(
                f"cannot listen on {str(self.socket_path)!r}: {err.strerror or err}") from err
        log.info("xenstored listening on %s", self.socket_path)

    async def stop(self) -> None:
        """Close every connection and listener; remove the sockets."""
        servers = [s for s in (self._server, *self._domain_servers.values()) if s is not None]
        for server in servers:
            server.close()
        for protocol in list(self.clients.values()):
            protocol.drop()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        for domid in list(self._domain_servers):
            unlink_socket(self.domain_socket(domid))
        self._domain_servers.clear()
        self._server = None
        unlink_socket(self.socket_path)

    def carry_out(self, effects: Sequence[Effect]) -> None:
        """Send packets, close connections, open/close domain sockets."""
        for effect in effects:
            if isinstance(effect, Send):
                protocol = self.clients.get(effect.connection)
                if protocol is not None:
                    protocol.send(effect.packet.encode(),
                                  droppable=effect.packet.op == _WATCH_EVENT)
            elif isinstance(effect, Close):
                protocol = self.clients.pop(effect.connection, None)
                if protocol is not None and protocol.transport is not None:
                    protocol.flush()
                    protocol.transport.close()
            elif isinstance(effect, DomainIntroduced):
                if self.domain_socket_dir is not None and self._loop is not None:
                    # Bind now, so the socket exists when the INTRODUCE reply goes out.
                    try:
                        listener = self._bind_domain_socket(effect.domid)
                    except OSError as err:
                        # The domain stays introduced; only its socket is missing.
                        self.log_limiter.note(
                            "domain-socket", 1, _braces_escaped(
                                f"domain {effect.domid}: cannot listen on "
                                f"{self.domain_socket(effect.domid)}: {err}")
                            + " ({count} such failures since the last such line)")
                        continue
                    self._loop.create_task(self._serve_domain_socket(effect.domid, listener))
            elif isinstance(effect, DomainReleased):
                server = self._domain_servers.pop(effect.domid, None)
                if server is not None:
                    server.close()
                    unlink_socket(self.domain_socket(effect.domid))

    def _bind_domain_socket(self, domid: int) -> socket.socket:
        path = self.domain_socket(domid)
        unlink_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        return listener

    async def _serve_domain_socket(self, domid: int, listener: socket.socket) -> None:
        assert self._loop is not None
        server = await self._loop.create_unix_server(
            lambda: _ClientProtocol(self, domid, True), sock=listener)
        if self.store.domains.introduced(domid) is None or self._server is None:
            server.close()  # released (or stopped) while we were opening it
            unlink_socket(self.domain_socket(domid))
            return
        self._domain_servers[domid] = server


def unlink_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket; anything else there (a user's file given as
    ``--socket`` by mistake) is never removed."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def _check_socket_path(path: Path) -> bool:
    """Whether ``path`` holds a stale socket (True) or nothing (False); XenStoreConnectionError
    when a daemon answers on it or it is something other than a socket."""
    state = socket_path_state(path)
    if state is SocketPath.OTHER:
        raise XenStoreConnectionError(
            f"{path} exists and is not a socket; give a new path or remove it yourself"
        )
    if state is SocketPath.LIVE:
        raise XenStoreConnectionError(f"a xenstored already listens on {path}")
    return state is SocketPath.STALE


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket file; refuse if a daemon answers on it, or if the path is
    something other than a socket."""
    if _check_socket_path(path):
        path.unlink()


async def _serve(daemon: XenStoreDaemon, stop: asyncio.Event,
                 ready: threading.Event | None = None) -> None:
    await daemon.start()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await daemon.stop()


def run_daemon(socket_path: str | os.PathLike[str], *,
               pid_file: str | os.PathLike[str] | None = None,
               domain_socket_dir: str | os.PathLike[str] | None = None,
               quota: Quota | None = None) -> None:
    """Serve in the foreground until SIGTERM or SIGINT; remove the socket and pid file."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        daemon = XenStoreDaemon(socket_path, quota=quota, domain_socket_dir=domain_socket_dir)
        # The socket is claimed first: a refused start (a live daemon there, a file that is
        # not a socket) leaves that daemon's pid file alone.
        await daemon.start()
        try:
            if pid_file is not None:
                Path(pid_file).write_text(f"{os.getpid()}\n")
            await stop.wait()
        finally:
            await daemon.stop()
            if pid_file is not None:
                _remove_own_pid_file(Path(pid_file))

    asyncio.run(main())


def _remove_own_pid_file(path: Path) -> None:
    """Remove ``path`` if it still names this process (nobody else has taken it over)."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except (OSError, UnicodeDecodeError):
        pass


def _wait_for_socket(path: Path, deadline: float, alive: Callable[[], bool]) -> None:
    while time.monotonic() < deadline:
        if not alive():
            raise XenStoreConnectionError(f"xenstored exited before listening on {path}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return
        except OSError:
            time.sleep(0.02)
        finally:
            probe.close()
    raise XenStoreConnectionError(f"xenstored did not listen on {path} in time")


def quota_arguments(quota: Quota) -> list[str]:
    """The ``pvhvm xenstored`` options that give ``quota`` (C xenstored's names)."""
    return ["-E", str(quota.nodes_per_domain), "-S", str(quota.entry_size),
            "-W", str(quota.watches_per_domain), "-t", str(quota.transactions),
            "-A", str(quota.perms_per_node), "-M", str(quota.path_len),
            "-Q", f"transaction-nodes={quota.transaction_nodes}",
            "-Q", f"memory={quota.memory}", "-Q", f"outstanding={quota.outstanding}",
            "--socket-watches", str(quota.socket_watches),
            "--socket-transactions", str(quota.socket_transactions)]


class DaemonProcess:
    """A xenstored subprocess (`spawn_daemon`); a context manager that stops it."""

    def __init__(self, socket_path: Path, process: subprocess.Popen[bytes],
                 domain_socket_dir: Path | None) -> None:
        self.socket_path = socket_path
        self.process = process
        self.domain_socket_dir = domain_socket_dir
        #: set once this daemon was seen listening: only then is the socket its own to remove
        self.listening = False

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def domain_socket(self, domid: int) -> Path:
        """The socket to act as ``domid`` (needs ``domain_socket_dir``)."""
        if self.domain_socket_dir is None:
            raise XenStoreConnectionError("the daemon has no domain_socket_dir")
        return self.domain_socket_dir / f"domain-{domid}"

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; remove the socket. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.listening:
            unlink_socket(self.socket_path)
        return self.process.returncode

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _child_environment() -> dict[str, str]:
    """This environment, with this very pvhvm first on PYTHONPATH, so that the child runs
    the same code as its parent whatever the interpreter's own paths say."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def spawn_daemon(socket_path: str | os.PathLike[str], *,
                 pid_file: str | os.PathLike[str] | None = None,
                 domain_socket_dir: str | os.PathLike[str] | None = None,
                 log_file: str | os.PathLike[str] | None = None,
                 timeout: float = 10.0, detach: bool = False,
                 quota: Quota | None = None) -> DaemonProcess:
    """Start ``python -m pvhvm.xenstore`` on ``socket_path``; return once it listens.

    Use as ``with spawn_daemon(path) as daemon: ...``: leaving the block stops the
    process (SIGTERM, then SIGKILL) and removes the socket. With ``detach`` the daemon runs
    in a session of its own, so it outlives the caller and its terminal.
    """
    path = Path(socket_path)
    # Checked here too: the readiness probe below would otherwise take a daemon already
    # listening on the path for the new one.
    _check_socket_path(path)
    argv = [sys.executable, "-m", "pvhvm.xenstore", "--socket", str(path),
            *quota_arguments(quota or Quota())]
    if pid_file is not None:
        argv += ["--pid-file", str(pid_file)]
    if domain_socket_dir is not None:
        argv += ["--domain-socket-dir", str(domain_socket_dir)]
    with contextlib.ExitStack() as stack:
        output = (stack.enter_context(open(log_file, "ab")) if log_file is not None
                  else subprocess.DEVNULL)
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
                                   env=_child_environment(), start_new_session=detach)
    handle = DaemonProcess(path, process,
                           Path(domain_socket_dir) if domain_socket_dir else None)
    try:
        _wait_for_socket(path, time.monotonic() + timeout, lambda: process.poll() is None)
    except BaseException:
        handle.stop()
        raise
    handle.listening = True
    return handle


class ThreadedDaemon:
    """A daemon running on its own event loop in a thread of this process
    (`run_in_thread`); a context manager that stops it."""

    def __init__(self, daemon: XenStoreDaemon) -> None:
        self.daemon = daemon
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xenstored", daemon=True)

    @property
    def socket_path(self) -> Path:
        """The daemon's socket."""
        return self.daemon.socket_path

    @property
    def store(self) -> XenStore:
        """The daemon's state (only inspect it while no client is busy)."""
        return self.daemon.store

    def domain_socket(self, domid: int) -> Path:
        """The socket to act as ``domid``."""
        return self.daemon.domain_socket(domid)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await _serve(self.daemon, self._stop, self._ready)

        try:
            asyncio.run(main())
        except BaseException as err:  # reported to the starting thread
            self._error = err
            self._ready.set()

    def start(self, timeout: float = 10.0) -> ThreadedDaemon:
        """Start the thread; return once the socket listens."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise XenStoreConnectionError("in-process xenstored did not start")
        if self._error is not None:
            raise XenStoreConnectionError(f"in-process xenstored failed: {self._error}") \
                from self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread; the socket is removed."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ThreadedDaemon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def run_in_thread(socket_path: str | os.PathLike[str], *, quota: Quota | None = None,
                  domain_socket_dir: str | os.PathLike[str] | None = None,
                  timeout: float = 10.0) -> ThreadedDaemon:
    """Serve ``socket_path`` from a thread of this process; return once it listens."""
    daemon = XenStoreDaemon(socket_path, quota=quota, domain_socket_dir=domain_socket_dir)
    return ThreadedDaemon(daemon).start(timeout)
