"""Typed values of the config keys that reach the device model as structured strings.

Each is read into its typed form here, or refused with one SpecError line saying what is
allowed; the config file reader and the libvirt XML reader both call these, so a value is
validated the same way whichever file it came from (issue 18: nothing reaches QEMU's command
line that pvhvm did not make from a parsed value).

* character devices (``serial=``, ``parallel=``, xl.cfg(5), which xl hands to QEMU's
  ``-serial``: qemu-options.hx "-serial dev"): ``none pty null file:PATH unix:PATH[,server]
  [,nowait] tcp:[HOST]:PORT[,server][,nowait] telnet:[HOST]:PORT[,server][,nowait]
  udp:[HOST]:PORT[@[LOCALHOST]:LOCALPORT]`` (``listen``, which real xl files write after a
  telnet port, is read as ``server``). As QEMU reads them, ``file:`` takes the rest literally
  and ``unix:``/``tcp:``/``telnet:`` options follow commas (``,,`` is a comma in the path);
* VNC listen addresses (``vnclisten``): an IPv4 address, an IPv6 address (``[::1]`` or
  bare), or a host name, with an optional ``:DISPLAY``;
* network interface names (``bridge=``, ``vifname=``): Linux's IFNAMSIZ rules;
* keymaps (``keymap``): the ones QEMU 7.2 ships (pc-bios/keymaps).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

from pvhvm.config.lang import path_problem
from pvhvm.errors import SpecError

#: VNC display N listens on 5900 + N
VNC_BASE_PORT = 5900
MAX_VNC_DISPLAY = 65535 - VNC_BASE_PORT
#: Linux's IFNAMSIZ (16) less the terminating NUL
MAX_IFNAME = 15
#: QEMU 7.2's keymaps (/usr/share/qemu/keymaps, pc-bios/keymaps/meson.build)
KEYMAPS = (
    "ar", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi", "fo", "fr",
    "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv", "mk", "nl", "no",
    "pl", "pt", "pt-br", "ru", "sl", "sv", "th", "tr",
)
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
#: options a ``unix:``/``tcp:`` port may repeat: pvhvm's sockets always listen and never wait
_SOCKET_OPTIONS = ("server", "server=on", "listen", "nowait", "wait=off")
_NETWORK_FORMS = ", tcp:[HOST]:PORT, telnet:[HOST]:PORT or udp:[HOST]:PORT[@[HOST]:PORT]"
CHARDEV_FORMS = "none, pty, null, file:PATH, unix:PATH" + _NETWORK_FORMS


class ChardevKind(Enum):
    """What a serial or parallel port is connected to on the host."""

    NONE = "none"
    PTY = "pty"
    NULL = "null"
    FILE = "file"
    UNIX = "unix"
    TCP = "tcp"
    #: a TCP port speaking telnet (QEMU's ``telnet=on``)
    TELNET = "telnet"
    #: datagrams to HOST:PORT, from LOCALHOST:LOCALPORT
    UDP = "udp"


@dataclass(frozen=True)
class Chardev:
    """A parsed port spec. ``path``: FILE/UNIX; ``host``/``port``: TCP, TELNET, UDP's remote
    end (host bare, no brackets); ``local_host``/``local_port``: UDP's own end."""

    kind: ChardevKind
    path: str | None = None
    host: str | None = None
    port: int | None = None
    local_host: str | None = None
    local_port: int | None = None

    @property
    def spec(self) -> str:
        """The xl spelling, which :func:`parse_chardev` reads back as this Chardev."""
        if self.kind is ChardevKind.FILE:
            return f"file:{self.path}"
        if self.kind is ChardevKind.UNIX:
            assert self.path is not None
            return "unix:" + self.path.replace(",", ",,")
        if self.kind in (ChardevKind.TCP, ChardevKind.TELNET, ChardevKind.UDP):
            text = f"{self.kind.value}:{_bracketed(self.host or '')}:{self.port}"
            if self.kind is ChardevKind.UDP and self.local_port is not None:
                text += f"@{_bracketed(self.local_host or '')}:{self.local_port}"
            return text
        return str(self.kind.value)

    @property
    def creates_file(self) -> bool:
        """Whether QEMU creates (or replaces) something at ``path`` on the host."""
        return self.kind in (ChardevKind.FILE, ChardevKind.UNIX)


