"""The guest's own configuration files, parsed: fstab(5), crypttab(5), os-release(5),
/etc/default/grub (a shell fragment grub-mkconfig sources), and its gettys.

A device in fstab, crypttab or ``root=`` is named one of these ways (fstab(5),
kernel-parameters.txt ``root=``): a kernel name (``/dev/sda1``, ``/dev/hda1``, ``/dev/xvda1``,
``/dev/vda1``), ``UUID=``, ``LABEL=``, ``PARTUUID=``, ``PARTLABEL=``, a ``/dev/disk/by-*/``
link, a device-mapper path (``/dev/mapper/x``, LVM ``/dev/vg/lv``), or no device at all
(proc, tmpfs).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from enum import Enum
from typing import Any

_KERNEL_NAME = re.compile(r"^/dev/((?:hd|sd|xvd|vd)[a-z]+)(\d*)$")
_BY = {"by-uuid": "UUID", "by-label": "LABEL", "by-partuuid": "PARTUUID",
       "by-partlabel": "PARTLABEL"}


class Naming(Enum):
    """How a line names its device."""

    KERNEL_NAME = "kernel-name"
    UUID = "UUID"
    LABEL = "LABEL"
    PARTUUID = "PARTUUID"
    PARTLABEL = "PARTLABEL"
    MAPPER = "device-mapper"
    OTHER_PATH = "other-path"
    NONE = "none"


@dataclass(frozen=True)
class DeviceName:
    """A device reference, classified; ``disk``/``partition`` are set for kernel names."""

    spec: str
    naming: Naming
    value: str
    disk: str = ""
    partition: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "naming": self.naming.value, "value": self.value}


def classify(spec: str) -> DeviceName:
    """How ``spec`` names a device (see the module docstring)."""
    for prefix in ("UUID", "LABEL", "PARTUUID", "PARTLABEL"):
        if spec.upper().startswith(prefix + "="):
            value = spec[len(prefix) + 1:].strip('"')
            return DeviceName(spec, Naming(prefix), value)
    match = re.match(r"^/dev/disk/(by-[a-z]+)/(.+)$", spec)
    if match and match.group(1) in _BY:
        return DeviceName(spec, Naming(_BY[match.group(1)]), match.group(2))
    match = _KERNEL_NAME.match(spec)
    if match:
        part = int(match.group(2)) if match.group(2) else None
        return DeviceName(spec, Naming.KERNEL_NAME, spec[5:], match.group(1), part)
    if spec.startswith("/dev/mapper/") or re.match(r"^/dev/[^/]+/[^/]+$", spec):
        return DeviceName(spec, Naming.MAPPER, spec)
    if spec.startswith("/dev/"):
        return DeviceName(spec, Naming.OTHER_PATH, spec)
    return DeviceName(spec, Naming.NONE, spec)


@dataclass(frozen=True)
class FstabEntry:
    """One fstab(5) line."""

    line: int
    device: DeviceName
    mountpoint: str
    fstype: str
    options: tuple[str, ...]
    passno: int

    @property
    def nofail(self) -> bool:
        return "nofail" in self.options or "noauto" in self.options

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "device": self.device.to_json(), "mountpoint": self.mountpoint,
                "fstype": self.fstype, "options": list(self.options), "passno": self.passno}


@dataclass(frozen=True)
class CrypttabEntry:
    """One crypttab(5) line: the mapping name and the encrypted device."""

    line: int
    name: str
    device: DeviceName
    options: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "name": self.name, "device": self.device.to_json(),
                "options": list(self.options)}


_VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "cgroup", "cgroup2", "none",
               "efivarfs", "debugfs", "securityfs", "hugetlbfs", "mqueue", "binfmt_misc"}


def parse_fstab(text: str) -> list[FstabEntry]:
    """Entries with a real device (proc, tmpfs and other virtual filesystems are left out)."""
    out: list[FstabEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 3:
            continue
        device = _unescape(fields[0])
        if fields[2] in _VIRTUAL_FS or device in _VIRTUAL_FS:
            continue
        options = tuple(fields[3].split(",")) if len(fields) > 3 else ("defaults",)
        passno = int(fields[5]) if len(fields) > 5 and fields[5].isdigit() else 0
        out.append(FstabEntry(number, classify(device), _unescape(fields[1]), fields[2],
                              options, passno))
    return out


def _unescape(field: str) -> str:
    """fstab's octal escapes (``\\040`` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_crypttab(text: str) -> list[CrypttabEntry]:
    out: list[CrypttabEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        options = tuple(fields[3].split(",")) if len(fields) > 3 else ()
        out.append(CrypttabEntry(number, fields[0], classify(fields[1]), options))
    return out


def parse_shell_assignments(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a shell fragment (os-release, /etc/default/grub), unquoted.

    Only literal assignments are read; ``$VAR`` references to earlier keys are expanded.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("export "):
            line = line[7:].strip()
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not match:
            continue
        key, rest = match.groups()
        try:
            words = shlex.split(rest, comments=True, posix=True)
        except ValueError:
            words = [rest]
        value = " ".join(words)
        value = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                       lambda m: values.get(m.group(1), ""), value)
        values[key] = value
    return values


def parse_inittab_gettys(text: str) -> list[str]:
    """Terminals sysvinit/busybox inittab(5) runs a getty on (``T0:23:respawn:/sbin/getty
    -L ttyS0 115200 vt100`` → ttyS0; busybox ``ttyS0::respawn:...`` → ttyS0)."""
    ttys: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        fields = line.split(":", 3)
        if len(fields) < 4 or "getty" not in fields[3]:
            continue
        if fields[0].startswith(("tty", "hvc", "xvc")):
            ttys.append(fields[0])
            continue
        for word in fields[3].split():
            if re.match(r"^(tty[A-Za-z]*\d+|hvc\d+|xvc\d+|console)$", word):
                ttys.append(word)
                break
    return ttys
