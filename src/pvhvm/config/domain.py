"""DomainConfig: a config file's keys, typed and checked, disks and vifs parsed.

Keys are those xm and xl users expect (xl.cfg(5)); an unknown key is a warning naming the
nearest known one. Nothing here decides a default that depends on other keys: that is the
planner's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from pvhvm.config.disk import DiskSpec, parse_disk
from pvhvm.config.keys import KEY_USE, KNOWN_KEYS, XL_ONLY, XL_WHOLE_NUMBERS, XM_ONLY, KeyUse
from pvhvm.config.lang import (
    ConfigValues,
    Position,
    check_path_value,
    parse_config,
    read_config_text,
)
from pvhvm.config.optstr import brief
from pvhvm.config.values import (
    host_problem,
    is_ipv6,
    keymap_problem,
    parse_chardev,
    parse_vnc_listen,
    vnc_display,
)
from pvhvm.config.vif import VifSpec, parse_vif
from pvhvm.errors import ConfigError, SpecError

#: printable ASCII but for the characters a directory name, a QEMU option value or a shell
#: script would trip on; xl itself accepts any name it can write to XenStore
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@&%#~-]{0,63}$")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a domain, or None when it can.

    Names become directory names, QEMU option values and XenStore values: 1-64 characters
    of letters, digits and ``_ . + @ & % # ~ -``, not starting with ``.`` or ``-``, no
    ``..``. That covers the names real xl files use (``XenGuest2&test``); ``/``, ``,``,
    spaces and control characters are refused.
    """
    if not _NAME.fullmatch(name) or ".." in name:
        return (
            f"{name!r} is not a domain name: use 1-64 letters, digits and _ . + @ & % # ~ -, "
            "starting with a letter, digit or _"
        )
    return None


class Dialect(Enum):
    """Which toolstack a config file was written for: its untyped devices mean what that
    toolstack made of them (SPEC.md "Xen's untyped devices, corrected"): xl 4.17 (xl.cfg(5),
    libxl_dm.c); xm, xend 3.0.4-4.4 (image.py: an untyped HVM vif is emulated, sd* disks are
    SCSI); xend-3.0.2, the RFC's own defaults (an untyped vif and xvd*/sd* disks are PV)."""

    XM = "xm"
    XL = "xl"
    XEND_302 = "xend-3.0.2"

    @property
    def toolstack(self) -> str:
        """The toolstack's name as a sentence says it."""
        return {"xm": "xend (3.0.4-4.4)", "xl": "xl", "xend-3.0.2": "xend 3.0.2"}[self.value]


class GuestType(Enum):
    """HVM (firmware, emulated platform, PV drivers optional) or PV (a kernel that runs on
    PV devices only; on the qemu platform: direct kernel boot, every device PV)."""

    HVM = "hvm"
    PV = "pv"


#: xl's emulated sound cards (soundhw=) → QEMU devices
SOUND_CARDS = {"hda": "intel-hda", "ac97": "AC97", "sb16": "sb16", "es1370": "ES1370"}
VGA_KINDS = ("std", "cirrus", "qxl", "none")
#: rtc_timeoffset's bound: libxl keeps it in 32 bits (and QEMU's -rtc base must be a date)
MAX_RTC_OFFSET = 2**31 - 1
#: hotplug_slots: pcie-root-ports on q35 take root-bus slots (32, some used by the platform)
MAX_HOTPLUG_SLOTS = 16
ACTIONS = ("destroy", "restart", "preserve", "rename-restart", "coredump-destroy",
           "coredump-restart")


#: the least memory (MiB) a key may say; QEMU's own floor is checked by the planner, so a
#: Mini-OS stub domain's ``memory = 8`` reaches the check that names the real blocker
MIN_MEMORY_MIB = 1
#: firmware= (xl.cfg(5), HVM): each name → the bios it boots
FIRMWARES = {"bios": "seabios", "seabios": "seabios", "uefi": "ovmf", "ovmf": "ovmf"}


