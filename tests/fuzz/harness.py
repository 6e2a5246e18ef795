"""Fuzz targets and input strategies (issue 13): config -> plan, disk, vif, XenStore codec.

Each target takes one input and returns None when pvhvm behaved (a value, or one of its
own one-line errors) or a short description of a finding: any other exception, an error
message that spans lines, a Python warning, or more than ``SLOW`` seconds. Targets never
raise, so a long run keeps going past findings; `run_fuzz.py` runs them for a count or a
time and prints the figures, and test_fuzz.py runs a few hundred inputs of each in CI.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from pvhvm.config.disk import parse_disk
from pvhvm.config.domain import config_from_text
from pvhvm.config.vif import parse_vif
from pvhvm.errors import PvhvmError
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.xenstore.quota import Quota
from pvhvm.xenstore.server import XenStore, reply
from pvhvm.xenstore.wire import Packet, Parser, Permission, encode

SLOW = 1.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _check(run: Callable[[], Any]) -> str | None:
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run()
        except PvhvmError as err:
            if "\n" in str(err) or "\r" in str(err):
                return f"multi-line error: {str(err)[:120]!r}"
        except Exception as err:  # a finding, reported rather than raised
            return f"{type(err).__name__}: {str(err)[:120]}"
    if caught:
        return f"Python warning: {caught[0].message}"
    if time.monotonic() - started > SLOW:
        return f"slow: {time.monotonic() - started:.1f} s"
    return None


# --- config -> plan -------------------------------------------------------------------------

def config_to_plan(text: str) -> str | None:
    """Parse, type and plan ``text``: for QEMU and Xen without looking at files, and for
    QEMU checking that they exist (``imagedir`` is given, as the examples need it)."""
    def run() -> None:
        config = config_from_text(text, "fuzz.cfg", {"imagedir": "/nonexistent/img"})
        for platform, check_files in ((Platform.QEMU, False), (Platform.XEN, False),
                                      (Platform.QEMU, True)):
            try:
                make_plan(config, platform, check_files=check_files)
            except PvhvmError as err:  # each variant is tried, not only the first
                if "\n" in str(err) or "\r" in str(err):
                    raise
    return _check(run)


_SEEDS = sorted(p.read_text() for p in EXAMPLES.glob("*.cfg"))
_ODD = ["\x00", "\n", "\x1b[31m", "\\", "'", '"', "%", "%s", "%(x)s", ",", "=", ":", "/",
        "\u00e9", "\U0001f600", " ", "0", "0x", "-", "..", "@", "unix:", "pty", "file:"]
_text = st.lists(st.sampled_from(_ODD) | st.characters(codec="utf-8"), max_size=12).map("".join)
_value = st.recursive(
    st.one_of(_text.map(repr), st.integers(-2**70, 2**70).map(str),
              st.sampled_from(["True", "None", "0512", "09", "1.5", "1if 1 else 2", "0x1for",
                               "name", "memory", "t", "(t, t)", "[t, t]", "'%s' % (t,)"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(lambda xs: f"[{', '.join(xs)}]"),
                            st.tuples(inner, st.sampled_from([" + ", " % "]), inner)
                            .map("".join)),
    max_leaves=6,
)
_KEYS = ["name", "memory", "vcpus", "builder", "type", "kernel", "ramdisk", "extra", "root",
         "boot", "disk", "vif", "serial", "vnc", "on_crash", "uuid", "device_model", "t",
         "maxmem", "cmdline", "xen_platform_pci"]
_plain_line = st.tuples(st.sampled_from(_KEYS), _value).map(lambda kv: f"{kv[0]} = {kv[1]}")
_PATH_LINES = ["serial = {!r}", "kernel = {!r}", "ramdisk = {!r}", "device_model = {!r}",
               "disk = [{!r} + ',hda,w']", "disk = ['format=raw, vdev=xvda, target=' + {!r}]",
               "vif = ['script=' + {!r}]", "serial = 'unix:' + {!r}", "serial = 'file:' + {!r}"]
_path_line = st.tuples(st.sampled_from(_PATH_LINES), _text).map(
    lambda lt: lt[0].format("/tmp/" + lt[1]))
_line = _plain_line | _path_line


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A seed config with lines added, replaced or cut, or bytes flipped."""
    lines = draw(st.sampled_from(_SEEDS)).splitlines()
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["add", "replace", "cut", "flip"]))
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        if action == "add":
            lines.insert(at, draw(_line))
        elif action == "replace" and lines:
            lines[at] = draw(_line)
        elif action == "cut" and lines:
            del lines[at]
        elif lines:
            text = lines[at]
            cut = draw(st.integers(0, len(text)))
            lines[at] = text[:cut] + draw(_text) + text[cut:]
    return "name = 'fuzz'\n" + "\n".join(lines) + "\n"


