"""The pvhvm save file and the migration preamble: pure encode/decode, no I/O.

A save file (``pvhvm save``, read by ``pvhvm restore``) is, all integers big-endian::

    offset  size  field
    0       8     magic  b"PVHVMSAV"
    8       4     format version (FORMAT_VERSION)
    12      4     header length H (at most MAX_HEADER)
    16      H     header: the domain image, one UTF-8 JSON object (:class:`DomainImage`)
    16+H    L     QEMU's migration stream, as QEMU wrote it
    end-48  48    trailer: b"PVHVMEND", L (8 bytes), SHA-256 of the header and the stream

The trailer is written last, so a file cut short anywhere has no trailer where it should be,
and its length and digest catch a file that was cut and padded or changed. ``pvhvm migrate``
sends the same 16+H-byte preamble over its channel, then the stream, and no trailer (the
channel's handshake says when the stream is complete).

Format 2 (issue 18): the header carries the domain's *config* — the config file's text and
how ``create`` read it (pvhvm.config.source), the hot-plugged devices as the specs
block-attach / network-attach took with the slot and devid they got, CD media, the memory
and vCPUs mem-set / vcpu-set left, the on_* actions and the size of each file QEMU opens —
never a QEMU command line. Restore and migrate-receive parse and plan that config as
``create`` does and build the argv themselves (runtime/replan.py); a header that does not
plan, or that disagrees with its own plan, starts nothing. Format 1 carried an argv and is
refused.

The SHA-256 trailer is an integrity check (a file cut short, a flipped bit), not
authentication: anyone who can write a file can compute it. There is no MAC or signature
either, as in xl's save files: a key the restoring host could check would have to be one a
forger lacks, and a save file is meant to be restored on another host, by another pvhvm,
from a file its user copied there; no such key exists without a key distribution pvhvm does
not have. A file's safety comes instead from the re-planning: nothing in it reaches QEMU
except through the config parser and planner, whose rules and budgets hold for any config
file (and runtime/save.py restores only files the invoking user or root owns and no one else
may write, as OpenSSH's StrictModes treats keys).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from pvhvm.config.domain import ACTIONS
from pvhvm.config.source import ConfigSource, SourceFormatError
from pvhvm.errors import InputError

MAGIC = b"PVHVMSAV"
TRAILER_MAGIC = b"PVHVMEND"
FORMAT_VERSION = 2
#: the format whose header held the record's argv (refused: see the module docstring)
ARGV_FORMAT_VERSION = 1
PREFIX = struct.Struct(">8sII")
TRAILER = struct.Struct(">8sQ32s")
#: a header is a config (at most 1 MiB) and a little more; 16 MiB is already absurd
MAX_HEADER = 16 << 20
#: items in one of the header's lists (hot-plugged devices, files, devices)
MAX_ITEMS = 4096
#: length of one of the header's short strings (a spec, a path, a name)
MAX_STRING = 4096
HOTPLUG_KINDS = ("disk", "vif")
ACCELS = ("kvm", "tcg")


class SaveFileError(InputError):
    """A file (or migration preamble) that is not a whole, readable pvhvm save."""


@dataclass(frozen=True)
class SavedFile:
    """A file the domain's QEMU opens (a disk image, the kernel), as it was when saved."""

    what: str
    path: str
    size: int


@dataclass(frozen=True)
class HotplugSpec:
    """A device block-attach or network-attach added while the domain ran: the spec it was
    given (re-planned by the receiver, runtime/hotplug.py), the hotplug slot it took (None
    on pc, whose root bus hotplugs) and what it got (a disk's vdev, a NIC's devid and MAC)."""

    kind: str
    spec: str
    slot: str | None
    devid: int
    vdev: str | None = None
    mac: str | None = None
    #: the directory the attach ran in (a relative target is resolved against it)
    directory: str = "/"
    #: a disk's virtio queues (one per vCPU the domain had when it was attached)
    queues: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "slot": self.slot, "devid": self.devid,
                "vdev": self.vdev, "mac": self.mac, "directory": self.directory,
                "queues": self.queues}