@dataclass(frozen=True)
class Spice:
    """``spice = 1`` and its keys (xl.cfg(5)): a SPICE server for the guest's display."""

    host: str = "127.0.0.1"
    port: int | None = None
    tls_port: int | None = None
    disable_ticketing: bool = False
    agent_mouse: bool = True
    #: spicepasswd: reaches QEMU as the display's secret (a 0600 file), never its argv
    password: str | None = None


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
    maxmem: int | None = None
    vcpus: int | None = None
    maxvcpus: int | None = None
    builder: str = "hvm"
    dialect: Dialect = Dialect.XL
    #: why this dialect: the evidence that decided it, or --dialect
    dialect_reason: str = "nothing in the file is xm- or xl-only: xl"
    guest_type: GuestType = GuestType.HVM
    guest_type_reason: str = "builder = 'hvm'"
    bootloader: str | None = None
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    root: str | None = None
    boot: str | None = None
    disks: tuple[Located[DiskSpec], ...] = ()
    vifs: tuple[Located[VifSpec], ...] = ()
    serial: str | None = None
    #: serial ports after the first (xl.cfg(5) takes a list): ttyS1, ttyS2, ttyS3
    more_serials: tuple[str, ...] = ()
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
    device_model_version: str | None = None
    xen_platform_pci: bool | None = None
    #: vnclisten, vncdisplay, vncunused, vncpasswd (only when vnc is on)
    vnc_listen: str = "127.0.0.1"
    vnc_display: int | None = None
    vnc_unused: bool = True
    vnc_password: str | None = None
    keymap: str | None = None
    #: the emulated graphics card: std, cirrus, none; None: none unless a display is asked for
    vga: str | None = None
    usb: bool = False
    usbdevices: tuple[str, ...] = ()
    rtc_timeoffset: int = 0
    #: firmware: seabios (default) or ovmf
    bios: str = "seabios"
    soundhw: tuple[str, ...] = ()
    hpet: bool = True
    #: SPICE (spice = 1), None without it
    spice: Spice | None = None
    #: where each key was set (for errors the planner finds)
    positions: Mapping[str, Position] = field(default_factory=dict)
    #: pvhvm's own key: empty hot-pluggable PCIe slots reserved at create (q35)
    hotplug_slots: int | None = None
    parallel: str | None = None
    #: where parallel= was set
    parallel_position: Position | None = None
    #: keys kept for export-xl that pvhvm does not realise itself: (key, value) in file order
    xl_passthrough: tuple[tuple[str, Any], ...] = ()
    #: GUEST keys (see config.keys): they change the guest and the qemu platform cannot do them
    unsupported: tuple[tuple[str, Position], ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def where(self, key: str) -> Position:
        """Where ``key`` was set, or the file itself."""
        return self.positions.get(key, Position(self.file, None, None))


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

    def path_(self, key: str) -> str | None:
        """A string naming a host path: NUL and control characters are refused here."""
        value = self.str_(key)
        return None if value is None else check_path_value(value, key, self.raw.position(key))

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
    path: str | Path, variables: Mapping[str, Any] | None = None,
    dialect: Dialect | None = None,
) -> DomainConfig:
    """Read, parse and type the config file at ``path`` (``dialect`` forces xm or xl)."""
    return config_from_text(read_config_text(path), str(path), variables, dialect)


def config_from_text(
    text: str, file: str = "<config>", variables: Mapping[str, Any] | None = None,
    dialect: Dialect | None = None,
) -> DomainConfig:
    """Parse and type config ``text``."""
    return domain_config(parse_config(text, file, variables), dialect)


def _key_warnings(raw: ConfigValues) -> tuple[list[str], list[tuple[str, Position]]]:
    """Unknown keys (a warning naming the nearest), Xen-only keys (a warning saying they do
    nothing here) and GUEST keys (returned: the planner decides whether they are errors)."""
    warnings: list[str] = []
    unsupported: list[tuple[str, Position]] = []
    for key, value in raw.values.items():
        # A command-line name the file reads is one of its variables; one it does not read is
        # a key, checked like the file's own.
        if key in raw.referenced:
            continue
        use = KEY_USE.get(key)
        if use is None:
            import difflib  # only for an unknown key: a clean file's load does not pay for it

            near = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            warnings.append(f"{raw.position(key)}: unknown key {key!r} ignored{hint}")
        elif use is KeyUse.XEN:
            warnings.append(
                f"{raw.position(key)}: {key} is a setting of the Xen hypervisor or of xl; it "
                "changes nothing on the qemu platform (export-xl keeps it)"
            )
        elif use is KeyUse.GUEST and value not in (None, "", [], (), 0):
            unsupported.append((key, raw.position(key)))
    return warnings, unsupported