# --- disk and vif specs ---------------------------------------------------------------------

_DISK_TOKENS = ["phy:", "file:", "tap:aio:", "tap:qcow2:", "qcow2:", "iscsi:", "nbd:", "drbd:",
                "ioemu:", "/img/a.img", "/dev/vg/lv", "hda", "hdc", "xvda", "sda", "d0p1",
                "51712", ":cdrom", "cdrom", "r", "w", "w!", "rw", "ro", "raw", "qcow2", "vhd",
                "empty", "format=", "vdev=", "access=", "devtype=", "target=", "backend=",
                "backendtype=", "script=", "type=", "ioemu", "xenbus", "virtio", "discard",
                "no-discard", "trusted", ",", ",", ",", "=", ":", " ", "\x00", "\n", "%"]
_VIF_TOKENS = ["mac=", "bridge=", "ip=", "script=", "type=", "vifname=", "rate=", "model=",
               "backend=", "ioemu", "xenbus", "netfront", "vif", "e1000", "rtl8139",
               "00:16:3e:00:00:01", "aa:bb", "xenbr0", "10.0.0.1", "10MB/s", "0", ",", ",",
               "=", " ", "\x00", "\n", "ff:ff:ff:ff:ff:ff"]
disk_specs = st.lists(st.sampled_from(_DISK_TOKENS) | st.text(max_size=4),
                      max_size=12).map("".join)
vif_specs = st.lists(st.sampled_from(_VIF_TOKENS) | st.text(max_size=4), max_size=12).map("".join)


def disk(spec: str) -> str | None:
    """``parse_disk``: a DiskSpec or a SpecError."""
    return _check(lambda: parse_disk(spec))


def vif(spec: str) -> str | None:
    """``parse_vif``: a VifSpec or a SpecError."""
    return _check(lambda: parse_vif(spec))


# --- XenStore codec and server ------------------------------------------------------------

