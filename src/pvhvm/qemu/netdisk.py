"""Network disk targets as QEMU ``-blockdev`` options (QEMU 7.2's block drivers, qapi/block-core).

:func:`blockdev_options` is pure: a network URL (config.disk.network_url) becomes the JSON
document ``-blockdev`` takes, a format node over a protocol node, or a one-line PlanError that
names what can serve it instead. The drivers it may use are given by the caller;
:func:`available_drivers` asks a real ``qemu-img`` which of them this host's QEMU has (Debian
builds rbd, iscsi, curl, ssh, gluster and nfs as modules in qemu-block-extra; nbd is built in).

Spellings read (QEMU's own filename syntax and URLs, as ``qemu-img`` takes them):

* ``nbd://host[:port]/export``, ``nbd+unix:///export?socket=PATH``, ``nbd:host:port``,
  ``nbd:unix:PATH``, each optionally ``:exportname=NAME`` in the colon forms;
* ``rbd:pool[/namespace]/image[@snapshot][:id=USER][:conf=FILE]``;
* ``iscsi://[user@]host[:port]/target-iqn/lun``;
* ``http[s]://...``, ``ftp[s]://...`` (QEMU's curl driver: read-only);
* ``ssh://[user@]host[:port]/path``; ``gluster[+tcp]://host[:port]/volume/path``;
  ``nfs://host/path``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from pvhvm.errors import PlanError
from pvhvm.qemu.opts import OptionPair

#: QEMU block driver per URL scheme (``nbd:``/``rbd:`` colon forms are handled apart)
SCHEME_DRIVERS = {
    "nbd": "nbd", "nbd+tcp": "nbd", "nbd+unix": "nbd", "iscsi": "iscsi", "iser": "iscsi",
    "http": "http", "https": "https", "ftp": "ftp", "ftps": "ftps", "ssh": "ssh",
    "gluster": "gluster", "gluster+tcp": "gluster", "gluster+unix": "gluster", "nfs": "nfs",
}
#: the Debian package that has QEMU's module for a driver (nbd is built in)
DEBIAN_MODULE_PACKAGE = "qemu-block-extra"
NBD_PORT = 10809
ISCSI_PORT = 3260
GLUSTER_PORT = 24007
#: xl's format names -> QEMU format drivers
FORMAT_DRIVERS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "qed": "qed"}
READ_ONLY_DRIVERS = frozenset({"http", "https", "ftp", "ftps"})


def _digits(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes other scripts' digits, which int() refuses)."""
    return text.isascii() and text.isdigit()


def _fail(url: str, message: str) -> PlanError:
    return PlanError(f"network disk {url!r}: {message}")


def driver_of(url: str) -> str:
    """The QEMU block driver that serves ``url``."""
    if url.startswith("rbd:"):
        return "rbd"
    if url.startswith("nbd:") and not url.startswith("nbd://"):
        return "nbd"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    driver = SCHEME_DRIVERS.get(scheme)
    if driver is None:
        raise _fail(url, f"no QEMU block driver for {scheme or 'this target'!r}")
    return driver