def _xl_evidence(
    raw: ConfigValues, disks: tuple[Located[DiskSpec], ...], vifs: tuple[Located[VifSpec], ...]
) -> str | None:
    """The first thing in the file only xl reads (SPEC.md "Xen's untyped devices,
    corrected"): an xl-only key (``type=`` as guest type, ``device_model_version``,
    ``bios=``, ``firmware=``...), or xl's disk or vif syntax. ``builder=`` is not one: libvirt's
    xl writer emits ``builder = "hvm"``."""
    for key in raw.values:
        if key in XL_ONLY and key not in raw.referenced and key not in raw.cli_vars:
            what = "type= (xl's guest type)" if key == "type" else f"{key}="
            return f"{raw.position(key)}: {what} is xl-only"
    for located in disks:
        if located.value.xl_only is not None:
            return f"{located.position}: the disk spec uses {located.value.xl_only} (xl-only)"
    for vif in vifs:
        if vif.value.xl_only is not None:
            return f"{vif.position}: the vif spec uses {vif.value.xl_only} (xl-only)"
    return None


def _xm_evidence(raw: ConfigValues) -> str | None:
    """The first thing in the file only xend read: a key xl does not know (``cdrom=``,
    ``vncconsole``...), xmexample.hvm's ``kernel = ".../hvmloader"``, or a value written as a
    Python expression (libxlutil reads strings, numbers and lists only)."""
    found: list[tuple[Position, str]] = []
    for key, value in raw.values.items():
        if key in raw.referenced or key in raw.cli_vars:
            continue
        if key in XM_ONLY and key != "builder":
            found.append((raw.position(key), f"{key}= is xm-only"))
        elif key == "kernel" and isinstance(value, str) and value.endswith("/hvmloader"):
            found.append((raw.position(key), "kernel = '.../hvmloader' is xm's firmware line"))
    for what, position in raw.expressions:
        found.append((position, f"{what}, a Python expression only xm evaluated"))
    if not found:
        return None
    position, what = min(found, key=lambda item: (item[0].line or 0, item[0].col or 0))
    return f"{position}: {what}"


def _dialect(
    raw: ConfigValues, forced: Dialect | None, disks: tuple[Located[DiskSpec], ...],
    vifs: tuple[Located[VifSpec], ...],
) -> tuple[Dialect, str]:
    """xl when the file uses anything only xl reads, xm when it uses anything only xend
    read, xl when nothing tells (every Xen since 4.5 runs xl); ``--dialect`` forces one.
    When a file has both, xl's device syntax decides: xend could not have read it."""
    if forced is not None:
        return forced, f"--dialect {forced.value}"
    xl = _xl_evidence(raw, disks, vifs)
    xm = _xm_evidence(raw)
    if xl is not None:
        also = f"; the file also has {xm} (--dialect xm reads it as xm)" if xm else ""
        return Dialect.XL, f"{xl}{also}"
    if xm is not None:
        return Dialect.XM, xm
    return Dialect.XL, "nothing in the file is xm- or xl-only: xl, which every Xen since 4.5 runs"


def _guest_type(r: _Reader) -> tuple[GuestType, str]:
    """xl: ``type=`` (pv when absent); xm: ``builder=`` (generic/linux are PV).

    A file that names no guest type is a PV guest to both xl and xm, and so to pvhvm."""
    type_ = r.str_("type")
    builder = r.str_("builder")
    if type_ is not None:
        if type_ == "pvh":
            raise r.fail("type", "type = 'pvh': a PVH guest needs the Xen hypervisor; pvhvm "
                                 "runs HVM guests (type = 'hvm') and PV guests (type = 'pv')")
        if type_ not in ("hvm", "pv"):
            raise r.fail("type", f"type = {type_!r} is not one of: hvm, pv")
        return GuestType(type_), f"type = {type_!r}"
    if builder is not None:
        if builder == "hvm":
            return GuestType.HVM, "builder = 'hvm'"
        if builder in ("generic", "linux"):
            return GuestType.PV, f"builder = {builder!r} builds a PV guest"
        raise r.fail("builder", f"builder = {builder!r} is not one of: hvm, generic, linux")
    if r.values.get("bootloader"):
        return GuestType.PV, "bootloader= and no type=: a PV guest, as xl and xm read it"
    return GuestType.PV, "no type= or builder=: a PV guest, as xl and xm read it"


