"""DomainConfig: a config file's keys, typed and checked, disks and vifs parsed.

Keys are those xm and xl users expect (xl.cfg(5)); an unknown key is a warning naming the
nearest known one. Nothing here decides a default that depends on other keys: that is the
planner's job.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pvhvm.config.disk import DiskSpec, parse_disk
from pvhvm.config.lang import ConfigValues, Position, parse_config, read_config_text
from pvhvm.config.optstr import brief
from pvhvm.config.vif import VifSpec, parse_vif
from pvhvm.errors import ConfigError, SpecError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,63}$")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a domain, or None when it can.

    Names become directory names, QEMU option values and XenStore values: 1-64 characters
    of letters, digits and ``_ . + @ -``, not starting with ``.`` or ``-``, no ``..``.
    """
    if not _NAME.match(name) or ".." in name:
        return (
            f"{name!r} is not a domain name: use 1-64 letters, digits and _ . + @ -, "
            "starting with a letter, digit or _"
        )
    return None


KNOWN_KEYS = (
    "name", "uuid", "memory", "maxmem", "vcpus", "builder", "type", "kernel", "ramdisk",
    "extra", "cmdline", "root", "boot", "disk", "vif", "serial", "vnc", "sdl", "nographic",
    "on_poweroff", "on_reboot", "on_crash", "acpi", "apic", "pae", "localtime",
    "device_model", "device_model_version", "xen_platform_pci",
)
ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
           "coredump-restart")


T = TypeVar("T")


@dataclass(frozen=True)
class Located(Generic[T]):
    """A parsed item and where its text is in the config file."""

    value: T
    position: Position


@dataclass(frozen=True)
class DomainConfig:
    """The typed content of one domain config file."""

    file: str
    name: str
    uuid: str | None = None
    memory: int | None = None
    vcpus: int | None = None
    builder: str = "hvm"
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    root: str | None = None
    boot: str | None = None
    disks: tuple[Located[DiskSpec], ...] = ()
    vifs: tuple[Located[VifSpec], ...] = ()
    serial: str | None = None
    #: where serial= was set (for errors found when the plan is made)
    serial_position: Position | None = None
    vnc: bool = False
    sdl: bool = False
    nographic: bool = True
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    acpi: bool = True
    apic: bool = True
    pae: bool = True
    localtime: bool = False
    device_model: str | None = None
    xen_platform_pci: bool | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