def _urlsplit(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as err:  # an unbalanced [ in the host, ...
        raise _fail(url, f"not a URL ({err})") from err


def _split_host_port(url: str, netloc: str, default: int) -> tuple[str, int]:
    """``[user@]host[:port]`` or ``[user@][v6addr][:port]`` -> (host, port)."""
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise _fail(url, "no host given")
    if port and not _digits(port):
        raise _fail(url, f"port {port!r} is not a number")
    return host, int(port) if port else default


def _nbd(url: str) -> dict[str, Any]:
    if "://" not in url:  # nbd:host:port[:exportname=X] or nbd:unix:/path[:exportname=X]
        body = url[len("nbd:"):]
        body, _, export = body.partition(":exportname=")
        if body.startswith("unix:"):
            server: dict[str, Any] = {"type": "unix", "path": body[len("unix:"):]}
        else:
            host, _, port = body.rpartition(":")
            if not host or not _digits(port):
                raise _fail(url, "nbd:HOST:PORT or nbd:unix:PATH expected")
            server = {"type": "inet", "host": host, "port": port}
        options: dict[str, Any] = {"driver": "nbd", "server": server}
        if export:
            options["export"] = export
        return options
    parts = _urlsplit(url)
    export = unquote(parts.path.lstrip("/"))
    if parts.scheme == "nbd+unix":
        socket = parse_qs(parts.query).get("socket")
        if not socket:
            raise _fail(url, "nbd+unix:// needs ?socket=PATH")
        server = {"type": "unix", "path": socket[0]}
    else:
        host, number = _split_host_port(url, parts.netloc, NBD_PORT)
        server = {"type": "inet", "host": host, "port": str(number)}
    options = {"driver": "nbd", "server": server}
    if export:
        options["export"] = export
    return options


def _rbd(url: str) -> dict[str, Any]:
    body, *opts = url[len("rbd:"):].split(":")
    names, _, snapshot = body.partition("@")
    path = names.split("/")
    if len(path) not in (2, 3) or not all(path):
        raise _fail(url, "rbd:POOL[/NAMESPACE]/IMAGE expected")
    options: dict[str, Any] = {"driver": "rbd", "pool": path[0], "image": path[-1]}
    if len(path) == 3:
        options["namespace"] = path[1]
    if snapshot:
        options["snapshot"] = snapshot
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key == "id" and sep:
            options["user"] = value
        elif key == "conf" and sep:
            options["conf"] = value
        else:
            raise _fail(url, f"rbd option {opt!r} is not supported here (only id= and conf=)")
    return options


def _iscsi(url: str) -> dict[str, Any]:
    parts = _urlsplit(url)
    if parts.password is not None:
        raise _fail(url, "an iSCSI password in the URL is not supported; use CHAP via the "
                    "initiator's configuration")
    host, port = _split_host_port(url, parts.netloc, ISCSI_PORT)
    target, _, lun = parts.path.lstrip("/").partition("/")
    if not target:
        raise _fail(url, "iscsi://HOST[:PORT]/TARGET-IQN/LUN expected")
    if lun and not _digits(lun):
        raise _fail(url, f"LUN {lun!r} is not a number")
    options: dict[str, Any] = {
        "driver": "iscsi", "transport": "iser" if parts.scheme == "iser" else "tcp",
        "portal": f"{host}:{port}", "target": target, "lun": int(lun or 0),
    }
    if parts.username:
        options["user"] = unquote(parts.username)
    return options


def _ssh(url: str) -> dict[str, Any]:
    parts = _urlsplit(url)
    host, port = _split_host_port(url, parts.netloc, 22)
    if not parts.path:
        raise _fail(url, "ssh://[USER@]HOST[:PORT]/PATH expected")
    options: dict[str, Any] = {"driver": "ssh", "server": {"host": host, "port": str(port)},
                               "path": unquote(parts.path)}
    if parts.username:
        options["user"] = unquote(parts.username)
    return options


def _gluster(url: str) -> dict[str, Any]:
    parts = _urlsplit(url)
    host, port = _split_host_port(url, parts.netloc, GLUSTER_PORT)
    volume, _, path = parts.path.lstrip("/").partition("/")
    if not volume or not path:
        raise _fail(url, "gluster://HOST[:PORT]/VOLUME/PATH expected")
    return {"driver": "gluster", "volume": volume, "path": path,
            "server": [{"type": "inet", "host": host, "port": str(port)}]}


def _nfs(url: str) -> dict[str, Any]:
    parts = _urlsplit(url)
    host, _ = _split_host_port(url, parts.netloc, 2049)
    if not parts.path:
        raise _fail(url, "nfs://HOST/PATH expected")
    return {"driver": "nfs", "server": {"type": "inet", "host": host},
            "path": unquote(parts.path)}


def protocol_options(url: str) -> dict[str, Any]:
    """The protocol node's ``-blockdev`` options for ``url`` (no format, no node name)."""
    driver = driver_of(url)
    if driver == "nbd":
        return _nbd(url)
    if driver == "rbd":
        return _rbd(url)
    if driver == "iscsi":
        return _iscsi(url)
    if driver == "ssh":
        return _ssh(url)
    if driver == "gluster":
        return _gluster(url)
    if driver == "nfs":
        return _nfs(url)
    return {"driver": driver, "url": url}


def blockdev_options(
    url: str, *, node_name: str, format: str = "raw", read_only: bool = False,
    drivers: Collection[str],
) -> dict[str, Any]:
    """``-blockdev`` JSON for a disk served by ``url``: a format node over the protocol node.

    ``drivers`` are the block drivers this QEMU has (:func:`available_drivers`); a target
    whose driver is missing, or that cannot be opened as asked, is one PlanError line.
    """
    driver = driver_of(url)
    if driver not in drivers:
        hint = "" if driver == "nbd" else (
            f" (Debian: apt-get install {DEBIAN_MODULE_PACKAGE})"
        )
        raise _fail(
            url,
            f"this QEMU has no {driver} block driver{hint}; on the xen platform give it to "
            "qdisk (backendtype=qdisk), or export it to a file or nbd:// first",
        )
    if driver in READ_ONLY_DRIVERS and not read_only:
        raise _fail(url, f"QEMU's {driver} driver is read-only; give access=r or make it a "
                    "cdrom")
    if format not in FORMAT_DRIVERS:
        raise _fail(url, f"format {format!r} has no QEMU driver over a network target")
    protocol = protocol_options(url)
    protocol["node-name"] = f"{node_name}-file"
    options: dict[str, Any] = {
        "driver": FORMAT_DRIVERS[format], "node-name": node_name, "file": protocol,
    }
    if read_only:
        options["read-only"] = True
        protocol["read-only"] = True
    return options


def available_drivers(
    candidates: Iterable[str] = frozenset(SCHEME_DRIVERS.values()) | {"rbd"},
    qemu_img: str = "qemu-img",
) -> frozenset[str]:
    """Which of ``candidates`` this host's QEMU can load, asked of ``qemu-img`` itself.

    ``qemu-img info --image-opts driver=NAME`` says "Unknown driver" when neither the build
    nor an installed module has NAME; any other complaint (no server given) means it has it.
    """
    found: set[str] = set()
    for driver in set(candidates):
        try:
            proc = subprocess.run(
                [qemu_img, "info", "--image-opts", f"driver={driver}"],
                capture_output=True, text=True, timeout=30, check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "Unknown driver" not in proc.stderr and "Unknown protocol" not in proc.stderr:
            found.add(driver)
    return frozenset(found)


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(f"{prefix}.{key}", item)]
    if isinstance(value, list):
        return [pair for i, item in enumerate(value) for pair in _flatten(f"{prefix}.{i}", item)]
    if isinstance(value, bool):
        return [(prefix, "on" if value else "off")]
    return [(prefix, str(value))]


def drive_options(
    url: str, *, format: str = "raw", read_only: bool = False, drivers: Collection[str],
) -> list[OptionPair]:
    """The node of :func:`blockdev_options` as ``-drive`` pairs (``format=qcow2``,
    ``file.driver=nbd``, ``file.server.host=...``), for qemu.opts.option_string."""
    options = blockdev_options(url, node_name="unused", format=format, read_only=read_only,
                               drivers=drivers)
    protocol = {k: v for k, v in options["file"].items() if k not in ("node-name", "read-only")}
    items: list[OptionPair] = [("format", options["driver"])]
    items += _flatten("file", protocol)
    if read_only:
        items.append(("readonly", True))
    return items
