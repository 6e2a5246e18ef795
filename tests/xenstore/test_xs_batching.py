"""The daemon's read and write paths: one read buffer shared by all connections, and one
transport write per batch of replies (a fake transport counts the writes; the real
socket tests show that the bytes are right)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import (
    BATCH_MAX,
    OUTPUT_HIGH_WATER,
    ThreadedDaemon,
    XenStoreDaemon,
    _ClientProtocol,
)
from pvhvm.xenstore.wire import Op, Parser, encode, join_strings


class FakeTransport(asyncio.Transport):
    """Records writes; never blocks unless ``waiting`` says output is queued."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.waiting = 0
        self.reading = True
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.waiting

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def feed(protocol: _ClientProtocol, data: bytes) -> None:
    """What the event loop does on a readable socket: get_buffer, recv_into, updated."""
    while data:
        buffer = protocol.get_buffer(-1)
        chunk = data[:len(buffer)]
        buffer[:len(chunk)] = chunk
        protocol.buffer_updated(len(chunk))
        data = data[len(chunk):]


def connected(daemon: XenStoreDaemon) -> tuple[_ClientProtocol, FakeTransport]:
    protocol = _ClientProtocol(daemon, 0, False)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


def test_pipelined_replies_go_out_in_one_write_in_order(tmp_path: Path) -> None:
    daemon = XenStoreDaemon(tmp_path / "s")
    protocol, transport = connected(daemon)
    requests = b"".join(encode(Op.WRITE, join_strings(f"/p/k{i}") + b"v", req_id=i)
                        for i in range(100))
    feed(protocol, requests)
    assert len(transport.writes) == 1
    replies = Parser().feed(transport.writes[0])
    assert [p.req_id for p in replies] == list(range(100))
    assert all(p.op == Op.WRITE and p.payload == b"OK\0" for p in replies)


def test_a_large_batch_is_handed_over_in_pieces_of_about_batch_max(tmp_path: Path) -> None:
    daemon = XenStoreDaemon(tmp_path / "s")
    protocol, transport = connected(daemon)
    feed(protocol, encode(Op.WRITE, join_strings("/big") + b"v" * 4000, req_id=0))
    transport.writes.clear()
    feed(protocol, b"".join(encode(Op.READ, b"/big\0", req_id=i) for i in range(1, 101)))
    assert 5 <= len(transport.writes) <= 8  # 100 x 4 KiB in pieces of just over 64 KiB
    assert all(len(w) <= BATCH_MAX + 4016 for w in transport.writes)
    replies = Parser().feed(b"".join(transport.writes))
    assert [p.req_id for p in replies] == list(range(1, 101))
    assert all(p.payload == b"v" * 4000 for p in replies)


def test_a_watch_event_for_the_writer_keeps_its_place_in_the_batch(tmp_path: Path) -> None:
    daemon = XenStoreDaemon(tmp_path / "s")
    protocol, transport = connected(daemon)
    feed(protocol, encode(Op.WATCH, join_strings("/w", "t"), req_id=1)
         + encode(Op.WRITE, join_strings("/w") + b"x", req_id=2)
         + encode(Op.READ, join_strings("/w"), req_id=3))
    assert len(transport.writes) == 1
    packets = Parser().feed(transport.writes[0])
    # the ack, the watch's initial event, the write's event then its reply, the read
    assert [(p.op, p.req_id) for p in packets] == [
        (Op.WATCH, 1), (Op.WATCH_EVENT, 0), (Op.WATCH_EVENT, 0), (Op.WRITE, 2), (Op.READ, 3)]


def test_a_client_over_high_water_holds_its_requests_until_it_reads(tmp_path: Path) -> None:
    daemon = XenStoreDaemon(tmp_path / "s")
    protocol, transport = connected(daemon)
    transport.waiting = OUTPUT_HIGH_WATER + 1
    feed(protocol, encode(Op.READ, b"/\0", req_id=1) * 3)
    assert transport.writes == [] and not transport.reading and len(protocol.pending) == 3
    transport.waiting = 0
    protocol.resume_writing()
    assert len(transport.writes) == 1 and len(Parser().feed(transport.writes[0])) == 3
    assert transport.reading


def test_half_sent_requests_of_two_clients_do_not_mix(daemon: ThreadedDaemon) -> None:
    """Both connections read into the daemon's one buffer; a half-sent request stays in
    its own connection's parser while another connection's bytes pass through."""
    first = encode(Op.WRITE, join_strings("/mix/a") + b"from-a" * 50, req_id=1)
    second = encode(Op.WRITE, join_strings("/mix/b") + b"from-b" * 50, req_id=2)
    a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (a, b):
        sock.settimeout(10)
        sock.connect(str(daemon.socket_path))
    a.sendall(first[:25])
    b.sendall(second)
    assert Parser().feed(b.recv(4096))[0].req_id == 2
    a.sendall(first[25:])
    assert Parser().feed(a.recv(4096))[0].req_id == 1
    a.close()
    b.close()
    with XenStoreClient(daemon.socket_path) as xs:
        assert xs.read("/mix/a") == b"from-a" * 50
        assert xs.read("/mix/b") == b"from-b" * 50


def test_the_read_buffer_is_one_for_the_daemon(tmp_path: Path) -> None:
    daemon = XenStoreDaemon(tmp_path / "s")
    first, _ = connected(daemon)
    second, _ = connected(daemon)
    assert first.get_buffer(-1) is second.get_buffer(-1) is daemon.read_buffer
