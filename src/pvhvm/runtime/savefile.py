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
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

from pvhvm.errors import InputError

MAGIC = b"PVHVMSAV"
TRAILER_MAGIC = b"PVHVMEND"
FORMAT_VERSION = 1
PREFIX = struct.Struct(">8sII")
TRAILER = struct.Struct(">8sQ32s")
#: a header is a plan and an argv; a megabyte of it is already absurd
MAX_HEADER = 16 << 20


class SaveFileError(InputError):
    """A file (or migration preamble) that is not a whole, readable pvhvm save."""


@dataclass(frozen=True)
class SavedFile:
    """A file the domain's QEMU opens (a disk image, the kernel), as it was when saved."""

    what: str
    path: str
    size: int


@dataclass(frozen=True)
class DomainImage:
    """What QEMU's migration stream needs beside it to run the domain again: the record's
    plan and argv (hot-plugged devices included), its actions, and the files it opens."""

    name: str
    uuid: str
    platform: str
    memory_mib: int
    vcpus: int
    plan: dict[str, Any]
    argv: list[str]
    on_poweroff: str
    on_reboot: str
    on_crash: str
    accel: str
    console: str | None
    hotplugged: list[dict[str, Any]]
    #: the run paths (RunPaths fields) the argv names, so they can be moved to new ones
    run_paths: dict[str, str | None]
    files: list[SavedFile]
    qemu_version: str = ""
    saved_from: str = ""
    #: the domain's vncpasswd, which is kept out of its record and argv (the file is 0600)
    vncpasswd: str | None = None
    saved_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> DomainImage:
        """Checked field by field: SaveFileError names the first field that is wrong."""
        if not isinstance(data, dict):
            raise SaveFileError("header is not a JSON object")
        kinds: dict[str, tuple[type, ...]] = {
            "name": (str,), "uuid": (str,), "platform": (str,), "memory_mib": (int,),
            "vcpus": (int,), "plan": (dict,), "argv": (list,), "on_poweroff": (str,),
            "on_reboot": (str,), "on_crash": (str,), "accel": (str,),
            "console": (str, type(None)), "hotplugged": (list,), "run_paths": (dict,),
            "files": (list,),
        }
        for key, kind in kinds.items():
            if key not in data:
                raise SaveFileError(f"header has no {key!r}")
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise SaveFileError(f"header field {key!r} has the wrong type")
        if not all(isinstance(a, str) for a in data["argv"]) or not data["argv"]:
            raise SaveFileError("header field 'argv' is not a list of strings")
        files = []
        for item in data["files"]:
            if not (isinstance(item, dict) and isinstance(item.get("what"), str)
                    and isinstance(item.get("path"), str)
                    and isinstance(item.get("size"), int)):
                raise SaveFileError("header field 'files' has an entry that is not "
                                    "{what, path, size}")
            files.append(SavedFile(item["what"], item["path"], item["size"]))
        known = {f for f in cls.__dataclass_fields__} - {"files"}
        return cls(files=files, **{k: v for k, v in data.items() if k in known})


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
    if version != FORMAT_VERSION:
        raise SaveFileError(f"pvhvm save format version {version}; this pvhvm reads "
                            f"version {FORMAT_VERSION} only")
    if length > MAX_HEADER:
        raise SaveFileError(f"header length {length} is larger than {MAX_HEADER}")
    end = PREFIX.size + length
    if len(data) < end:
        return NeedMore(end)
    try:
        document = json.loads(data[PREFIX.size:end].decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise SaveFileError(f"header is not JSON: {err}") from err
    return DomainImage.from_json(document), end


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
