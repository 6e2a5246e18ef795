"""Hostile clients (issue 13): bounds that hold without timing anything.

The daemon is the real one (`run_in_thread`) on real Unix sockets; unprivileged quotas are
exercised through a domain's own connection (its domain socket).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pvhvm.xenstore import daemon as daemon_module
from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import LogLimiter, ThreadedDaemon, run_in_thread, spawn_daemon
from pvhvm.xenstore.errors import XenStoreErrnoError, XenStoreProtocolError
from pvhvm.xenstore.quota import Quota
from pvhvm.xenstore.server import Connection, XenStore, reply
from pvhvm.xenstore.wire import Op, Packet, Parser, Permission, encode, join_strings


def raw_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(10)
    return sock


def receive(sock: socket.socket, count: int) -> list[Packet]:
    parser = Parser()
    packets: list[Packet] = []
    while len(packets) < count:
        data = sock.recv(65536)
        if not data:
            break
        packets += parser.feed(data)
    return packets


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached")
        time.sleep(0.01)


def request(store: XenStore, conn: Connection, op: Op, *strings: str | bytes) -> Packet:
    effects = reply(store, conn, Packet(op, 1, 0, join_strings(*strings)))
    mine = [e.packet for e in effects if getattr(e, "connection", None) is conn
            and e.packet.op != Op.WATCH_EVENT]  # type: ignore[attr-defined]
    return mine[-1]


@pytest.fixture
def quota_daemon(short_dir: Path) -> Iterator[ThreadedDaemon]:
    quota = Quota(watches_per_domain=128, transactions=10, memory=64 * 1024, outstanding=20,
                  socket_watches=300, socket_transactions=7)
    with run_in_thread(short_dir / "socket", domain_socket_dir=short_dir / "dom",
                       quota=quota) as handle:
        yield handle


def introduce(daemon: ThreadedDaemon, domid: int) -> Path:
    with XenStoreClient(daemon.socket_path) as dom0:
        dom0.mkdir(f"/local/domain/{domid}")
        dom0.set_perms(f"/local/domain/{domid}", [f"n{domid}"])
        dom0.write(f"/local/domain/{domid}/big", "v" * 2000)
        dom0.set_perms(f"/local/domain/{domid}/big", [f"n{domid}"])
        dom0.introduce(domid, 0, 1)
    path = daemon.domain_socket(domid)
    wait_for(path.exists)
    return path


# --- the wire: a bad header after complete requests ------------------------------------

def test_complete_requests_before_a_bad_header_are_answered(daemon: ThreadedDaemon) -> None:
    sock = raw_socket(daemon.socket_path)
    good = b"".join(encode(Op.WRITE, b"/w\0" + str(i).encode(), req_id=i) for i in range(250))
    bad = Op.WRITE.to_bytes(4, sys.byteorder) + bytes(8) + (1 << 20).to_bytes(4, sys.byteorder)
    sock.sendall(good + bad)
    packets = receive(sock, 251)
    assert [p.req_id for p in packets] == list(range(250))
    assert all(p.payload == b"OK\0" for p in packets)
    assert sock.recv(4096) == b""  # then dropped
    sock.close()


def test_parser_keeps_packets_before_the_error() -> None:
    parser = Parser()
    bad = (1).to_bytes(4, sys.byteorder) + bytes(8) + (5000).to_bytes(4, sys.byteorder)
    packets, error = parser.feed_until_error(encode(Op.READ, b"/a\0") * 3 + bad)
    assert len(packets) == 3 and isinstance(error, XenStoreProtocolError)
    with pytest.raises(XenStoreProtocolError):
        Parser().feed(encode(Op.READ, b"/a\0") + bad)


# --- watch matching does not walk every watch --------------------------------------------

class _CountingIndex(dict):  # type: ignore[type-arg]
    lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        type(self).lookups += 1
        return super().get(key, default)


def test_a_write_looks_up_its_path_and_ancestors_only() -> None:
    store = XenStore()
    flooder, good = store.connect(name="flooder"), store.connect(name="good")
    for i in range(20_000):
        request(store, flooder, Op.WATCH, f"/unrelated/n{i}", "t")
    request(store, good, Op.WATCH, "/good", "g")
    counting = _CountingIndex(store.watch_index)
    store.watch_index = counting
    effects = reply(store, good, Packet(Op.WRITE, 1, 0, b"/good/a/b\0v"))
    events = [e.packet for e in effects if e.packet.op == Op.WATCH_EVENT]  # type: ignore[union-attr]
    assert [e.payload for e in events] == [b"/good/a/b\0g\0"]
    # /good/a/b, /good/a, /good and / (and the parents' reads): a handful, not 20,000
    assert _CountingIndex.lookups <= 4


def test_events_keep_connection_then_registration_order() -> None:
    store = XenStore()
    a, b = store.connect(), store.connect()
    request(store, b, Op.WATCH, "/x", "b1")
    request(store, a, Op.WATCH, "/x/y", "a2")
    request(store, a, Op.WATCH, "/", "a1")
    request(store, a, Op.WATCH, "/x", "a3")
    effects = reply(store, b, Packet(Op.WRITE, 1, 0, b"/x/y\0v"))
    tokens = [e.packet.payload.split(b"\0")[1] for e in effects  # type: ignore[union-attr]
              if e.packet.op == Op.WATCH_EVENT]  # type: ignore[union-attr]
    assert tokens == [b"a2", b"a1", b"a3", b"b1"]


def test_a_stalled_connection_gets_no_events_built_and_they_are_counted() -> None:
    store = XenStore()
    flooder, good = store.connect(), store.connect()
    for i in range(1000):
        request(store, flooder, Op.WATCH, "/sub", f"t{i}")
    flooder.stalled = True
    effects = reply(store, good, Packet(Op.WRITE, 1, 0, b"/sub/k\0v"))
    assert [e.packet.op for e in effects] == [Op.WRITE]  # type: ignore[union-attr]
    assert flooder.dropped_events == 1000 == store.dropped_events
    store.disconnect(flooder)
    assert store.watch_index == {}


# --- the daemon: a flooding, never-reading client ---------------------------------------

def test_a_never_reading_watcher_has_a_bounded_queue(daemon: ThreadedDaemon,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "OUTPUT_HARD_LIMIT", 512 * 1024)
    flood = raw_socket(daemon.socket_path)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    watches = 2000
    for start in range(0, watches, 100):
        flood.sendall(b"".join(encode(Op.WATCH, join_strings("/flood", f"t{i}"))
                               for i in range(start, start + 100)))
        receive(flood, 200)  # acks and initial events: it reads while registering...
    with XenStoreClient(daemon.socket_path) as good:
        for i in range(400):  # ...and then never again
            good.write(f"/flood/k{i % 10}", str(i))
        assert good.read("/flood/k9") == b"399"
    store = daemon.store
    protocols = list(daemon.daemon.clients.values())
    flooder = next(p for p in protocols if p.connection is not None
               and len(p.connection.watches) == watches)
    assert flooder.connection is not None and flooder.connection.stalled
    assert flooder.transport is not None
    assert flooder.transport.get_write_buffer_size() <= 512 * 1024
    assert store.dropped_events > 100_000
    # one line at the first drop, the rest summarised later: not one line per event
    assert daemon.daemon.log_limiter.lines.get("dropped-events") == 1
    flood.close()
    wait_for(lambda: store.watch_index == {} and store.connections == [])


def test_the_flooder_recovers_when_it_reads(daemon: ThreadedDaemon,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_module, "OUTPUT_HARD_LIMIT", 256 * 1024)
    with XenStoreClient(daemon.socket_path) as slow, \
            XenStoreClient(daemon.socket_path) as good:
        for i in range(500):
            slow.watch("/r", f"t{i}")
        while slow.read_watch(0.2) is not None:
            pass
        for i in range(200):  # slow does not read meanwhile: its events are dropped
            good.write("/r/x", str(i))
        wait_for(lambda: any(c.stalled for c in daemon.store.connections))
        seen = 0
        while slow.read_watch(0.5) is not None:  # it reads: the buffer drains
            seen += 1
        assert seen > 0
        wait_for(lambda: not any(c.stalled for c in daemon.store.connections))
        good.write("/r/x", "after")
        event = slow.read_watch(5)
        assert event is not None and event.path == "/r/x"


# --- quotas: unprivileged domains, through their own connection ---------------------------

def test_domain_watch_transaction_and_memory_quotas(quota_daemon: ThreadedDaemon) -> None:
    with XenStoreClient(introduce(quota_daemon, 7)) as dom7:
        for _i in range(10):
            dom7.transaction_start()
        with pytest.raises(XenStoreErrnoError, match="ENOSPC"):
            for _ in range(3):
                dom7.transaction_start()
    quota = Quota(watches_per_domain=128, memory=16 * 1024)
    store = XenStore(quota)
    conn = store.connect(8, as_domain=True)
    answers = [request(store, conn, Op.WATCH, f"/local/domain/8/w{i}", "t" * 200)
               for i in range(200)]
    errors = [p.payload for p in answers if p.op == Op.ERROR]
    assert errors and errors[0] == b"ENOMEM\0"  # memory: 16 KiB of watch paths and tokens
    domain = store.domains.find(8)
    assert domain is not None and domain.memory <= 16 * 1024
    store.disconnect(conn)
    assert domain.memory == 0 and domain.nbwatch == 0


def test_domain_watch_count_quota(quota_daemon: ThreadedDaemon) -> None:
    with XenStoreClient(introduce(quota_daemon, 9)) as dom9:
        with pytest.raises(XenStoreErrnoError, match="E2BIG"):
            for i in range(200):
                dom9.watch(f"w{i}", "t")
        assert len(quota_daemon.store.connections[-1].watches) in (129, 130)


def test_domain_outstanding_requests_are_bounded(quota_daemon: ThreadedDaemon) -> None:
    """A domain that sends 3,000 reads of a 2 KB node and reads nothing: at most
    ``outstanding`` replies wait in the daemon; the rest of its requests wait unparsed in
    its own socket."""
    sock = raw_socket(introduce(quota_daemon, 11))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    data = encode(Op.READ, b"big\0") * 3000
    sent = 0
    deadline = time.monotonic() + 5
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.3)
    protocol = next(p for p in quota_daemon.daemon.clients.values() if p.as_domain)
    assert protocol.transport is not None
    assert protocol.queued_replies <= 20
    assert protocol.transport.get_write_buffer_size() <= 20 * (16 + 2000)
    assert protocol.reading_paused
    sock.setblocking(True)
    sock.settimeout(10)
    replies = receive(sock, 3000 if sent == len(data) else 1)
    assert replies and all(p.payload == b"v" * 2000 for p in replies)
    sock.close()


def test_socket_clients_are_capped_too(quota_daemon: ThreadedDaemon) -> None:
    with XenStoreClient(quota_daemon.socket_path) as dom0:
        with pytest.raises(XenStoreErrnoError, match="E2BIG"):
            for i in range(301):
                dom0.watch(f"/w/{i}", "t")
        with pytest.raises(XenStoreErrnoError, match="ENOSPC"):
            for _ in range(8):
                dom0.transaction_start()


# --- logs a client can cause ---------------------------------------------------------------

def test_log_limiter_one_line_per_interval() -> None:
    now = [0.0]
    lines: list[str] = []

    class Sink:
        def warning(self, text: str) -> None:
            lines.append(text)

    limiter = LogLimiter(Sink(), interval=10, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(1000):
        limiter.note("drop", 20, "dropped {count}")
    now[0] = 10.5
    limiter.note("drop", 1, "dropped {count}")
    assert lines == ["dropped 20", "dropped 19981"]


def test_protocol_errors_from_many_connections_log_one_line(daemon: ThreadedDaemon) -> None:
    bad = Op.READ.to_bytes(4, sys.byteorder) + bytes(8) + (1 << 30).to_bytes(4, sys.byteorder)
    for _ in range(50):
        sock = raw_socket(daemon.socket_path)
        sock.sendall(bad)
        assert sock.recv(16) == b""
        sock.close()
    assert daemon.daemon.log_limiter.lines.get("protocol-error") == 1


# --- permission strings as C's xs_strings_to_perms reads them -----------------------------

@pytest.mark.parametrize(("text", "expected"), [
    (b"r\r1", "r1"), (b"r 1", "r1"), (b"n\t\n\v\f 7", "n7"), (b"w0x1f", "w31"), (b"b010", "b8"),
    (b"r-1", "r4294967295"), (b"r+5", "r5"), (b"r99999999999999999999", "r4294967295"),
    (b"r0", "r0"), (b"r0X10", "r16"),
])
def test_permission_strings_c_accepts(text: bytes, expected: str) -> None:
    assert str(Permission.parse(text)) == expected


@pytest.mark.parametrize("text", [
    b"n1\x0b", b"w1 ", b"r", b"r0x", b"r09", b"x1", b"r1\xff", b"r 0x", b"r--1", b" r1",
    b"r1a", b"r0x1g",
])
def test_permission_strings_c_refuses(text: bytes) -> None:
    with pytest.raises(XenStoreProtocolError):
        Permission.parse(text)


# --- the command line: C xenstored's quota options, one-line errors -----------------------

def test_quota_options_reach_a_spawned_daemon(short_dir: Path) -> None:
    with spawn_daemon(short_dir / "q.sock", quota=Quota(socket_watches=3,
                                                         socket_transactions=2)) as proc, \
            XenStoreClient(proc.socket_path) as xs:
        for i in range(3):
            xs.watch(f"/q{i}", "t")
        with pytest.raises(XenStoreErrnoError, match="E2BIG"):
            xs.watch("/q3", "t")
        xs.transaction_start()
        xs.transaction_start()
        with pytest.raises(XenStoreErrnoError, match="ENOSPC"):
            xs.transaction_start()


@pytest.mark.parametrize(("argv", "words"), [
    (["--socket", "/tmp/" + "a" * 120], "over the 107 a Unix socket's path may have"),
    (["--socket", "/proc/no/xs.sock"], "cannot listen on '/proc/no/xs.sock'"),
    (["-Q", "memory=lots"], "'lots' is not a number"),
    (["-Q", "nodes=5"], "want WHAT=NB"),
])
def test_xenstored_command_errors_are_one_line(argv: list[str], words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pvhvm", "xenstored", *argv],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode in (1, 2)
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not Path("/tmp/" + "a" * 120).exists()


def test_domain_memory_quota_through_its_own_connection(quota_daemon: ThreadedDaemon) -> None:
    """64 KiB of memory quota: watches with 2,000-byte tokens run out of memory (ENOMEM)
    long before the 128-watch quota (E2BIG)."""
    with XenStoreClient(introduce(quota_daemon, 12)) as dom12:
        made = 0
        with pytest.raises(XenStoreErrnoError, match="ENOMEM"):
            for i in range(128):
                dom12.watch(f"w{i}", "t" * 2000)
                made += 1
        assert 20 <= made <= 32
        domain = quota_daemon.store.domains.find(12)
        assert domain is not None and domain.memory <= 64 * 1024


def test_events_for_a_domain_over_its_memory_quota_are_dropped(quota_daemon: ThreadedDaemon
                                                               ) -> None:
    sock = raw_socket(introduce(quota_daemon, 13))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(encode(Op.WATCH, join_strings("/local/domain/13/big", "t" * 1000)))
    receive(sock, 2)
    with XenStoreClient(quota_daemon.socket_path) as dom0:
        for i in range(3000):  # each fires a ~1 KB event at a domain that does not read
            dom0.write("/local/domain/13/big", str(i))
    protocol = next(p for p in quota_daemon.daemon.clients.values() if p.as_domain)
    assert protocol.transport is not None
    assert protocol.transport.get_write_buffer_size() <= 64 * 1024
    assert protocol.connection is not None and protocol.connection.dropped_events > 0
    sock.close()