class _Reader:
    def __init__(self, raw: ConfigValues) -> None:
        self.raw = raw
        self.values = raw.values

    def fail(self, key: str, message: str, index: int | None = None) -> ConfigError:
        return self.raw.position(key, index).error(message)

    def str_(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(key, f"{key} must be a string, not {_kind(value)}")
        return str(value)

    def int_(self, key: str, low: int, high: int) -> int | None:
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"{key} must be a whole number, not {brief(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"{key} = {value} is out of range ({low}..{high})")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("0", "1", "yes", "no", "true", "false"):
            return value.lower() in ("1", "yes", "true")
        raise self.fail(key, f"{key} must be 0 or 1, not {brief(value)}")

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.str_(key)
        if value is None:
            return default
        if value not in allowed:
            raise self.fail(key, f"{key} = {value!r} is not one of: {', '.join(allowed)}")
        return value

    def list_(self, key: str) -> list[tuple[Any, int]]:
        value = self.values.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [(value, 0)]
        if not isinstance(value, list | tuple):
            raise self.fail(key, f"{key} must be a list of strings, not {_kind(value)}")
        return [(item, index) for index, item in enumerate(value)]


def _kind(value: object) -> str:
    return {list: "a list", tuple: "a tuple", dict: "a dict", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def load_config(
    path: str | Path, variables: Mapping[str, Any] | None = None
) -> DomainConfig:
    """Read, parse and type the config file at ``path``."""
    return config_from_text(read_config_text(path), str(path), variables)


def config_from_text(
    text: str, file: str = "<config>", variables: Mapping[str, Any] | None = None
) -> DomainConfig:
    """Parse and type config ``text``."""
    return domain_config(parse_config(text, file, variables))


def domain_config(raw: ConfigValues) -> DomainConfig:
    """Type the evaluated values of a config file."""
    r = _Reader(raw)
    warnings: list[str] = list(raw.warnings)
    for key in raw.values:
        # A command-line name the file reads is one of its variables; one it does not read is
        # a key, checked like the file's own.
        if key in KNOWN_KEYS or key in raw.referenced:
            continue
        near = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        warnings.append(f"{raw.position(key)}: unknown key {key!r} ignored{hint}")
    for key, (given, where) in raw.shadowed.items():
        warnings.append(
            f"{where}: the file sets {key} itself, so {key}={brief(given)} from the command "
            "line only counts before this line"
        )

    name = r.str_("name")
    if not name:
        raise ConfigError("the domain has no name (add name = \"...\")", file=raw.file)
    problem = name_problem(name)
    if problem is not None:
        raise r.fail("name", problem)

    builder = r.str_("builder") or "hvm"
    type_ = r.str_("type")
    if builder not in ("hvm", "generic"):
        raise r.fail("builder", f"builder = {builder!r}: pvhvm runs HVM guests (builder = 'hvm')")
    if type_ is not None and type_ != "hvm":
        raise r.fail("type", f"type = {type_!r}: pvhvm runs HVM guests (type = 'hvm')")

    kernel = r.str_("kernel")
    if kernel is not None and Path(kernel).name == "hvmloader":
        # xm HVM configs name Xen's firmware as the "kernel": that means firmware boot.
        warnings.append(f"{raw.position('kernel')}: kernel = hvmloader means firmware boot")
        kernel = None

    cmdline = r.str_("cmdline")
    extra = r.str_("extra")
    if cmdline is not None and extra is not None:
        raise r.fail("extra", "give cmdline or extra, not both (they are the same setting)")

    disks = tuple(_located(r, "disk", parse_disk))
    vifs = tuple(_located(r, "vif", parse_vif))
    serial = r.values.get("serial")
    if isinstance(serial, list | tuple):
        if len(serial) > 1:
            raise r.fail("serial", "only one serial port is supported")
        serial = serial[0] if serial else None
    if serial is not None and not isinstance(serial, str):
        raise r.fail("serial", f"serial must be a string, not {_kind(serial)}")
    boot = r.str_("boot")
    if boot is not None and (not boot or any(c not in "acdn" for c in boot)):
        raise r.fail("boot", f"boot = {boot!r}: use the letters c (disk), d (cdrom), n (network)")

    memory = r.int_("memory", 16, 1 << 20)
    maxmem = r.int_("maxmem", 16, 1 << 20)
    if memory is not None and maxmem is not None and maxmem < memory:
        raise r.fail("maxmem", f"maxmem = {maxmem} is below memory = {memory}")
    platform_pci = r.values.get("xen_platform_pci")

    return DomainConfig(
        file=raw.file,
        name=name,
        uuid=r.str_("uuid"),
        memory=memory,
        vcpus=r.int_("vcpus", 1, 255),
        builder="hvm",
        kernel=kernel,
        ramdisk=r.str_("ramdisk"),
        cmdline=cmdline if cmdline is not None else extra,
        root=r.str_("root"),
        boot=boot,
        disks=disks,
        vifs=vifs,
        serial=serial,
        serial_position=r.raw.position("serial") if serial is not None else None,
        vnc=r.bool_("vnc", False),
        sdl=r.bool_("sdl", False),
        nographic=r.bool_("nographic", True),
        on_poweroff=r.choice("on_poweroff", "destroy", ACTIONS),
        on_reboot=r.choice("on_reboot", "restart", ACTIONS),
        on_crash=r.choice("on_crash", "destroy", ACTIONS),
        acpi=r.bool_("acpi", True),
        apic=r.bool_("apic", True),
        pae=r.bool_("pae", True),
        localtime=r.bool_("localtime", False),
        device_model=r.str_("device_model"),
        xen_platform_pci=None if platform_pci is None else r.bool_("xen_platform_pci", False),
        warnings=tuple(warnings),
    )


def _located(r: _Reader, key: str, parse: Any) -> list[Located[Any]]:
    out: list[Located[Any]] = []
    for item, index in r.list_(key):
        try:
            out.append(Located(parse(item), r.raw.position(key, index)))
        except SpecError as err:
            raise r.fail(key, str(err), index) from err
    return out
