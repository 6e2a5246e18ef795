"""The XenStore wire format, as pure functions: no I/O, no dependencies.

Each message is a ``struct xsd_sockmsg`` header -- four uint32 in host byte order:
type, req_id, tx_id, len -- followed by ``len`` bytes of payload (xs_wire.h). Payloads
are nul-terminated strings, except WRITE's value and READ's reply, which are binary
(xenstore.txt, "Xenstore protocol details"). The payload is limited to
XENSTORE_PAYLOAD_MAX (4096) bytes in both directions.

Client and daemon share this module; sockets are thin adapters around `Parser`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pvhvm.xenstore.errors import XenStoreProtocolError

HEADER = struct.Struct("=IIII")
#: Size of ``struct xsd_sockmsg``.
HEADER_SIZE = HEADER.size
#: XENSTORE_PAYLOAD_MAX: a longer payload gets the connection dropped.
PAYLOAD_MAX = 4096
#: XENSTORE_ABS_PATH_MAX / XENSTORE_REL_PATH_MAX.
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048
#: DOMID_SELF (xen.h), accepted by IS_DOMAIN_INTRODUCED.
DOMID_SELF = 0x7FF0


class Op(enum.IntEnum):
    """``enum xsd_sockmsg_type`` (xs_wire.h); XS_RESTRICT (20) was removed."""

    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26
    INVALID = 0xFFFF


def op_name(op: int) -> str:
    """The name of a message type, or ``"**UNKNOWN**"`` (as xenstored's sockmsg_string)."""
    try:
        return Op(op).name
    except ValueError:
        return "**UNKNOWN**"


class Packet(NamedTuple):
    """One message: header fields and payload. ``op`` stays an int so that unknown
    types survive decoding (the daemon answers them ENOSYS). A NamedTuple: immutable and
    cheap to build, one per request and reply."""

    op: int
    req_id: int
    tx_id: int
    payload: bytes

    def encode(self) -> bytes:
        """Header + payload bytes. Raises XenStoreProtocolError if the payload is too long."""
        return encode(self.op, self.payload, req_id=self.req_id, tx_id=self.tx_id)


def encode(op: int, payload: bytes, *, req_id: int = 0, tx_id: int = 0) -> bytes:
    """Encode one message (xs_wire.h ``struct xsd_sockmsg`` + payload)."""
    if len(payload) > PAYLOAD_MAX:
        raise XenStoreProtocolError(
            f"payload of {len(payload)} bytes is over XENSTORE_PAYLOAD_MAX ({PAYLOAD_MAX})")
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


class Parser:
    """Incremental decoder: feed bytes in any chunking, take whole packets out.

    ``need`` says how many more bytes complete the message under way. A header whose
    len is over PAYLOAD_MAX raises XenStoreProtocolError: xenstored drops such a
    connection (xenstore.txt), and so should the caller.
    """

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    @property
    def need(self) -> int:
        """Bytes still missing from the message under way (HEADER_SIZE when idle)."""
        if len(self._buffer) < HEADER_SIZE:
            return HEADER_SIZE - len(self._buffer)
        length: int = HEADER.unpack_from(self._buffer)[3]
        return max(0, HEADER_SIZE + length - len(self._buffer))

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        """Add bytes; return every packet now complete, in order. A bad header raises,
        even after good packets in the same bytes (see `feed_until_error`)."""
        packets, error = self.feed_until_error(data)
        if error is not None:
            raise error
        return packets

    def feed_until_error(self, data: bytes | memoryview
                         ) -> tuple[list[Packet], XenStoreProtocolError | None]:
        """Add bytes; return the packets complete before any bad header, and the error of
        that header (None if there is none), so that a daemon can answer the complete
        requests before it drops the connection."""
        buffer = self._buffer
        buffer += data
        packets: list[Packet] = []
        start = 0
        size = len(buffer)
        error: XenStoreProtocolError | None = None
        unpack = HEADER.unpack_from
        while size - start >= HEADER_SIZE:
            op, req_id, tx_id, length = unpack(buffer, start)
            if length > self._max_payload:
                error = XenStoreProtocolError(
                    f"message {op_name(op)} announces {length} payload bytes, "
                    f"over XENSTORE_PAYLOAD_MAX ({self._max_payload})")
                break
            end = start + HEADER_SIZE + length
            if end > size:
                break
            packets.append(Packet(op, req_id, tx_id, bytes(buffer[start + HEADER_SIZE:end])))
            start = end
        if start:
            del buffer[:start]
        return packets, error


def decode(data: bytes) -> list[Packet]:
    """Decode bytes holding only whole messages. Raises on a trailing partial message."""
    parser = Parser()
    packets = parser.feed(data)
    if parser.buffered:
        raise XenStoreProtocolError(f"{parser.buffered} trailing bytes: need {parser.need} more")
    return packets


# --- payload helpers -----------------------------------------------------------------------

def join_strings(*strings: str | bytes) -> bytes:
    """``<a>|<b>|``: each string followed by a nul (xenstore.txt notation)."""
    return b"".join((s.encode() if isinstance(s, str) else s) + b"\0" for s in strings)


def split_strings(payload: bytes) -> list[bytes]:
    """The nul-terminated strings of a payload; bytes after the last nul are dropped
    (as xenstored's get_strings())."""
    parts = payload.split(b"\0")
    return parts[:-1]


def one_arg(payload: bytes) -> bytes | None:
    """The single argument of a payload that holds exactly one nul, at its end
    (xenstored's onearg()); None otherwise."""
    if not payload or payload.find(b"\0") != len(payload) - 1:
        return None
    return payload[:-1]


def error_payload(errno_name: str) -> bytes:
    """XS_ERROR payload: ``E<something>|``."""
    return errno_name.encode() + b"\0"


def parse_error_payload(payload: bytes) -> str:
    """The errno name of an XS_ERROR payload."""
    return payload.split(b"\0", 1)[0].decode("ascii", "replace")


# --- permissions -----------------------------------------------------------------------------

class Access(enum.IntFlag):
    """XS_PERM_* bits: ``n`` none, ``r`` read, ``w`` write, ``b`` both."""

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3


_ACCESS_LETTER = {Access.NONE: "n", Access.READ: "r", Access.WRITE: "w", Access.BOTH: "b"}
_LETTER_ACCESS = {letter: access for access, letter in _ACCESS_LETTER.items()}


@dataclass(frozen=True, slots=True)
class Permission:
    """One ``<perm-as-string>`` entry: a letter and a domid (xenstore.txt, SET_PERMS).

    In a node's list the first entry names the owner and the access of every domain
    not listed.
    """

    domid: int
    access: Access = Access.NONE

    def __str__(self) -> str:
        return f"{_ACCESS_LETTER[Access(self.access & Access.BOTH)]}{self.domid}"

    @classmethod
    def parse(cls, text: str | bytes) -> Permission:
        """Parse ``r5``-style text, with the domid in C ``strtol(.., 0)`` syntax."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        if not text or text[0] not in _LETTER_ACCESS:
            raise XenStoreProtocolError(f"bad permission {text!r}: want n, r, w or b + domid")
        try:
            domid = _strtol0(text[1:])
        except ValueError as err:
            raise XenStoreProtocolError(f"bad domid in permission {text!r}") from err
        return cls(domid, _LETTER_ACCESS[text[0]])


_C_SPACE = " \t\n\v\f\r"
_LONG_MAX = (1 << 63) - 1


def _strtol0(text: str) -> int:
    """C ``strtol(text, &end, 0)`` that must consume everything, as xs_strings_to_perms()
    checks it (``if (*end || !*p)``): leading C white space and a sign are skipped; base
    16 after ``0x``/``0X`` followed by a hex digit, 8 after a leading ``0``, else 10; the
    value saturates at LONG_MIN/LONG_MAX and is then stored in an unsigned int."""
    if not text:
        raise ValueError(text)
    index = 0
    while index < len(text) and text[index] in _C_SPACE:
        index += 1
    sign = 1
    if index < len(text) and text[index] in "+-":
        sign = -1 if text[index] == "-" else 1
        index += 1
    base = 10
    if text[index:index + 1] == "0":
        if text[index + 1:index + 2] in ("x", "X") and \
                text[index + 2:index + 3] in _HEX_DIGITS and text[index + 2:index + 3]:
            base = 16
            index += 2
        else:
            base = 8
    digits = _BASE_DIGITS[base]
    start = index
    while index < len(text) and text[index] in digits:
        index += 1
    if index == start or index != len(text):
        raise ValueError(text)
    value = sign * int(text[start:index], base)
    value = max(-_LONG_MAX - 1, min(_LONG_MAX, value))
    return value & 0xFFFFFFFF


_HEX_DIGITS = "0123456789abcdefABCDEF"
_BASE_DIGITS = {8: "01234567", 10: "0123456789", 16: _HEX_DIGITS}


def parse_permissions(strings: Iterable[bytes | str]) -> tuple[Permission, ...]:
    """Permissions from their strings (GET_PERMS reply, SET_PERMS request)."""
    return tuple(Permission.parse(s) for s in strings)


def permissions_payload(perms: Sequence[Permission]) -> bytes:
    """``<perm-as-string>|+``."""
    return join_strings(*(str(p) for p in perms))


def c_atoi(text: bytes | str) -> int:
    """C ``atoi``: optional blanks and sign, leading digits, else 0 (xenstored parses
    domids this way)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    digits = ""
    for char in text:
        if "0" <= char <= "9":
            digits += char
        else:
            break
    if not digits:
        return 0
    value = sign * int(digits)
    # Wrap as a C int, then as the unsigned int the caller stores it in.
    return value & 0xFFFFFFFF
