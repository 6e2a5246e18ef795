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

tests/xen/test_xl_peer.py runs Xen 4.17's own parser (libxlutil) beside this one. They agree
except where pvhvm follows xend or a newer xl on purpose: ``type=``; the xend form without a
prefix (``/img,hda,w``) and with a 4th positional backend domain; ``phy:vg/lv`` meaning
``/dev/vg/lv``; the ``trusted``/``untrusted`` flags (newer than 4.17).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from pvhvm.config.optstr import Token, brief, tokenize
from pvhvm.errors import SpecError

FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
BACKEND_TYPES = ("phy", "qdisk", "tap", "standalone")
#: prefix -> what it implies; a prefix may be stacked (``tap:aio:``)
FORMAT_PREFIXES = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vhd"}
SCRIPT_PREFIXES = ("iscsi", "nbd", "enbd", "drbd")
IGNORED_PREFIXES = ("tapdisk", "tap2", "tap", "aio", "ioemu", "file", "phy")
FLAGS = ("discard", "no-discard", "cdrom", "trusted", "untrusted", "direct-io-safe")
KEYS = (
    "target", "format", "vdev", "access", "devtype", "backendtype", "backend", "script",
    "type",
)
_VDEV_WORD = re.compile(r"^(?:ioemu:)?(?:xvd|hd|sd)[a-z]+[0-9]*(?::cdrom)?$")
_PREFIX = re.compile(r"^([a-z0-9]+):")
_VDEV_CHARS = re.compile(r"^[A-Za-z0-9_]+$")


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

    @property
    def is_empty(self) -> bool:
        """An empty drive (a CD drive with no media)."""
        return self.target == ""

    @property
    def is_script_backed(self) -> bool:
        """A target handed to a hotplug script (``iscsi:``, ``script=``): not a file."""
        return self.script is not None


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
    for tok in tokens:
        if tok.key is None:
            if tok.value in FLAGS:
                _flag(b, tok.value)
            else:
                positionals.append(tok)
            continue
        _keyword(b, tok)

    # Drop trailing empty positionals ("x,,hda" keeps its middle empty one).
    while positionals and positionals[-1].value == "" and len(positionals) > 1:
        positionals.pop()
    if positionals == [Token(None, "", 0)] and len(tokens) == 1:
        raise b.fail("empty disk spec")
    _positionals(b, positionals)
    return _finish(b)


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
    if key == "target":
        b.set("target", value, source)
    elif key == "format":
        b.set("format", _format(b, value), source)
    elif key == "vdev":
        _vdev(b, value, source)
    elif key == "access":
        b.set("access", _access(b, value), source)
    elif key == "devtype":
        if value != "cdrom":
            raise b.fail(f"devtype={value!r} is not supported (only devtype=cdrom)")
        b.set("devtype", "cdrom", source)
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
    if value not in FORMATS:
        raise b.fail(f"format {value!r} is unknown (known: {', '.join(FORMATS)})")
    return value


def _access(b: _Builder, value: str) -> Access:
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
    if vdev.endswith(":cdrom"):
        vdev = vdev[: -len(":cdrom")]
        b.set("devtype", "cdrom", ":cdrom suffix")
    if not vdev:
        raise b.fail("the virtual device name is empty")
    if ":" in vdev:
        raise b.fail(
            f"virtual device {value!r}: only an ioemu: prefix and a :cdrom suffix are allowed"
        )
    if not _VDEV_CHARS.match(vdev):
        raise b.fail(f"virtual device {value!r} is not a device name (e.g. hda, xvda)")
    b.set("vdev", vdev, source)


def _positionals(b: _Builder, positionals: list[Token]) -> None:
    if not positionals:
        return
    target = positionals[0].value
    prefixes, _ = _split_prefixes(target)
    legacy = bool(prefixes) or (
        len(positionals) > 1 and positionals[1].value not in FORMATS and (
            target == "" or _VDEV_WORD.match(positionals[1].value) is not None
        )
    )
    if target or "target" not in b.fields:
        b.set("target", target, "first positional")
    names, grammar = (
        (("vdev", "access", "backend"), "xend form is [prefix:]target,vdev[:cdrom],mode[,backend]")
        if legacy
        else (("format", "vdev", "access"), "xl form is target,format,vdev,access")
    )
    rest = positionals[1:]
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
    return DiskSpec(
        vdev=str(f["vdev"]),
        target=target,
        format=str(f.get("format", "raw")),
        # xl-disk-configuration(5): access defaults to rw, or to r for a cdrom
        access=f.get(  # type: ignore[arg-type]
            "access", Access.RO if f.get("devtype") == "cdrom" else Access.RW
        ),
        cdrom=f.get("devtype") == "cdrom",
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
    """The canonical xl-form string of ``disk``; ``parse_disk`` gives ``disk`` back."""
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
            target = disk.prefix + ":" + target
        items.append(f"target={target}")
    elif disk.prefix is not None:
        items.append(f"target={disk.prefix}:")
    return ",".join(items)
