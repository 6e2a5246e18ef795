"""Byte vectors for the xs_wire.h codec, fed whole and one byte at a time."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.xenstore.errors import XenStoreProtocolError
from pvhvm.xenstore.wire import (
    HEADER_SIZE,
    PAYLOAD_MAX,
    Access,
    Op,
    Packet,
    Parser,
    Permission,
    c_atoi,
    decode,
    encode,
    join_strings,
    one_arg,
    parse_permissions,
    permissions_payload,
    split_strings,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="vectors are little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# (description, packet, bytes): type, req_id, tx_id, len as little-endian uint32.
VECTORS = [
    ("READ /a", Packet(Op.READ, 7, 0, b"/a\0"),
     h("02000000 07000000 00000000 03000000") + b"/a\0"),
    ("WRITE binary value", Packet(Op.WRITE, 1, 3, b"/k\0v\0x"),
     h("0b000000 01000000 03000000 06000000") + b"/k\0v\0x"),
    ("DIRECTORY reply", Packet(Op.DIRECTORY, 0x01020304, 0, b"a\0bc\0"),
     h("01000000 04030201 00000000 05000000") + b"a\0bc\0"),
    ("TRANSACTION_START", Packet(Op.TRANSACTION_START, 2, 0, b"\0"),
     h("06000000 02000000 00000000 01000000 00")),
    ("TRANSACTION_END T", Packet(Op.TRANSACTION_END, 3, 9, b"T\0"),
     h("07000000 03000000 09000000 02000000") + b"T\0"),
    ("ERROR ENOENT", Packet(Op.ERROR, 5, 0, b"ENOENT\0"),
     h("10000000 05000000 00000000 07000000") + b"ENOENT\0"),
    ("WATCH_EVENT", Packet(Op.WATCH_EVENT, 0, 0, b"/a/b\0tok\0"),
     h("0f000000 00000000 00000000 09000000") + b"/a/b\0tok\0"),
    ("RESET_WATCHES empty", Packet(Op.RESET_WATCHES, 4, 0, b""),
     h("15000000 04000000 00000000 00000000")),
    ("DIRECTORY_PART", Packet(Op.DIRECTORY_PART, 6, 0, b"/\x000\0"),
     h("16000000 06000000 00000000 04000000") + b"/\x000\0"),
    ("unknown type", Packet(0xFFFF, 1, 0, b""),
     h("ffff0000 01000000 00000000 00000000")),
    ("max uint32 fields", Packet(Op.GET_PERMS, 0xFFFFFFFF, 0xFFFFFFFF, b"/\0"),
     h("03000000 ffffffff ffffffff 02000000") + b"/\0"),
]


@pytest.mark.parametrize(("packet", "data"), [(p, d) for _, p, d in VECTORS],
                         ids=[name for name, _, _ in VECTORS])
def test_encode_vector(packet: Packet, data: bytes) -> None:
    assert packet.encode() == data


@pytest.mark.parametrize(("packet", "data"), [(p, d) for _, p, d in VECTORS],
                         ids=[name for name, _, _ in VECTORS])
def test_decode_vector_whole(packet: Packet, data: bytes) -> None:
    assert decode(data) == [packet]


@pytest.mark.parametrize(("packet", "data"), [(p, d) for _, p, d in VECTORS],
                         ids=[name for name, _, _ in VECTORS])
def test_decode_vector_byte_at_a_time(packet: Packet, data: bytes) -> None:
    parser = Parser()
    out: list[Packet] = []
    for index, byte in enumerate(data):
        expected_need = (HEADER_SIZE - index if index < HEADER_SIZE
                         else len(data) - index)
        assert parser.need == expected_need
        out += parser.feed(bytes([byte]))
    assert out == [packet]
    assert parser.need == HEADER_SIZE
    assert parser.buffered == 0


def test_all_vectors_in_one_stream() -> None:
    stream = b"".join(d for _, _, d in VECTORS)
    assert decode(stream) == [p for _, p, _ in VECTORS]
    parser = Parser()
    out: list[Packet] = []
    for byte in stream:
        out += parser.feed(bytes([byte]))
    assert out == [p for _, p, _ in VECTORS]


def test_oversized_header_rejected_whole_and_bytewise() -> None:
    data = h("02000000 01000000 00000000 01100000")  # len 4097
    with pytest.raises(XenStoreProtocolError, match="4097"):
        Parser().feed(data)
    parser = Parser()
    for byte in data[:-1]:
        assert parser.feed(bytes([byte])) == []
    with pytest.raises(XenStoreProtocolError):
        parser.feed(data[-1:])


def test_payload_max_accepted() -> None:
    payload = b"x" * PAYLOAD_MAX
    assert decode(encode(Op.WRITE, payload)) == [Packet(Op.WRITE, 0, 0, payload)]
    with pytest.raises(XenStoreProtocolError):
        encode(Op.WRITE, payload + b"x")


def test_trailing_partial_message() -> None:
    with pytest.raises(XenStoreProtocolError, match="need 8 more"):
        decode(h("02000000 01000000"))


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2**32 - 1),
                          st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=8),
       st.lists(st.integers(1, 40), min_size=1))
def test_any_chunking_round_trips(messages: list[tuple[int, int, int, bytes]],
                                  cuts: list[int]) -> None:
    packets = [Packet(op, req, tx, payload) for op, req, tx, payload in messages]
    stream = b"".join(p.encode() for p in packets)
    parser = Parser()
    out: list[Packet] = []
    position = 0
    index = 0
    while position < len(stream):
        size = cuts[index % len(cuts)]
        out += parser.feed(stream[position:position + size])
        position += size
        index += 1
    assert out == packets


def test_strings() -> None:
    assert join_strings("a", b"b", "") == b"a\0b\0\0"
    assert split_strings(b"a\0b\0tail") == [b"a", b"b"]
    assert one_arg(b"/a\0") == b"/a"
    assert one_arg(b"/a") is None
    assert one_arg(b"/a\0\0") is None
    assert one_arg(b"") is None


@pytest.mark.parametrize(("text", "perm"), [
    ("n0", Permission(0, Access.NONE)),
    ("r5", Permission(5, Access.READ)),
    ("w12", Permission(12, Access.WRITE)),
    ("b65535", Permission(65535, Access.BOTH)),
    ("r0x10", Permission(16, Access.READ)),
    ("r010", Permission(8, Access.READ)),
])
def test_permission_parse(text: str, perm: Permission) -> None:
    assert Permission.parse(text) == perm
    assert Permission.parse(text.encode()) == perm


@pytest.mark.parametrize("text", ["", "x1", "r", "r1a", "b-", "rr1"])
def test_permission_parse_errors(text: str) -> None:
    with pytest.raises(XenStoreProtocolError):
        Permission.parse(text)


def test_permissions_payload() -> None:
    perms = parse_permissions([b"n1", b"r0", b"b7"])
    assert permissions_payload(perms) == b"n1\0r0\0b7\0"
    assert [str(p) for p in perms] == ["n1", "r0", "b7"]


@pytest.mark.parametrize(("text", "value"), [
    ("5", 5), (" 12x", 12), ("abc", 0), ("", 0), ("-1", 0xFFFFFFFF), ("+7", 7)])
def test_c_atoi(text: str, value: int) -> None:
    assert c_atoi(text) == value