_PATHS = [b"/", b"/a", b"/a/b", b"a", b"@introduceDomain", b"/local/domain/1/x", b"//",
          b"/a/", b"\xff", b""]


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A stream of XenStore messages: well-formed ones with odd payloads, plus raw bytes."""
    out = b""
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            op = draw(st.integers(0, 30) | st.integers(0, 2**32 - 1))
            strings = draw(st.lists(st.sampled_from(_PATHS) | st.binary(max_size=12),
                                    max_size=4))
            payload = b"\0".join(strings) + draw(st.sampled_from([b"", b"\0"]))
            out += encode(op, payload[:4096], req_id=draw(st.integers(0, 2**32 - 1)),
                          tx_id=draw(st.integers(0, 3)))
        else:
            out += draw(st.binary(max_size=40))
    return out


def xenstore(stream: bytes, chunk: int = 7) -> str | None:
    """Feed ``stream`` in ``chunk``-byte pieces to a parser; answer every packet with a
    fresh store as dom0 and as an unprivileged domain; round-trip what decodes."""
    def run() -> None:
        store = XenStore(Quota())
        dom0, guest = store.connect(), store.connect(3, as_domain=True)
        parser = Parser()
        for start in range(0, len(stream), chunk):
            done, error = parser.feed_until_error(stream[start:start + chunk])
            for packet in done:
                assert Parser().feed(packet.encode()) == [packet], "round trip"
                for conn in (dom0, guest):
                    for effect in reply(store, conn, packet):
                        sent = getattr(effect, "packet", None)
                        if isinstance(sent, Packet):
                            assert len(sent.payload) <= 4096, "reply over PAYLOAD_MAX"
                            sent.encode()
            if error is not None:
                break
    return _check(run)


def permission(text: bytes) -> str | None:
    """``Permission.parse``: a permission or a XenStoreProtocolError (never another error)."""
    return _check(lambda: Permission.parse(text))


permission_texts = st.tuples(st.sampled_from([b"r", b"w", b"b", b"n", b"x", b""]),
                             st.binary(max_size=8)).map(b"".join)

#: name -> (target, strategy)
TARGETS: dict[str, tuple[Callable[[Any], str | None], st.SearchStrategy[Any]]] = {
    "config->plan": (config_to_plan, configs()),
    "disk": (disk, disk_specs),
    "vif": (vif, vif_specs),
    "xenstore codec+server": (xenstore, packets()),
    "permission strings": (permission, permission_texts),
}


# --- plain random inputs: the same alphabets without hypothesis, for long, fast runs -------

def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ODD) if rng.random() < 0.6 else chr(rng.randrange(0x20, 0x3000))
                   for _ in range(rng.randrange(12)))


def _random_value(rng: random.Random, depth: int = 0) -> str:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return "[" + ", ".join(_random_value(rng, depth + 1) for _ in range(rng.randrange(4))) + "]"
    if depth < 3 and roll < 0.35:
        return f"{_random_value(rng, depth + 1)} {rng.choice('+%')} {_random_value(rng, depth + 1)}"
    if roll < 0.6:
        return repr(_random_text(rng))
    if roll < 0.75:
        return str(rng.randrange(-2**70, 2**70) if rng.random() < 0.2 else rng.randrange(-9, 5000))
    return rng.choice(["True", "None", "0512", "09", "1.5", "1if 1 else 2", "0x1for", "name",
                       "memory", "t", "(t, t)", "[t, t]", "'%s' % (t,)"])


def random_config(rng: random.Random) -> str:
    lines = rng.choice(_SEEDS).splitlines()
    for _ in range(rng.randrange(7)):
        at = rng.randrange(max(1, len(lines)))
        action = rng.choice(["add", "replace", "cut", "flip", "path"])
        line = f"{rng.choice(_KEYS)} = {_random_value(rng)}"
        if action == "path":
            line = rng.choice(_PATH_LINES).format("/tmp/" + _random_text(rng))
        if action in ("add", "path"):
            lines.insert(at, line)
        elif action == "replace" and lines:
            lines[at] = line
        elif action == "cut" and lines:
            del lines[at]
        elif lines:
            cut = rng.randrange(len(lines[at]) + 1)
            lines[at] = lines[at][:cut] + _random_text(rng) + lines[at][cut:]
    return "name = 'fuzz'\n" + "\n".join(lines) + "\n"


def _random_spec(rng: random.Random, tokens: list[str]) -> str:
    return "".join(rng.choice(tokens) if rng.random() < 0.85 else _random_text(rng)[:4]
                   for _ in range(rng.randrange(13)))


def random_packets(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randrange(1, 9)):
        if rng.random() < 0.7:
            op = rng.randrange(31) if rng.random() < 0.9 else rng.randrange(2**32)
            strings = [rng.choice(_PATHS) if rng.random() < 0.6
                       else rng.randbytes(rng.randrange(12)) for _ in range(rng.randrange(5))]
            payload = b"\0".join(strings) + rng.choice([b"", b"\0"])
            out += encode(op, payload[:4096], req_id=rng.randrange(2**32), tx_id=rng.randrange(4))
        else:
            out += rng.randbytes(rng.randrange(40))
    return out


#: name -> a function making one random input
RANDOM_INPUTS: dict[str, Callable[[random.Random], Any]] = {
    "config->plan": random_config,
    "disk": lambda rng: _random_spec(rng, _DISK_TOKENS),
    "vif": lambda rng: _random_spec(rng, _VIF_TOKENS),
    "xenstore codec+server": random_packets,
    "permission strings": lambda rng: rng.choice([b"r", b"w", b"b", b"n", b"x", b""])
    + rng.randbytes(rng.randrange(8)),
}