def _serials(r: _Reader) -> tuple[str | None, tuple[str, ...]]:
    """serial= is one port or, in xl, a list of up to four (the first is the console)."""
    serial = r.values.get("serial")
    ports = list(serial) if isinstance(serial, list | tuple) else [serial]
    if len(ports) > 4:
        raise r.fail("serial", f"serial lists {len(ports)} ports; a PC has four (ttyS0-ttyS3)")
    for index, port in enumerate(ports):
        if port is not None and not isinstance(port, str):
            where = index if isinstance(serial, list | tuple) else None
            raise r.fail("serial", f"serial must be a string, not {_kind(port)}", where)
    for index, port in enumerate(ports):
        if port is None or (index == 0 and port == ""):
            continue  # no serial= line, or "": the console on pvhvm's own socket
        try:
            # xl.cfg(5)'s port forms, typed (config.values), on any of the ports as in xl
            parse_chardev(str(port), "serial")
        except SpecError as err:
            where = index if isinstance(serial, list | tuple) else None
            raise r.fail("serial", str(err), where) from err
    first = ports[0] if ports else None
    return first, tuple("none" if p is None else str(p) for p in ports[1:])


def _vnc(r: _Reader) -> dict[str, Any]:
    """vnc, vnclisten, vncdisplay, vncunused, vncpasswd (xl.cfg(5)), and vfb= lines' vnc
    settings (xm/xl PV framebuffer: ``type=vnc,vnclisten=...,vncdisplay=...``)."""
    settings: dict[str, Any] = {}
    vfb = r.list_("vfb")
    for item, index in vfb:
        if not isinstance(item, str):
            raise r.fail("vfb", f"vfb entries must be strings, not {_kind(item)}", index)
        for part in item.split(","):
            key, _, value = part.strip().partition("=")
            if key == "vnc" or (key == "type" and value == "vnc"):
                settings.setdefault("vnc", value != "0")
            elif key in ("vnclisten", "vncdisplay", "vncunused", "vncpasswd", "keymap"):
                settings.setdefault(key, value)
            elif key == "sdl" and value == "1":
                settings.setdefault("sdl", True)
    vnc = r.bool_("vnc", bool(settings.get("vnc", False)))
    # a key of its own, else the vfb= line's: errors point at whichever gave the value
    own = r.str_("vnclisten")
    listen = own or settings.get("vnclisten") or "127.0.0.1"
    listen_key = "vnclisten" if own else "vfb"
    display_text = r.values.get("vncdisplay", settings.get("vncdisplay"))
    display_key = "vncdisplay" if "vncdisplay" in r.values else "vfb"
    display: int | None = None
    try:
        if display_text is not None:
            display = vnc_display(display_text)
    except SpecError as err:
        raise r.fail(display_key, str(err)) from err
    try:
        # vnclisten = "0.0.0.0:1" (xm) gives the display too; vncdisplay= wins
        listen, listen_display = parse_vnc_listen(listen)
    except SpecError as err:
        raise r.fail(listen_key, str(err)) from err
    display = listen_display if display is None else display
    unused = r.bool_("vncunused", str(settings.get("vncunused", "1")) != "0")
    password = r.str_("vncpasswd") or settings.get("vncpasswd") or None
    own_keymap = r.str_("keymap")
    keymap = own_keymap or settings.get("keymap")
    problem = None if keymap is None else keymap_problem(keymap)
    if problem is not None:
        raise r.fail("keymap" if own_keymap else "vfb", problem)
    return {
        "vnc": vnc, "vnc_listen": listen, "vnc_display": display, "vnc_unused": unused,
        "vnc_password": password, "keymap": keymap,
    }