@dataclass(frozen=True)
class DomainImage:
    """What QEMU's migration stream needs beside it to run the domain again (format 2):
    the config to plan it from, what changed while it ran, and the files it opens."""

    name: str
    uuid: str
    platform: str
    source: ConfigSource
    #: the memory target (mem-set, KiB) and vCPUs (vcpu-set) when saved
    memory_kib: int
    vcpus: int
    on_poweroff: str
    on_reboot: str
    on_crash: str
    accel: str
    hotplugged: tuple[HotplugSpec, ...]
    #: CD drives whose medium changed (cd-insert / cd-eject): vdev → path ("" empty)
    media: dict[str, str]
    #: the devices the stream's device state belongs to ("disk VDEV DEVID", "vif DEVID MAC")
    devices: tuple[str, ...]
    files: tuple[SavedFile, ...]
    qemu_version: str = ""
    saved_from: str = ""
    saved_at: float = 0.0
    #: platform data that is not the domain's (libvirt: the daemon's URI), strings only
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "uuid": self.uuid, "platform": self.platform,
            "source": self.source.to_json(), "memory_kib": self.memory_kib,
            "vcpus": self.vcpus, "on_poweroff": self.on_poweroff,
            "on_reboot": self.on_reboot, "on_crash": self.on_crash, "accel": self.accel,
            "hotplugged": [h.to_json() for h in self.hotplugged], "media": dict(self.media),
            "devices": list(self.devices),
            "files": [{"what": f.what, "path": f.path, "size": f.size} for f in self.files],
            "qemu_version": self.qemu_version, "saved_from": self.saved_from,
            "saved_at": self.saved_at, "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: object) -> DomainImage:
        """Checked field by field: SaveFileError names the first field that is wrong. Any
        field this version does not know (a format-1 ``argv``) is refused, not skipped."""
        if not isinstance(data, dict):
            raise SaveFileError("header is not a JSON object")
        required = ("name", "uuid", "platform", "source", "memory_kib", "vcpus",
                    "on_poweroff", "on_reboot", "on_crash", "accel", "hotplugged", "media",
                    "devices", "files")
        optional = ("qemu_version", "saved_from", "saved_at", "extra")
        if "argv" in data or "plan" in data:
            raise SaveFileError(
                "made by an older pvhvm: it carries a QEMU command line, which pvhvm no "
                "longer starts; save the domain again with this version")
        for key in data:
            if key not in required and key not in optional:
                raise SaveFileError(f"header has a field this pvhvm does not know: "
                                    f"{_short(key)!r}")
        for key in required:
            if key not in data:
                raise SaveFileError(f"header has no {key!r}")
        strings = {key: _string(data, key) for key in (
            "name", "uuid", "platform", "on_poweroff", "on_reboot", "on_crash", "accel")}
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            if strings[key] not in ACTIONS:
                raise SaveFileError(f"header field {key!r} is not one of {', '.join(ACTIONS)}")
        if strings["accel"] not in ACCELS:
            raise SaveFileError(f"header field 'accel' is not one of {', '.join(ACCELS)}")
        try:
            source = ConfigSource.from_json(data["source"])
        except SourceFormatError as err:
            raise SaveFileError(f"header field 'source' {err}") from err
        extra = data.get("extra", {})
        if not (isinstance(extra, dict) and all(
                isinstance(v, str) and len(v) <= MAX_STRING for v in extra.values())):
            raise SaveFileError("header field 'extra' is not an object of strings")
        media = data["media"]
        if not (isinstance(media, dict) and len(media) <= MAX_ITEMS and all(
                isinstance(v, str) and len(v) <= MAX_STRING for v in media.values())):
            raise SaveFileError("header field 'media' is not an object of paths")
        saved_at = data.get("saved_at", 0.0)
        if isinstance(saved_at, bool) or not isinstance(saved_at, (int, float)) or (
                isinstance(saved_at, int) and abs(saved_at) > 1 << 62):
            raise SaveFileError("header field 'saved_at' is not a number")
        return cls(
            source=source, memory_kib=_whole(data, "memory_kib"), vcpus=_whole(data, "vcpus"),
            hotplugged=tuple(_hotplug(item) for item in _items(data, "hotplugged")),
            media=dict(media),
            devices=tuple(_string({"device": d}, "device") for d in _items(data, "devices")),
            files=tuple(_file(item) for item in _items(data, "files")),
            qemu_version=_string(data, "qemu_version") if "qemu_version" in data else "",
            saved_from=_string(data, "saved_from") if "saved_from" in data else "",
            saved_at=float(saved_at), extra=dict(extra), **strings,
        )


def _short(value: object) -> str:
    return str(value)[:40]