def _qemuopts_items(text: str) -> list[str]:
    """QemuOpts' split: items between single commas, ``,,`` a literal comma."""
    items = [""]
    i = 0
    while i < len(text):
        if text.startswith(",,", i):
            items[-1] += ","
            i += 2
        elif text[i] == ",":
            items.append("")
            i += 1
        else:
            items[-1] += text[i]
            i += 1
    return items


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _address(what: str, address: str) -> tuple[str, int]:
    """``[HOST]:PORT`` → (host, port); the host bare (an IPv6 address without brackets),
    empty when left out."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise SpecError(f"{what}: a network port needs HOST:PORT (HOST may be left out), the "
                        "port 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not is_ipv6(host):
            raise SpecError(f"{what}: [{host}] is not an IPv6 address")
    elif host and host_problem(host) is not None:
        raise SpecError(f"{what}: {host_problem(host)}")
    return host, int(port)


def _socket_options(what: str, options: list[str]) -> None:
    for option in options:
        if option not in _SOCKET_OPTIONS:
            raise SpecError(f"{what}: option {option!r} is not supported: pvhvm's socket ports "
                            "always listen (server) and never wait for a client (nowait)")


def parse_chardev(text: str, key: str = "serial", *, tcp: bool = True) -> Chardev:
    """``text`` (a ``serial=`` or ``parallel=`` value) as a Chardev; SpecError naming ``key``
    when it is not one of :data:`CHARDEV_FORMS` (``tcp``: whether TCP is allowed here)."""
    what = f"{key} = {text!r}"
    problem = path_problem(text)
    if problem is not None:
        raise SpecError(f"{key}: {problem}")
    if text in ("none", "pty", "null"):
        return Chardev(ChardevKind(text))
    if text.startswith("file:") and text[5:]:
        return Chardev(ChardevKind.FILE, path=text[5:])
    if text.startswith("unix:") and text[5:]:
        path, *options = _qemuopts_items(text[5:])
        if not path:
            raise SpecError(f"{what}: unix: needs a socket path")
        _socket_options(what, options)
        return Chardev(ChardevKind.UNIX, path=path)
    scheme = text.partition(":")[0]
    if scheme in ("tcp", "telnet") and text.startswith(f"{scheme}:") and tcp:
        address, *options = _qemuopts_items(text[len(scheme) + 1:])
        host, port = _address(what, address)
        _socket_options(what, options)
        return Chardev(ChardevKind(scheme), host=host or "127.0.0.1", port=port)
    if text.startswith("udp:") and tcp:
        remote, at, local = text[4:].partition("@")
        host, port = _address(what, remote)
        local_host, local_port = _address(what, local) if at else ("", None)
        return Chardev(ChardevKind.UDP, host=host or "127.0.0.1", port=port,
                       local_host=local_host or None, local_port=local_port)
    if text == "stdio":
        raise SpecError(f"{what}: QEMU runs under pvhvm's supervisor with no terminal; use pty "
                        "(pvhvm console attaches to the console) or file:PATH")
    forms = CHARDEV_FORMS if tcp else "none, pty, null, file:PATH or unix:PATH"
    raise SpecError(f"{what} is not supported (use {forms})")


def is_ipv6(text: str) -> bool:
    """An IPv6 address with no scope (``%zone``, which could hold anything)."""
    if "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def host_problem(host: str) -> str | None:
    """Why ``host`` is not an IPv4 address or a host name (RFC 1123), or None."""
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        pass
    labels = host.split(".")
    numeric = all(label.isascii() and label.isdigit() for label in labels)
    if len(host) > 253 or numeric or not all(_LABEL.fullmatch(label) for label in labels):
        return (f"{host!r} is not an IPv4 address, an IPv6 address in [brackets] or a host "
                "name")
    return None


def parse_vnc_listen(text: str, key: str = "vnclisten") -> tuple[str, int | None]:
    """``vnclisten`` (xl.cfg(5)): an address with an optional ``:DISPLAY`` → (host, display).
    The host is bare (an IPv6 address without brackets)."""
    what = f"{key} = {text!r}"
    allowed = ("an IPv4 address, an IPv6 address ([::1]) or a host name, with an optional "
               ":DISPLAY")
    display: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not is_ipv6(host):
            raise SpecError(f"{what} is not {allowed}")
        if rest:
            if not rest.startswith(":"):
                raise SpecError(f"{what} is not {allowed}")
            display = rest[1:]
    elif is_ipv6(text):
        host = text
    else:
        host, sep, display_text = text.rpartition(":")
        if not sep:
            host = text
        else:
            display = display_text
        if host_problem(host) is not None:
            raise SpecError(f"{what} is not {allowed}")
    if display is None:
        return host, None
    return host, vnc_display(display, key)


def vnc_display(text: str | int, key: str = "vncdisplay") -> int:
    """A VNC display number: 0..59635 (port 5900 + N)."""
    value = str(text).strip()
    if isinstance(text, bool) or not (value.isascii() and value.isdigit()) or \
            int(value) > MAX_VNC_DISPLAY:
        raise SpecError(f"{key}: {str(text)!r} is not a VNC display number "
                        f"(0..{MAX_VNC_DISPLAY})")
    return int(value)


def ifname_problem(name: str) -> str | None:
    """Why ``name`` cannot name a network interface (Linux dev_valid_name: 1-15 bytes, not
    ``.``/``..``, no ``/``, ``:`` or white space; pvhvm also refuses ``,``, ``=`` and
    control characters), or None."""
    if not name or len(name.encode()) > MAX_IFNAME or name in (".", ".."):
        return f"{name!r} is not an interface name (1-{MAX_IFNAME} bytes)"
    if any(not ch.isprintable() or ch.isspace() or ch in "/:,=" for ch in name):
        return (f"{name!r} is not an interface name (no white space, control characters, "
                "'/', ':', ',' or '=')")
    return None


def keymap_problem(keymap: str) -> str | None:
    """Why ``keymap`` is not one of QEMU's keymaps, or None."""
    if keymap in KEYMAPS:
        return None
    return f"keymap {keymap!r} is not one of QEMU's keymaps ({', '.join(KEYMAPS)})"