def _vga(r: _Reader) -> str | None:
    vga = r.str_("vga")
    if vga is not None:
        vga = {"stdvga": "std", "cirrus": "cirrus", "none": "none", "std": "std",
               "qxl": "qxl"}.get(vga)
        if vga is None:
            raise r.fail("vga", f"vga = {r.str_('vga')!r} is not one of: stdvga, cirrus, qxl, "
                                "none")
    if "stdvga" in r.values:
        stdvga = r.bool_("stdvga", False)
        if vga is not None and (vga == "std") != stdvga:
            raise r.fail("stdvga", "stdvga and vga disagree: give one of them")
        vga = "std" if stdvga else (vga or "cirrus")
    return vga


def _usbdevices(r: _Reader) -> tuple[str, ...]:
    devices: list[str] = []
    for item, index in r.list_("usbdevice"):
        if item not in ("tablet", "mouse", "keyboard"):
            raise r.fail("usbdevice", f"usbdevice {brief(item)}: the qemu platform emulates "
                                      "tablet, mouse and keyboard (host devices need "
                                      "passthrough, which it cannot do)", index)
        devices.append(str(item))
    return tuple(devices)


def _soundhw(r: _Reader) -> tuple[str, ...]:
    text = r.str_("soundhw")
    if not text:
        return ()
    cards = [card.strip() for card in text.split(",") if card.strip()]
    if cards == ["all"]:
        cards = list(SOUND_CARDS)
    for card in cards:
        if card not in SOUND_CARDS:
            raise r.fail("soundhw", f"soundhw card {card!r} is not one of: "
                                    f"{', '.join(SOUND_CARDS)}, all")
    return tuple(dict.fromkeys(cards))


def _bios(r: _Reader, guest_type: GuestType) -> str:
    """bios= and firmware= (xl.cfg(5)): seabios or ovmf; rombios needs qemu-xen-traditional.
    A PV guest's firmware= (pvgrub32/64) is PV-GRUB, which only Xen boots."""
    bios = r.str_("bios")
    firmware = r.str_("firmware")
    if firmware is not None and guest_type is GuestType.HVM:
        chosen = FIRMWARES.get(firmware.lower())
        if chosen is None:
            raise r.fail("firmware", f"firmware = {firmware!r}: the qemu platform boots "
                                     "bios/seabios (SeaBIOS) or uefi/ovmf (OVMF) firmware")
        if bios is not None and bios != chosen:
            raise r.fail("firmware", f"firmware = {firmware!r} and bios = {bios!r} disagree: "
                                     "give one of them")
        bios = chosen
    if bios is None:
        return "seabios"
    if bios not in ("seabios", "ovmf"):
        raise r.fail("bios", f"bios = {bios!r} is not one of: seabios, ovmf (rombios needs "
                             "Xen's qemu-xen-traditional)")
    return bios


def _spice(r: _Reader) -> Spice | None:
    """spice = 1 and spicehost, spiceport, spicetls_port, spicedisable_ticketing,
    spicepasswd, spiceagent_mouse (xl.cfg(5)); libxl wants a port and either a password or
    ticketing disabled."""
    if not r.bool_("spice", False):
        return None
    host = r.str_("spicehost") or "127.0.0.1"
    if not is_ipv6(host) and host_problem(host) is not None:
        raise r.fail("spicehost", f"spicehost: {host_problem(host)}")
    port = r.int_("spiceport", 1, 65535)
    tls_port = r.int_("spicetls_port", 1, 65535)
    if port is None and tls_port is None:
        raise r.fail("spice", "spice = 1 needs spiceport = N (libxl: at least one of "
                              "spiceport and spicetls_port)")
    if tls_port is not None:
        raise r.fail("spicetls_port", "spicetls_port: the qemu platform has no SPICE TLS "
                                      "certificates; use spiceport (and an SSH tunnel)")
    password = r.str_("spicepasswd") or None
    vnc_password = r.str_("vncpasswd")
    if password and vnc_password and password != vnc_password:
        raise r.fail("spicepasswd", "spicepasswd and vncpasswd differ: pvhvm keeps one password "
                                    "for the guest's display; give the same one to both")
    disable = r.bool_("spicedisable_ticketing", False)
    if not disable and not password:
        raise r.fail("spice", "spice = 1 needs spicedisable_ticketing = 1 or spicepasswd "
                              "(libxl refuses a SPICE server with neither)")
    return Spice(host=host, port=port, tls_port=tls_port,
                 disable_ticketing=disable and not password,
                 agent_mouse=r.bool_("spiceagent_mouse", True), password=password)