def _string(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or len(value) > MAX_STRING:
        raise SaveFileError(f"header field {key!r} is not a string (of at most "
                            f"{MAX_STRING} characters)")
    return value


def _whole(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise SaveFileError(f"header field {key!r} is not a whole number")
    return value


def _items(data: dict[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise SaveFileError(f"header field {key!r} is not a list (of at most {MAX_ITEMS})")
    return value


def _hotplug(item: object) -> HotplugSpec:
    where = "header field 'hotplugged' has an entry that is not {kind, spec, slot, devid}"
    if not isinstance(item, dict) or set(item) - {"kind", "spec", "slot", "devid", "vdev",
                                                  "mac", "directory", "queues"}:
        raise SaveFileError(where)
    try:
        kind, spec, devid = _string(item, "kind"), _string(item, "spec"), _whole(item, "devid")
        slot, vdev, mac = (None if item.get(key) is None else _string(item, key)
                           for key in ("slot", "vdev", "mac"))
        directory = _string(item, "directory") if "directory" in item else "/"
        queues = None if item.get("queues") is None else _whole(item, "queues")
    except (KeyError, SaveFileError) as err:
        raise SaveFileError(where) from err
    if not directory.startswith("/"):
        raise SaveFileError("header field 'hotplugged': a directory is not absolute")
    if kind not in HOTPLUG_KINDS:
        raise SaveFileError(f"header field 'hotplugged': kind {_short(kind)!r} is not one "
                            f"of {', '.join(HOTPLUG_KINDS)}")
    return HotplugSpec(kind=kind, spec=spec, slot=slot, devid=devid, vdev=vdev, mac=mac,
                       directory=directory, queues=queues)


def _file(item: object) -> SavedFile:
    if not isinstance(item, dict) or set(item) != {"what", "path", "size"}:
        raise SaveFileError("header field 'files' has an entry that is not "
                            "{what, path, size}")
    try:
        return SavedFile(_string(item, "what"), _string(item, "path"), _whole(item, "size"))
    except SaveFileError as err:
        raise SaveFileError("header field 'files' has an entry that is not "
                            "{what, path, size}") from err


@dataclass(frozen=True)
class NeedMore:
    """The decoder needs at least ``count`` bytes in all before it can say more."""

    count: int


def encode_prefix(image: DomainImage) -> bytes:
    """Magic, version, header length and header: what comes before QEMU's stream."""
    header = header_bytes(image)
    return PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header


def header_bytes(image: DomainImage) -> bytes:
    return json.dumps(image.to_json(), sort_keys=True).encode()


def decode_header(header: bytes) -> DomainImage:
    """The image in a header's bytes (SaveFileError for anything else)."""
    try:
        document = json.loads(header.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SaveFileError(f"header is not JSON: {err}") from err
    return DomainImage.from_json(document)


def decode_prefix(data: bytes) -> NeedMore | tuple[DomainImage, int]:
    """The image and the stream's offset from the first bytes of a save (or a migration
    channel); :class:`NeedMore` while ``data`` is too short to tell."""
    if len(data) < len(MAGIC):
        if not MAGIC.startswith(data):
            raise SaveFileError("not a pvhvm save (no PVHVMSAV magic)")
        return NeedMore(PREFIX.size)
    if data[:len(MAGIC)] != MAGIC:
        raise SaveFileError("not a pvhvm save (no PVHVMSAV magic)")
    if len(data) < PREFIX.size:
        return NeedMore(PREFIX.size)
    _, version, length = PREFIX.unpack_from(data)
    if version == ARGV_FORMAT_VERSION:
        raise SaveFileError(
            "made by an older pvhvm (format 1): it carries a QEMU command line, which pvhvm "
            "no longer starts; save the domain again with this version")
    if version != FORMAT_VERSION:
        raise SaveFileError(f"pvhvm save format version {version}; this pvhvm reads "
                            f"version {FORMAT_VERSION} only")
    if length > MAX_HEADER:
        raise SaveFileError(f"header length {length} is larger than {MAX_HEADER}")
    end = PREFIX.size + length
    if len(data) < end:
        return NeedMore(end)
    return decode_header(data[PREFIX.size:end]), end


def encode_trailer(stream_length: int, digest: bytes) -> bytes:
    return TRAILER.pack(TRAILER_MAGIC, stream_length, digest)


def decode_trailer(data: bytes) -> tuple[int, bytes]:
    """The stream length and digest a trailer holds; SaveFileError when ``data`` is none."""
    if len(data) != TRAILER.size:
        raise SaveFileError("truncated: the file ends before its trailer")
    magic, length, digest = TRAILER.unpack(data)
    if magic != TRAILER_MAGIC:
        raise SaveFileError("truncated or incomplete: no end marker where the file ends "
                            "(a save that did not finish, or a file cut short)")
    return length, digest
