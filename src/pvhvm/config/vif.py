"""The ``vif=`` spec grammar: xl-network-configuration(5) (Xen 4.17), as xm and xl use it.

``key=value,...`` with the keys of :data:`KEYS` (xl's ``parse_nic_config``) and the flags
``trusted``/``untrusted``; ``''`` is a vif with every default. Values are typed here
(``mtu``/``devid`` integers, ``mac`` normalised, ``rate`` checked as libxlutil reads it);
what a ``type=`` or ``model=`` means is the planner's business, so any model name is kept.
``netdev=`` is xl's deprecated spelling of ``gatewaydev=``; ``accel=`` is accepted and, as in
xl, does nothing.

Where pvhvm differs from xl on purpose: an unknown key, a key given twice and a bad value are
errors (xl prints a line and carries on with the rest); xl's COLO keys are not accepted.

pvhvm's own key ``hostfwd=[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` is a port
forward of QEMU user networking (QEMU's ``-netdev user,hostfwd=``, same syntax, no comma in
it), given once per forward: ``hostfwd=tcp::2222-:22,hostfwd=udp::5353-:53``. Each is typed
here (:class:`HostForward`): protocol tcp or udp (tcp when empty, as QEMU), IPv4 addresses
only (QEMU 7.2's slirp refuses IPv6 ones), ports 1..65535, the guest address inside QEMU's
user network (10.0.2.0/24). An empty HOSTADDR is left for the planner to decide.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields

from pvhvm.config.optstr import brief, tokenize
from pvhvm.config.values import ifname_problem
from pvhvm.errors import SpecError

#: string-valued keys, in canonical order
STRING_KEYS = (
    "mac", "bridge", "ip", "script", "type", "vifname", "rate", "model", "backend",
    "gatewaydev", "forwarddev", "accel",
)
INT_KEYS = ("mtu", "devid")
#: pvhvm's port forward key (QEMU user networking), the one key that may be given more than once
HOSTFWD_KEY = "hostfwd"
#: keys that name a host network interface (Linux's rules: config.values.ifname_problem)
IFNAME_KEYS = ("bridge", "vifname", "gatewaydev", "forwarddev")
KEYS = (*STRING_KEYS, *INT_KEYS, HOSTFWD_KEY)
FLAGS = ("trusted", "untrusted")
#: deprecated spellings xl still reads
ALIASES = {"netdev": "gatewaydev"}
#: netback's MTU bounds (ETH_MIN_MTU .. the largest frame netback takes)
MTU_RANGE = (68, 65535)
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
# libxlu_vif.c's two regular expressions
_RATE = re.compile(r"^[0-9]+[GMK]?[Bb]/s$")
_INTERVAL = re.compile(r"^[0-9]+[mu]?s?$")
#: QEMU user networking's guest network (slirp's default ``net=``) and the addresses in it
#: that are not the guest's: the network, its gateway (the host), its DNS, the broadcast
USER_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
USER_NETWORK_RESERVED = frozenset(
    ipaddress.IPv4Address(a) for a in ("10.0.2.0", "10.0.2.2", "10.0.2.3", "10.0.2.255"))
HOSTFWD_PROTOCOLS = ("tcp", "udp")
_HOSTFWD_EXAMPLE = "e.g. hostfwd=tcp:127.0.0.1:2222-:22"
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
DEFAULT_RATE_INTERVAL_USECS = 50_000


@dataclass(frozen=True)
class HostForward:
    """One ``hostfwd=`` port forward of QEMU user networking (QEMU's net/slirp.c syntax)."""

    protocol: str
    #: None: not given (the planner decides; QEMU's own default is every address)
    host_address: str | None
    host_port: int
    guest_port: int
    #: None: the guest's address from slirp's DHCP (10.0.2.15)
    guest_address: str | None = None

    def __str__(self) -> str:
        """``PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT``, what QEMU's hostfwd= reads;
        :func:`parse_hostfwd` gives the forward back."""
        return (f"{self.protocol}:{self.host_address or ''}:{self.host_port}-"
                f"{self.guest_address or ''}:{self.guest_port}")


def _port(text: str, what: str, where: str, spec: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise SpecError(f"{where}: hostfwd={spec!r}: {what} {text!r} is not a port number "
                   f"(1..65535; {_HOSTFWD_EXAMPLE})")
    port = int(text)
    if not 1 <= port <= 65535:
        raise SpecError(f"{where}: hostfwd={spec!r}: {what} {port} is out of range (1..65535)")
    return port


def _ipv4(text: str, what: str, where: str, spec: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise SpecError(f"{where}: hostfwd={spec!r}: {what} {text!r} is not an IPv4 address "
                        "(QEMU 7.2's user networking forwards IPv4 only)") from None


def parse_hostfwd(text: str, where: str = "hostfwd") -> HostForward:
    """``[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`` as QEMU's slirp_hostfwd reads
    it, with pvhvm's stricter checks (dotted-quad IPv4, ports 1..65535, a guest address in
    QEMU's user network); raise SpecError naming the bad part."""
    host, dash, guest = text.partition("-")
    host_parts = host.split(":")
    guest_parts = guest.split(":")
    if not dash or len(host_parts) != 3 or len(guest_parts) != 2:
        raise SpecError(f"{where}: hostfwd={text!r} is not [tcp|udp]:[HOSTADDR]:HOSTPORT-"
                        f"[GUESTADDR]:GUESTPORT ({_HOSTFWD_EXAMPLE})")
    protocol, host_address, host_port = host_parts
    guest_address, guest_port = guest_parts
    protocol = protocol or "tcp"
    if protocol not in HOSTFWD_PROTOCOLS:
        raise SpecError(f"{where}: hostfwd={text!r}: protocol {protocol!r} is not one of "
                        f"{', '.join(HOSTFWD_PROTOCOLS)}")
    if host_address:
        _ipv4(host_address, "host address", where, text)
    if guest_address:
        address = _ipv4(guest_address, "guest address", where, text)
        if address not in USER_NETWORK or address in USER_NETWORK_RESERVED:
            raise SpecError(
                f"{where}: hostfwd={text!r}: guest address {guest_address} is not a guest's "
                f"address in QEMU's user network ({USER_NETWORK}, without .0 .2 .3 .255); "
                "leave it empty for the guest's own (10.0.2.15)")
    return HostForward(
        protocol=protocol, host_address=host_address or None,
        host_port=_port(host_port, "host port", where, text),
        guest_address=guest_address or None,
        guest_port=_port(guest_port, "guest port", where, text),
    )


@dataclass(frozen=True)
class VifSpec:
    """One parsed ``vif=`` entry; unset fields are decided by the planner."""

    mac: str | None = None
    bridge: str | None = None
    ip: str | None = None
    script: str | None = None
    type: str | None = None
    vifname: str | None = None
    #: as written (``10MB/s@20ms``); :func:`parse_rate` gives netback's form
    rate: str | None = None
    model: str | None = None
    backend: str | None = None
    gatewaydev: str | None = None
    forwarddev: str | None = None
    accel: str | None = None
    mtu: int | None = None
    devid: int | None = None
    trusted: bool | None = None
    #: pvhvm's port forwards (QEMU user networking), in the order given
    hostfwd: tuple[HostForward, ...] = ()

    @property
    def xl_only(self) -> str | None:
        """What in the spec only xl reads (xl-network-configuration(5) keys xend never had,
        ``type=vif``), or None: evidence of an xl file."""
        for key in ("devid", "mtu", "gatewaydev", "forwarddev"):
            if getattr(self, key) is not None:
                return f"{key}="
        if self.trusted is not None:
            return "trusted" if self.trusted else "untrusted"
        return "type=vif" if self.type == "vif" else None


@dataclass(frozen=True)
class Rate:
    """A vif's credit-based rate limit as libxl keeps it (libxl_device_nic)."""

    bytes_per_interval: int
    interval_usecs: int

    def backend_value(self) -> str:
        """The backend ``rate`` node netback reads: ``bytes,usecs`` (libxl_nic.c)."""
        return f"{self.bytes_per_interval},{self.interval_usecs}"


def _strtoull(text: str) -> tuple[int, str]:
    """C strtoull(text, &end, 0) over a string of decimal digits and more: (value, rest)."""
    digits = re.match(r"[0-9]*", text)
    assert digits is not None
    number = digits.group()
    if len(number) > 1 and number.startswith("0"):  # base 0: a leading 0 means octal
        octal = re.match(r"0[0-7]*", number)
        assert octal is not None
        return int(octal.group(), 8), text[octal.end():]
    return (int(number) if number else 0), text[len(number):]


def parse_rate(text: str, where: str = "rate") -> Rate:
    """Read ``RATE/s[@INTERVAL]`` exactly as libxlutil's xlu_vif_parse_rate does.

    RATE takes ``GB MB KB B`` (bytes) or ``Gb Mb Kb b`` (bits), where K/M/G are powers of
    1000; INTERVAL takes ``s ms us`` (no unit: seconds) and defaults to 50ms. As in C, a
    leading 0 makes a number octal.
    """
    rate, at, interval = text.partition("@")

    def fail(problem: str) -> SpecError:
        return SpecError(
            f"{where}: rate {text!r}: {problem} (e.g. 10MB/s, 100Mb/s, 1MB/s@20ms)"
        )

    if rate == "":
        raise fail("no rate given")
    if not _RATE.match(rate):
        raise fail("not a rate")
    value, rest = _strtoull(rate)
    if value == 0 or value > UINT32_MAX:
        raise fail("the rate is zero or too large")
    value *= {"G": 1000**3, "M": 1000**2, "K": 1000}.get(rest[:1], 1)
    if rest[:1] == "b" or rest[1:2] == "b":
        value //= 8
    usecs = DEFAULT_RATE_INTERVAL_USECS
    if at:
        if not _INTERVAL.match(interval):
            raise fail("the replenishment interval is not a time")
        usecs, rest = _strtoull(interval)
        if usecs == 0 or usecs > UINT32_MAX:
            raise fail("the replenishment interval is zero or too large")
        if rest[:1] in ("s", ""):
            usecs *= 1000 * 1000
        elif rest[:1] == "m":
            usecs *= 1000
        if usecs > UINT32_MAX:
            raise fail("the replenishment interval is too large")
    if value > UINT64_MAX // usecs:
        raise fail("the rate is too large")
    return Rate(bytes_per_interval=value * usecs // 1_000_000, interval_usecs=usecs)


def normalise_mac(text: str, where: str) -> str:
    """Lower-case ``aa:bb:cc:dd:ee:ff``; refuse malformed, all-zero and multicast addresses."""
    if not _MAC.fullmatch(text):
        raise SpecError(f"{where}: MAC address {text!r} is not six hex octets (aa:bb:cc:dd:ee:ff)")
    mac = text.lower()
    if mac == "00:00:00:00:00:00":
        # QEMU takes an all-zero MAC as "none given" and uses its own default instead.
        raise SpecError(f"{where}: MAC address {text!r} is all zeros, not an address")
    if int(mac[:2], 16) & 1:
        raise SpecError(
            f"{where}: MAC address {text!r} is a multicast address (the first octet is odd)"
        )
    return mac


def _integer(where: str, key: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise SpecError(f"{where}: {key}={value!r} is not a whole number")
    number = int(value)
    if key == "mtu" and not MTU_RANGE[0] <= number <= MTU_RANGE[1]:
        raise SpecError(
            f"{where}: mtu={number} is out of range ({MTU_RANGE[0]}..{MTU_RANGE[1]})"
        )
    return number


def parse_vif(spec: str) -> VifSpec:
    """Parse one ``vif=`` entry; raise SpecError naming the bad item and what is allowed."""
    if not isinstance(spec, str):
        raise SpecError(f"vif entry {brief(spec)} is not a string")
    where = f"vif spec {spec!r}"
    values: dict[str, object] = {}
    forwards: list[HostForward] = []
    for tok in tokenize(spec):
        if tok.key is None:
            if tok.value == "":
                continue
            if tok.value in FLAGS:
                if "trusted" in values:
                    raise SpecError(f"{where}: trusted/untrusted given twice")
                values["trusted"] = tok.value == "trusted"
                continue
            raise SpecError(
                f"{where}: {tok.value!r} is not key=value (keys: {', '.join(KEYS)}; "
                f"flags: {', '.join(FLAGS)})"
            )
        key = ALIASES.get(tok.key, tok.key)
        if key not in KEYS:
            raise SpecError(f"{where}: unknown key {tok.key!r} (known: {', '.join(KEYS)})")
        if key in values:
            raise SpecError(f"{where}: {key} given twice")
        if tok.value == "":
            raise SpecError(f"{where}: {tok.key}= needs a value")
        if key == HOSTFWD_KEY:
            forward = parse_hostfwd(tok.value, where)
            if any(forwards_clash(forward, f) for f in forwards):
                raise SpecError(f"{where}: hostfwd={tok.value!r}: {forward.protocol} host "
                                f"port {forward.host_port} is forwarded twice")
            forwards.append(forward)
            continue
        if key in INT_KEYS:
            values[key] = _integer(where, key, tok.value)
        elif key == "mac":
            values[key] = normalise_mac(tok.value, where)
        elif key in IFNAME_KEYS:
            problem = ifname_problem(tok.value)
            if problem is not None:
                raise SpecError(f"{where}: {key}: {problem}")
            values[key] = tok.value
        else:
            if key == "rate":
                parse_rate(tok.value, where)
            values[key] = tok.value
    if forwards:
        values[HOSTFWD_KEY] = tuple(forwards)
    return VifSpec(**values)  # type: ignore[arg-type]


def forwards_clash(one: HostForward, other: HostForward) -> bool:
    """Whether two forwards would listen on the same host socket (an empty host address, or
    0.0.0.0, is every address, so it meets any other of the same protocol and port)."""
    every = (None, "0.0.0.0")
    return (one.protocol == other.protocol and one.host_port == other.host_port
            and (one.host_address in every or other.host_address in every
                 or one.host_address == other.host_address))


def format_vif(vif: VifSpec) -> str:
    """The canonical string of ``vif``; ``parse_vif`` gives ``vif`` back."""
    items = [
        f"{f.name}={getattr(vif, f.name)}"
        for f in fields(vif)
        if f.name not in ("trusted", HOSTFWD_KEY) and getattr(vif, f.name) is not None
    ]
    items += [f"{HOSTFWD_KEY}={forward}" for forward in vif.hostfwd]
    if vif.trusted is not None:
        items.append("trusted" if vif.trusted else "untrusted")
    return ",".join(items)