def _whole_numbers(r: _Reader) -> None:
    """Keys xl reads as integers (xlu_cfg_get_long): ``cpu_weight = 0.75`` is refused here,
    where export-xl would otherwise write a file xl does not take."""
    for key in XL_WHOLE_NUMBERS:
        value = r.values.get(key)
        if key in r.raw.referenced or value is None:
            continue
        text = str(value).strip() if isinstance(value, str) else None
        if isinstance(value, bool) or not (isinstance(value, int) or (
                text is not None and text.isascii() and text.lstrip("-").isdigit())):
            raise r.fail(key, f"{key} must be a whole number (xl reads it as an integer), "
                              f"not {brief(value)}")


def _xm_cdrom(r: _Reader) -> list[Located[DiskSpec]]:
    """xm's ``cdrom = "PATH"``: the hdc CD drive (xend's image.py)."""
    path = r.path_("cdrom")
    if path is None:
        return []
    try:
        spec = replace(parse_disk(f"format=raw, vdev=hdc, access=ro, devtype=cdrom, "
                                  f"target={path}"), xl_only=None)  # xm's own key
    except SpecError as err:
        raise r.fail("cdrom", str(err)) from err
    return [Located(spec, r.raw.position("cdrom"))]


def _passthrough(raw: ConfigValues) -> tuple[tuple[str, Any], ...]:
    """Keys kept verbatim for export-xl: Xen's own settings and guest keys pvhvm cannot do."""
    return tuple(
        (key, value) for key, value in raw.values.items()
        if KEY_USE.get(key) in (KeyUse.XEN, KeyUse.GUEST) and key not in raw.referenced
    )


