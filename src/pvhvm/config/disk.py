"""The ``disk=`` spec grammar: xl-disk-configuration(5), its deprecated xend form, and ``type=``.

Two spellings are accepted, and may be mixed as xl mixes them:

* xl form: positionals ``target, format, vdev, access`` among ``key=value`` items and flags;
  ``target=`` eats the rest of the string, so it comes last.
* xend form: ``[prefix:]target,vdev[:cdrom],mode[,backend-domain]``. A deprecated prefix on
  the target (``phy: file: tap:aio: raw: qcow2: iscsi: ...``) makes the second positional the
  vdev, as does an empty target (``,hdc:cdrom,r``, an empty CD drive) or a second positional
  that names a disk rather than a format.

The RFC's extension: ``type=ioemu|xenbus`` (emulated or PV) in either spelling, and the legacy
``ioemu:`` prefix on the vdev (``ioemu:hda``), which means ``type=ioemu``.

As libxlutil (libxlu_disk.c) makes them: a cdrom is always read-only, and an empty cdrom
drive's format is ``empty`` in every spelling (``,,hdc:cdrom,r``, ``devtype=cdrom,,,hdc``,
``,empty,hdc:cdrom,r``, ``format=empty``). As libxl refuses them at create
(libxl_device.c): an empty drive that is not a cdrom, and ``format=empty`` with a target.

Network targets (:func:`network_url`) name a block device a network protocol serves, not a
file: QEMU's own filename syntax ``rbd:pool/image``, ``nbd:host:port``, and URLs
(``nbd://``, ``iscsi://``, ``http(s)://``, ...). xl reads a leading ``nbd:``/``iscsi:`` as a
deprecated prefix (script ``block-nbd``/``block-iscsi``, target ``//host/...``); pvhvm reads
it the same way and still knows the URL.

tests/xen/test_xl_peer.py runs Xen 4.17's own parser (libxlutil) beside this one. They agree
except where pvhvm follows xend or a newer xl on purpose: ``type=``; the xend form without a
prefix (``/img,hda,w``) and with a 4th positional backend domain; ``phy:vg/lv`` meaning
``/dev/vg/lv``; ``w!``; the ``trusted``/``untrusted`` flags (newer than Debian's 4.17);
blanks around items; a parameter given twice, even in two spellings or with one value (xl lets
the last win or allows the same value again); what libxl refuses at create (above, and an empty
vdev); a URL target given as a positional; an empty positional (``/img,,hda,format=qcow2``: xl
counts the empty format as raw and then refuses format= as a respecification);
``vdev=hdc:cdrom`` read as ``hdc`` and a cdrom; a ``target=`` value beginning with a deprecated
prefix is refused (xl takes target= literally and would look for a file named ``phy:/dev/x``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum

from pvhvm.config.optstr import Token, brief, tokenize
from pvhvm.errors import SpecError

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
#: libxl's format of an empty (cdrom) drive
EMPTY_FORMAT = "empty"
BACKEND_TYPES = ("phy", "qdisk", "tap", "standalone")
#: prefix -> what it implies; a prefix may be stacked (``tap:aio:``)
FORMAT_PREFIXES = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vhd"}
SCRIPT_PREFIXES = ("iscsi", "nbd", "enbd", "drbd")
IGNORED_PREFIXES = ("tapdisk", "tap2", "tap", "aio", "ioemu", "file", "phy")
FLAGS = ("discard", "no-discard", "cdrom", "trusted", "untrusted", "direct-io-safe")
DEVTYPES = ("cdrom", "disk")
KEYS = (
    "target", "format", "vdev", "access", "devtype", "backendtype", "backend", "script",
    "type",
)
_VDEV_WORD = re.compile(r"^(?:ioemu:)?(?:xvd|hd|sd)[a-z]+[0-9]*(?::cdrom|:disk)?$")
_PREFIX = re.compile(r"^([a-z0-9]+):")
_VDEV_CHARS = re.compile(r"^[A-Za-z0-9_]+$")
#: URL schemes of QEMU 7.2's network block drivers (nbd, iscsi, curl, ssh, gluster, nfs)
NETWORK_SCHEMES = (
    "nbd", "nbd+tcp", "nbd+unix", "iscsi", "iser", "http", "https", "ftp", "ftps", "ssh",
    "gluster", "gluster+tcp", "gluster+unix", "nfs",
)
_URL = re.compile(r"^([a-z][a-z0-9+]*)://")
#: the deprecated prefixes whose hotplug script takes what QEMU's driver of that name takes
_NETWORK_SCRIPTS = {"block-nbd": "nbd", "block-iscsi": "iscsi"}
#: QEMU's legacy nbd address: ``host:port`` or ``unix:/path``, then ``:exportname=NAME``
_NBD_ADDRESS = re.compile(r"^(?:unix:/[^:]+|[^/:\s]+:[0-9]+)(?::exportname=.+)?$")


def network_url(target: str, script: str | None = None) -> str | None:
    """The network block device ``target`` names, in QEMU's spelling, or None for a file.

    ``rbd:pool/image[@snap][:opt=val]`` and ``nbd:host:port`` / ``nbd:unix:/path`` are QEMU's
    own filename syntax; ``scheme://...`` a URL of one of :data:`NETWORK_SCHEMES`. A target
    left by xl's ``nbd:``/``iscsi:`` prefix (script ``block-nbd``, target ``//host/export``
    or ``host:port``) is given its scheme back; an iSCSI IQN for the ``block-iscsi`` script
    names no portal, so it stays script-backed.
    """
    scheme = _NETWORK_SCRIPTS.get(script or "")
    if scheme is not None:
        if target.startswith("//"):
            return f"{scheme}:{target}"
        if scheme == "nbd" and _NBD_ADDRESS.match(target):
            return f"nbd:{target}"
        return None
    if script is not None:
        return None
    match = _URL.match(target)
    if match:
        return target if match.group(1) in NETWORK_SCHEMES else None
    if target.startswith(("rbd:", "nbd:")) and len(target) > 4:
        return target
    return None


class Access(Enum):
    """How the guest may use a disk: ``r``/``ro``, ``w``/``rw``, or ``w!`` (shared writable)."""

    RO = "r"
    RW = "w"
    RW_SHARED = "w!"

    @property
    def writable(self) -> bool:
        return self is not Access.RO


_ACCESS = {"r": Access.RO, "ro": Access.RO, "w": Access.RW, "rw": Access.RW,
           "w!": Access.RW_SHARED}


@dataclass(frozen=True)
class DiskSpec:
    """One parsed ``disk=`` entry, before defaults are decided (that is the planner's job)."""

    vdev: str
    target: str = ""
    format: str = "raw"
    access: Access = Access.RW
    cdrom: bool = False
    #: the type asked for (``type=`` or the ``ioemu:`` prefix); None means "the default"
    type: str | None = None
    #: the deprecated prefix the target had, lower-case without colons (``phy``, ``tap:aio``)
    prefix: str | None = None
    script: str | None = None
    backend: str | None = None
    backendtype: str | None = None
    discard: bool | None = None
    trusted: bool | None = None
    direct_io_safe: bool = False
    #: what in the spec only xl reads (a key=value item, a flag, the positional form
    #: ``target,format,vdev,access``), or None for xend's form: evidence of an xl file
    xl_only: str | None = field(default=None, compare=False)

    @property
    def is_empty(self) -> bool:
        """An empty drive (a CD drive with no media)."""
        return self.target == ""

    @property
    def is_script_backed(self) -> bool:
        """A target handed to a hotplug script (``iscsi:``, ``script=``): not a file."""
        return self.script is not None

    @property
    def network_url(self) -> str | None:
        """The network block device this disk names (:func:`network_url`), or None."""
        return network_url(self.target, self.script)

    @property
    def is_network(self) -> bool:
        """A target a network protocol serves (``rbd:``, ``nbd://``, ...): not a file."""
        return self.network_url is not None


def _split_prefixes(target: str) -> tuple[list[str], str]:
    """Strip the deprecated ``word:`` prefixes off a target (``tap:aio:/x`` -> [tap, aio])."""
    known = set(FORMAT_PREFIXES) | set(SCRIPT_PREFIXES) | set(IGNORED_PREFIXES)
    prefixes: list[str] = []
    while True:
        match = _PREFIX.match(target)
        if not match or match.group(1) not in known:
            return prefixes, target
        prefixes.append(match.group(1))
        target = target[match.end():]


class _Builder:
    """Collects parameters of one spec, refusing a parameter given twice (as xl does)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fields: dict[str, object] = {}
        self.sources: dict[str, str] = {}
        #: where each keyword stands in the spec (libxlutil's reading depends on order)
        self.offsets: dict[str, int] = {}

    def fail(self, message: str) -> SpecError:
        return SpecError(f"disk spec {self.spec!r}: {message}")

    def set(self, name: str, value: object, source: str) -> None:
        if name in self.fields:
            raise self.fail(f"{name} given twice ({self.sources[name]} and {source})")
        self.fields[name] = value
        self.sources[name] = source


def parse_disk(spec: str) -> DiskSpec:
    """Parse one ``disk=`` entry; raise SpecError naming the bad token and what is allowed."""
    if not isinstance(spec, str):
        raise SpecError(f"disk entry {brief(spec)} is not a string")
    b = _Builder(spec)
    tokens = tokenize(spec, rest_keys=frozenset({"target"}))
    positionals: list[Token] = []
    xl_only: str | None = None
    for tok in tokens:
        if tok.key is None:
            if tok.value in FLAGS:
                _flag(b, tok.value)
                xl_only = xl_only or f"the flag {tok.value!r}"
            else:
                positionals.append(tok)
            continue
        _keyword(b, tok)
        if tok.key != "type":  # type= is the RFC's own, in either spelling
            xl_only = xl_only or f"{tok.key}="

    # Drop trailing empty positionals ("x,,hda" keeps its middle empty one).
    while positionals and positionals[-1].value == "" and len(positionals) > 1:
        positionals.pop()
    if positionals == [Token(None, "", 0)] and len(tokens) == 1:
        raise b.fail("empty disk spec")
    if not _positionals(b, positionals) and len(positionals) > 1:
        xl_only = xl_only or "xl's positional form target,format,vdev,access"
    return replace(_finish(b), xl_only=xl_only)


def _flag(b: _Builder, flag: str) -> None:
    if flag == "cdrom":
        b.set("devtype", "cdrom", "cdrom")
    elif flag in ("discard", "no-discard"):
        b.set("discard", flag == "discard", flag)
    elif flag in ("trusted", "untrusted"):
        b.set("trusted", flag == "trusted", flag)
    else:
        b.set("direct_io_safe", True, flag)


def _keyword(b: _Builder, tok: Token) -> None:
    key = tok.key
    assert key is not None
    value = tok.value
    if key not in KEYS:
        raise b.fail(f"unknown parameter {key!r} (known: {', '.join(KEYS)})")
    source = f"{key}="
    b.offsets[key] = tok.offset
    if key == "target":
        b.set("target", value, source)
    elif key == "format":
        b.set("format", _format(b, value), source)
    elif key == "vdev":
        _vdev(b, value, source)
    elif key == "access":
        b.set("access", _access(b, value), source)
    elif key == "devtype":
        if value not in DEVTYPES:
            raise b.fail(f"devtype={value!r} is not supported (only devtype=cdrom or disk)")
        b.set("devtype", value, source)
    elif key == "backendtype":
        if value not in BACKEND_TYPES:
            raise b.fail(
                f"backendtype={value!r} is unknown (known: {', '.join(BACKEND_TYPES)})"
            )
        b.set("backendtype", value, source)
    elif key == "backend":
        if not value:
            raise b.fail("backend= needs a domain name or id")
        b.set("backend", value, source)
    elif key == "script":
        if not value:
            raise b.fail("script= needs a script name")
        b.set("script", value, source)
    else:  # type
        if not value:
            raise b.fail("type= needs a value (ioemu or xenbus)")
        b.set("type", value, source)


def _format(b: _Builder, value: str) -> str:
    if value == "":
        return "raw"  # libxlu_disk_l.l: an empty format= is raw
    if value not in FORMATS and value != EMPTY_FORMAT:
        raise b.fail(
            f"format {value!r} is unknown (known: {', '.join(FORMATS)}, {EMPTY_FORMAT})"
        )
    return value


def _access(b: _Builder, value: str) -> Access:
    if value == "":
        return Access.RW  # libxlu_disk_l.l: an empty access= is rw
    try:
        return _ACCESS[value]
    except KeyError:
        raise b.fail(
            f"access mode {value!r} is not one of r, ro, w, rw, w! (shared writable)"
        ) from None


def _vdev(b: _Builder, value: str, source: str) -> None:
    vdev = value
    if vdev.startswith("ioemu:"):
        vdev = vdev[len("ioemu:"):]
        b.set("ioemu_prefix", True, "ioemu: prefix")
    for devtype in DEVTYPES:
        if vdev.endswith(f":{devtype}"):
            vdev = vdev[: -len(devtype) - 1]
            b.set("devtype", devtype, f":{devtype} suffix")
    if not vdev:
        raise b.fail("the virtual device name is empty")
    if ":" in vdev:
        raise b.fail(
            f"virtual device {value!r}: only an ioemu: prefix and a :cdrom or :disk suffix "
            "are allowed"
        )
    if not _VDEV_CHARS.match(vdev):
        raise b.fail(f"virtual device {value!r} is not a device name (e.g. hda, xvda)")
    b.set("vdev", vdev, source)


def _positionals(b: _Builder, positionals: list[Token]) -> bool:
    """Read the positionals; True when they are in xend's form (a prefix, or a vdev second)."""
    if not positionals:
        return False
    target = positionals[0].value
    prefixes, _ = _split_prefixes(target)
    # xl: the second positional is the format unless a deprecated prefix came first (or, for
    # an empty target, it is a vdev:devtype). pvhvm also reads the xend form without a prefix:
    # a second positional that names a disk (``/img,hda,w``) is the vdev.
    second = positionals[1].value if len(positionals) > 1 else ""
    legacy = bool(prefixes) or (
        second not in (*FORMATS, EMPTY_FORMAT, "") and _VDEV_WORD.match(second) is not None
    )
    if target or "target" not in b.fields:
        b.set("target", target, "first positional")
    names, grammar = (
        (("vdev", "access", "backend"), "xend form is [prefix:]target,vdev[:cdrom],mode[,backend]")
        if legacy
        else (("format", "vdev", "access"), "xl form is target,format,vdev,access")
    )
    rest = positionals[1:]
    keyword_format = b.fields.get("format")
    if (legacy and not target and not prefixes and keyword_format not in (None, EMPTY_FORMAT)
            and b.offsets.get("format", -1) > rest[0].offset):
        # libxlutil: ",hdc:cdrom" makes the drive's format "empty"; a format= after it is
        # "format respecified" (before it, the empty drive's format wins)
        raise b.fail(f"format given twice (format={keyword_format} after the empty drive "
                     f"{rest[0].value!r}, whose format is empty)")
    if len(rest) > len(names):
        raise b.fail(f"too many positional parameters: {rest[len(names)].value!r} ({grammar})")
    for name, tok in zip(names, rest, strict=False):
        if tok.value == "":
            continue
        source = f"positional {name}"
        if name == "format":
            b.set("format", _format(b, tok.value), source)
        elif name == "vdev":
            _vdev(b, tok.value, source)
        elif name == "access":
            b.set("access", _access(b, tok.value), source)
        else:
            b.set("backend", tok.value, source)
    return legacy


def _finish(b: _Builder) -> DiskSpec:
    f = b.fields
    if "vdev" not in f:
        raise b.fail("no virtual device given (e.g. hda, xvda; vdev=NAME)")
    type_ = f.get("type")
    if f.get("ioemu_prefix"):
        if type_ is not None and type_ != "ioemu":
            raise b.fail(
                f"type={type_} disagrees with the ioemu: prefix on the vdev "
                "(ioemu: means type=ioemu; drop one of them)"
            )
        type_ = "ioemu"
    prefixes, target = _split_prefixes(str(f.get("target", "")))
    if b.sources.get("target") == "target=":
        # xl-disk-configuration(5): target= is taken literally; only the positional
        # (deprecated) form has prefixes. A prefix there would name a file "phy:/dev/x".
        target = str(f["target"])
        if prefixes and network_url(target) is None:
            raise b.fail(
                f"target={target!r}: target= is taken literally, and {prefixes[0]}: is a "
                "deprecated prefix only a leading positional target may have (drop it, or "
                f"write {target.split(',')[0]!r} as the first item)"
            )
        prefixes = []
    if prefixes:
        b.set("prefix", ":".join(prefixes), "target prefix")
        for prefix in prefixes:
            if prefix in FORMAT_PREFIXES:
                b.set("format", FORMAT_PREFIXES[prefix], f"{prefix}: prefix")
            elif prefix in SCRIPT_PREFIXES:
                b.set("script", f"block-{prefix}", f"{prefix}: prefix")
    script = f.get("script")
    if f.get("prefix") is not None and "phy" in str(f["prefix"]).split(":") and target and (
        not target.startswith("/")
    ):
        target = "/dev/" + target  # xend: phy:vg/lv means /dev/vg/lv
    cdrom = f.get("devtype") == "cdrom"
    format_ = str(f.get("format", "raw"))
    if format_ == EMPTY_FORMAT and target:
        raise b.fail(f"format={EMPTY_FORMAT} is an empty drive, but target {target!r} is given")
    if not target and not cdrom:
        raise b.fail(
            "no target given, and only a cdrom drive may be empty "
            "(give the image, or add devtype=cdrom)"
        )
    if cdrom and not target:
        format_ = EMPTY_FORMAT  # libxlu_disk.c: an empty cdrom's format is "empty"
    return DiskSpec(
        vdev=str(f["vdev"]),
        target=target,
        format=format_,
        # libxlu_disk.c: access defaults to rw; a cdrom is always read-only
        access=Access.RO if cdrom else f.get("access", Access.RW),  # type: ignore[arg-type]
        cdrom=cdrom,
        type=None if type_ is None else str(type_),
        prefix=None if f.get("prefix") is None else str(f["prefix"]),
        script=None if script is None else str(script),
        backend=None if f.get("backend") is None else str(f["backend"]),
        backendtype=None if f.get("backendtype") is None else str(f["backendtype"]),
        discard=f.get("discard"),  # type: ignore[arg-type]
        trusted=f.get("trusted"),  # type: ignore[arg-type]
        direct_io_safe=bool(f.get("direct_io_safe", False)),
    )


def format_disk(disk: DiskSpec) -> str:
    """The canonical xl-form string of ``disk``; ``parse_disk`` gives ``disk`` back (for every
    DiskSpec that parse_disk gives)."""
    implied = set((disk.prefix or "").split(":"))
    items = [f"vdev={disk.vdev}", f"access={disk.access.value}"]
    if not implied & set(FORMAT_PREFIXES):
        items.append(f"format={disk.format}")
    if disk.cdrom:
        items.append("devtype=cdrom")
    if disk.type is not None:
        items.append(f"type={disk.type}")
    for key in ("script", "backend", "backendtype"):
        value = getattr(disk, key)
        if key == "script" and implied & set(SCRIPT_PREFIXES):
            continue
        if value is not None:
            items.append(f"{key}={value}")
    if disk.discard is not None:
        items.append("discard" if disk.discard else "no-discard")
    if disk.trusted is not None:
        items.append("trusted" if disk.trusted else "untrusted")
    if disk.direct_io_safe:
        items.append("direct-io-safe")
    if disk.target:
        target = disk.target
        if disk.prefix is not None:
            # target= is taken literally: only a leading positional has a prefix. A
            # prefixed target came from a positional, so it has no comma or = in it.
            return ",".join([f"{disk.prefix}:{target}", *items])
        items.append(f"target={target}")
    elif disk.prefix is not None:
        return ",".join([f"{disk.prefix}:", *items])
    return ",".join(items)