def domain_config(raw: ConfigValues, forced_dialect: Dialect | None = None) -> DomainConfig:
    """Type the evaluated values of a config file."""
    r = _Reader(raw)
    key_warnings, unsupported = _key_warnings(raw)
    warnings = [*raw.warnings, *key_warnings]
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

    guest_type, guest_type_reason = _guest_type(r)

    kernel = r.path_("kernel")
    if kernel is not None and Path(kernel).name == "hvmloader":
        # xm HVM configs name Xen's firmware as the "kernel": that means firmware boot.
        if guest_type is GuestType.HVM:
            warnings.append(f"{raw.position('kernel')}: kernel = hvmloader means firmware boot")
        kernel = None
    bootloader = r.path_("bootloader")

    cmdline = r.str_("cmdline")
    extra = r.str_("extra")
    if cmdline is not None and extra is not None:
        raise r.fail("extra", "give cmdline or extra, not both (they are the same setting)")

    disks = tuple(_located(r, "disk", parse_disk)) + tuple(_xm_cdrom(r))
    vifs = tuple(_located(r, "vif", parse_vif))
    dialect, dialect_reason = _dialect(raw, forced_dialect, disks, vifs)
    _whole_numbers(r)
    serial, more_serials = _serials(r)
    boot = r.str_("boot")
    if boot is not None and (not boot or any(c not in "acdn" for c in boot)):
        raise r.fail("boot", f"boot = {boot!r}: use the letters c (disk), d (cdrom), n (network)")

    memory = r.int_("memory", MIN_MEMORY_MIB, 1 << 20)
    maxmem = r.int_("maxmem", MIN_MEMORY_MIB, 1 << 20)
    if memory is not None and maxmem is not None and maxmem < memory:
        raise r.fail("maxmem", f"maxmem = {maxmem} is below memory = {memory}")
    vcpus = r.int_("vcpus", 1, 255)
    maxvcpus = r.int_("maxvcpus", 1, 255)
    if maxvcpus is not None and vcpus is not None and maxvcpus < vcpus:
        raise r.fail("maxvcpus", f"maxvcpus = {maxvcpus} is below vcpus = {vcpus}")
    if "maxcpus" in raw.values and "maxcpus" not in raw.referenced:
        warnings.append(f"{raw.position('maxcpus')}: maxcpus is not maxvcpus: xl and xm ignore "
                        "it, and so does pvhvm (maxvcpus = N lets vcpu-set go up to N)")
    platform_pci = r.values.get("xen_platform_pci")
    parallel = r.path_("parallel")
    if parallel not in (None, "", "none"):
        try:
            parse_chardev(str(parallel), "parallel", tcp=False)
        except SpecError as err:
            raise r.fail("parallel", str(err)) from err
    rtc_offset = r.values.get("rtc_timeoffset", 0)
    if isinstance(rtc_offset, str):
        digits = rtc_offset.strip().removeprefix("-")
        if digits.isascii() and digits.isdigit():
            rtc_offset = int(rtc_offset)
    if isinstance(rtc_offset, bool) or not isinstance(rtc_offset, int) or \
            abs(rtc_offset) > MAX_RTC_OFFSET:
        raise r.fail("rtc_timeoffset", f"rtc_timeoffset must be seconds (-{MAX_RTC_OFFSET}.."
                                       f"{MAX_RTC_OFFSET}), not {brief(rtc_offset)}")

    return DomainConfig(
        file=raw.file,
        name=name,
        uuid=r.str_("uuid"),
        memory=memory,
        maxmem=maxmem,
        vcpus=vcpus,
        maxvcpus=maxvcpus,
        builder=guest_type.value,
        dialect=dialect,
        dialect_reason=dialect_reason,
        guest_type=guest_type,
        guest_type_reason=guest_type_reason,
        bootloader=bootloader,
        kernel=kernel,
        ramdisk=r.path_("ramdisk"),
        cmdline=cmdline if cmdline is not None else extra,
        root=r.str_("root"),
        boot=boot,
        disks=disks,
        vifs=vifs,
        serial=serial,
        more_serials=more_serials,
        serial_position=r.raw.position("serial") if serial is not None else None,
        sdl=r.bool_("sdl", False),
        nographic=r.bool_("nographic", True),
        on_poweroff=r.choice("on_poweroff", "destroy", ACTIONS),
        on_reboot=r.choice("on_reboot", "restart", ACTIONS),
        on_crash=r.choice("on_crash", "destroy", ACTIONS),
        acpi=r.bool_("acpi", True),
        apic=r.bool_("apic", True),
        pae=r.bool_("pae", True),
        localtime=r.bool_("localtime", False),
        device_model=r.path_("device_model"),
        device_model_version=r.choice(
            "device_model_version", "qemu-xen", ("qemu-xen", "qemu-xen-traditional")
        ) if "device_model_version" in raw.values else None,
        xen_platform_pci=None if platform_pci is None else r.bool_("xen_platform_pci", False),
        vga=_vga(r),
        usb=r.bool_("usb", False),
        usbdevices=_usbdevices(r),
        rtc_timeoffset=rtc_offset,
        bios=_bios(r, guest_type),
        soundhw=_soundhw(r),
        hpet=r.bool_("hpet", True),
        hotplug_slots=r.int_("hotplug_slots", 0, MAX_HOTPLUG_SLOTS),
        spice=_spice(r),
        positions=dict(raw.positions),
        parallel=None if parallel in (None, "", "none") else parallel,
        parallel_position=r.raw.position("parallel") if "parallel" in raw.values else None,
        xl_passthrough=_passthrough(raw),
        unsupported=tuple(unsupported),
        warnings=tuple(warnings),
        **_vnc(r),
    )


def _located(r: _Reader, key: str, parse: Any) -> list[Located[Any]]:
    out: list[Located[Any]] = []
    for item, index in r.list_(key):
        try:
            out.append(Located(parse(item), r.raw.position(key, index)))
        except SpecError as err:
            raise r.fail(key, str(err), index) from err
    return out
