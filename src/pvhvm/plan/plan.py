"""The planner: DomainConfig -> Plan, a pure step that decides every default in one place.

It does no I/O beyond checking that image, kernel and ramdisk files exist, and starts
nothing. Realisers (QEMU argv, XenStore nodes, xl.cfg) only read the Plan.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from pvhvm.config.disk import Access, DiskSpec
from pvhvm.config.domain import Dialect, DomainConfig, GuestType, Located, Spice
from pvhvm.config.keys import RAW_QEMU_ARGS
from pvhvm.config.lang import path_problem
from pvhvm.config.values import (
    MAX_VNC_DISPLAY,
    Chardev,
    ChardevKind,
    ifname_problem,
    keymap_problem,
    parse_chardev,
    parse_vnc_listen,
)
from pvhvm.config.vif import HostForward, VifSpec, forwards_clash, normalise_mac
from pvhvm.errors import ConfigError, SpecError
from pvhvm.hostfs import SocketPath, socket_path_state
from pvhvm.plan.kernel import pv_only_kernel
from pvhvm.plan.types import (
    DeviceClass,
    DeviceKind,
    TypeRegistry,
    default_disk_type,
    default_nic_type,
    default_registry,
)
from pvhvm.plan.vdev import IDE_PLACES, Vdev, VdevFamily, parse_vdev

DEFAULT_MEMORY_MIB = 512
#: empty hot-pluggable slots (pcie-root-port on q35) a domain gets unless hotplug_slots= says
DEFAULT_HOTPLUG_SLOTS = 2
DEFAULT_BRIDGE = "xenbr0"
#: where a hostfwd= with no host address listens: this host only, as vnclisten's default
#: (QEMU's own default is every address, which would open the guest's port to the network)
DEFAULT_HOSTFWD_ADDRESS = "127.0.0.1"
#: the emulated NIC models QEMU 7.2 has on PCI (``-device help``); xl passes model= as is
EMULATED_NIC_MODELS = (
    "rtl8139", "e1000", "e1000-82544gc", "e1000-82545em", "e1000e", "ne2k_pci", "pcnet",
    "vmxnet3", "tulip", "i82550", "i82551", "i82557a", "i82557b", "i82557c", "i82558a",
    "i82558b", "i82559a", "i82559b", "i82559c", "i82559er", "i82562", "i82801",
)
DEFAULT_NIC_MODEL = "rtl8139"
#: xl emulates the first four disks of an HVM guest (libxl_dm.c: disk index 0..3 → hda..hdd)
XL_EMULATED_DISKS = 4
#: the emulated SCSI controller of sd* disks: QEMU's default for if=scsi, which libxl_dm.c
#: and xend's qemu-dm used; Linux's sym53c8xx drives it and SeaBIOS boots from it
SCSI_CONTROLLER = "lsi53c895a"
#: its targets: a narrow SCSI bus of 8 ids, the controller's own being 7 (sda..sdg)
SCSI_UNITS = 7
#: the least memory QEMU's PC firmware and a kernel boot in (xl's own floor is lower: a
#: Mini-OS stub domain runs in 8 MiB on Xen)
MIN_QEMU_MEMORY_MIB = 16
#: Debian's ovmf package: the firmware bios = "ovmf" boots
OVMF_PATH = "/usr/share/ovmf/OVMF.fd"
#: Xen's OUI; the other three octets are derived from the domain's uuid and the vif's index
XEN_OUI = "00:16:3e"


class Platform(Enum):
    """Where a plan is realised."""

    QEMU = "qemu"
    XEN = "xen"


@dataclass(frozen=True)
class DiskPlan:
    """One disk, resolved: how it is realised and where it sits."""

    vdev: str
    devid: int
    kind: DeviceKind
    target: str
    format: str
    access: Access
    cdrom: bool
    #: (channel, unit) on the emulated IDE controller, for ioemu disks but SCSI ones
    ide_place: tuple[int, int] | None
    script: str | None = None
    backend_domain: str | None = None
    backendtype: str | None = None
    #: firmware boot order (0 first), None when firmware should not boot it
    bootindex: int | None = None
    #: the target id on the emulated SCSI controller (SCSI_CONTROLLER), for emulated sd*
    #: disks: sda is 0 (libxl_dm.c: if=scsi,unit=<disk index>)
    scsi_unit: int | None = None
    #: xl-disk-configuration's trusted/untrusted (the frontend's ``trusted`` node; libxl's
    #: default is trusted) and discard/no-discard (the backend's ``discard-enable``)
    trusted: bool = True
    discard: bool = True

    @property
    def is_empty(self) -> bool:
        return self.target == ""

    @property
    def emulated_as(self) -> str | None:
        """How the device model presents it: "IDE", "SCSI", or None for a PV disk."""
        if self.kind is not DeviceKind.IOEMU:
            return None
        return "SCSI" if self.scsi_unit is not None else "IDE"


@dataclass(frozen=True)
class VifPlan:
    """One NIC, resolved."""

    devid: int
    kind: DeviceKind
    mac: str
    bridge: str
    #: the emulated model (ioemu NICs only)
    model: str | None
    ip: str | None = None
    script: str | None = None
    vifname: str | None = None
    rate: str | None = None
    backend_domain: str | None = None
    bootindex: int | None = None
    mtu: int | None = None
    gatewaydev: str | None = None
    #: xl-network-configuration's trusted/untrusted (the frontend's ``trusted`` node)
    trusted: bool = True
    #: port forwards of QEMU user networking (hostfwd=), host addresses decided
    hostfwd: tuple[HostForward, ...] = ()


@dataclass(frozen=True)
class Display:
    """The guest's graphics: an emulated card and, with vnc, a VNC server for it."""

    vga: str
    vnc: bool = False
    listen: str = "127.0.0.1"
    #: VNC display number (port 5900 + N); with ``unused``, the first free one from N
    display: int = 0
    unused: bool = True
    password: str | None = None
    keymap: str | None = None
    #: a SPICE server for the same card (spice = 1)
    spice: Spice | None = None


@dataclass(frozen=True)
class Plan:
    """Everything needed to realise a domain, every default decided."""

    name: str
    uuid: str
    platform: Platform
    memory_mib: int
    vcpus: int
    ide_controller: bool
    disks: tuple[DiskPlan, ...]
    vifs: tuple[VifPlan, ...]
    kernel: str | None
    ramdisk: str | None
    cmdline: str | None
    #: firmware boot order letters (c, d, n); unused with direct kernel boot
    boot: str
    serial: str | None
    on_poweroff: str
    on_reboot: str
    on_crash: str
    acpi: bool
    apic: bool
    pae: bool
    localtime: bool
    xen_platform_pci: bool
    vnc: bool
    sdl: bool
    device_model: str | None = None
    dialect: Dialect = Dialect.XM
    dialect_reason: str = ""
    guest_type: GuestType = GuestType.HVM
    guest_type_reason: str = ""
    maxmem_mib: int | None = None
    maxvcpus: int | None = None
    #: None: no graphics card (the default: guests run headless)
    display: Display | None = None
    usb: bool = False
    usbdevices: tuple[str, ...] = ()
    rtc_timeoffset: int = 0
    bios: str = "seabios"
    soundhw: tuple[str, ...] = ()
    hpet: bool = True
    #: PV devices ``block-attach``/``network-attach`` may add while the domain runs: on
    #: q35 (no IDE) each is an empty pcie-root-port, as q35's root bus has no hotplug
    #: (QEMU docs/pcie.txt); on pc (i440fx) the root bus's own slots are hot-pluggable
    hotplug_slots: int = DEFAULT_HOTPLUG_SLOTS
    parallel: str | None = None
    device_model_version: str | None = None
    #: a PV guest's bootloader (pygrub), kept for the xen platform and export-xl
    bootloader: str | None = None
    #: serial ports after the console (ttyS1..ttyS3)
    more_serials: tuple[str, ...] = ()
    xl_passthrough: tuple[tuple[str, Any], ...] = ()
    #: kernel= and ramdisk= as the file wrote them (export-xl keeps a relative path relative)
    kernel_given: str | None = None
    ramdisk_given: str | None = None
    #: how untyped devices were read (not problems: the dialect's meaning, said once)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def boot_memory_mib(self) -> int:
        """The memory the guest boots with: its static maximum (xl's maxmem), of which the
        balloon gives back all but ``memory_mib``."""
        return self.maxmem_mib if self.maxmem_mib is not None else self.memory_mib

    @property
    def direct_kernel_boot(self) -> bool:
        return self.kernel is not None

    @property
    def scsi_model(self) -> str:
        """The emulated SCSI controller's QEMU device (the plan table names it)."""
        return SCSI_CONTROLLER

    @property
    def scsi_controller(self) -> bool:
        """Whether the guest gets the emulated SCSI controller (some sd* disk is emulated)."""
        return any(d.scsi_unit is not None for d in self.disks)

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON data (the ``--dry-run --json`` document)."""
        return {
            "name": self.name,
            "uuid": self.uuid,
            "platform": self.platform.value,
            "guest_type": self.guest_type.value,
            "guest_type_reason": self.guest_type_reason,
            "dialect": self.dialect.value,
            "dialect_reason": self.dialect_reason,
            "memory": self.memory_mib,
            "maxmem": self.maxmem_mib,
            "vcpus": self.vcpus,
            "maxvcpus": self.maxvcpus,
            "ide_controller": self.ide_controller,
            "scsi_controller": SCSI_CONTROLLER if self.scsi_controller else None,
            "boot": (
                {"kernel": self.kernel, "ramdisk": self.ramdisk, "cmdline": self.cmdline}
                if self.direct_kernel_boot
                else {"firmware": self.boot}
            ),
            "disks": [
                {
                    "vdev": d.vdev, "devid": d.devid, "type": d.kind.value, "target": d.target,
                    "format": d.format, "mode": d.access.value, "cdrom": d.cdrom,
                    "ide_place": list(d.ide_place) if d.ide_place else None,
                    "scsi_unit": d.scsi_unit,
                    "script": d.script, "backend": d.backend_domain, "bootindex": d.bootindex,
                }
                for d in self.disks
            ],
            "vifs": [
                {
                    "devid": v.devid, "type": v.kind.value, "mac": v.mac, "bridge": v.bridge,
                    "model": v.model, "ip": v.ip, "script": v.script, "vifname": v.vifname,
                    "rate": v.rate, "backend": v.backend_domain, "bootindex": v.bootindex,
                    "mtu": v.mtu, "gatewaydev": v.gatewaydev,
                    # only where given, so plans without forwards read as before
                    **({"hostfwd": [str(f) for f in v.hostfwd]} if v.hostfwd else {}),
                }
                for v in self.vifs
            ],
            "serial": self.serial,
            "more_serials": list(self.more_serials),
            "on_poweroff": self.on_poweroff,
            "on_reboot": self.on_reboot,
            "on_crash": self.on_crash,
            "acpi": self.acpi,
            "xen_platform_pci": self.xen_platform_pci,
            "bios": self.bios,
            "display": None if self.display is None else {
                "vga": self.display.vga, "vnc": self.display.vnc,
                "listen": self.display.listen if self.display.vnc else None,
                "display": self.display.display if self.display.vnc else None,
                "spice": None if self.display.spice is None else {
                    "host": self.display.spice.host, "port": self.display.spice.port,
                },
            },
            "usb": self.usb or bool(self.usbdevices),
            "usbdevices": list(self.usbdevices),
            "soundhw": list(self.soundhw),
            "hpet": self.hpet,
            "hotplug_slots": self.hotplug_slots,
            "rtc_timeoffset": self.rtc_timeoffset,
            "parallel": self.parallel,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def _absolute(path: str | None) -> str | None:
    """Paths are decided against the directory pvhvm was run in, once, here: a supervisor or
    a later command may run elsewhere."""
    return None if path is None else os.path.abspath(path)


#: QEMU 7.2's x86 loader (hw/i386/x86.c): a kernel with "HdrS" at 0x202 is loaded as Linux;
#: any other is tried as multiboot, whose header is within its first 8 KiB, 4-byte aligned
_LINUX_MAGIC = b"HdrS"
_MULTIBOOT_MAGIC = 0x1BADB002
_MULTIBOOT_SEARCH = 8192


def is_multiboot(kernel: str) -> bool:
    """Whether QEMU boots ``kernel`` as a multiboot kernel (then ``-initrd`` is a list of
    modules, each ``FILE[ ARGS]``); False when it cannot be read (QEMU will say so)."""
    try:
        with open(kernel, "rb") as stream:
            head = stream.read(_MULTIBOOT_SEARCH)
    except OSError:
        return False
    if head[0x202:0x206] == _LINUX_MAGIC:
        return False
    for offset in range(0, len(head) - 11, 4):
        magic, flags, checksum = (int.from_bytes(head[offset + i:offset + i + 4], "little")
                                  for i in (0, 4, 8))
        if magic == _MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def _port_error(config: DomainConfig, key: str, message: str) -> ConfigError:
    position = config.serial_position if key == "serial" else config.parallel_position
    if position is not None:
        return position.error(message)
    return ConfigError(message, file=config.file)


def _plan_port(config: DomainConfig, key: str, spec: str | None, *, tcp: bool,
               check_files: bool) -> str | None:
    """One serial or parallel port: its spec typed (config.values.parse_chardev), its path
    made absolute, and what QEMU would create there checked: the xl spelling back."""
    if spec is None or (key == "serial" and spec == ""):
        return spec
    try:
        chardev = parse_chardev(spec, key, tcp=tcp)
    except SpecError as err:
        raise _port_error(config, key, str(err)) from err
    if chardev.path is not None:
        chardev = replace(chardev, path=os.path.abspath(chardev.path))
        if check_files:
            _check_port_path(config, key, spec, chardev)
    return chardev.spec


def _check_port_path(config: DomainConfig, key: str, spec: str, chardev: Chardev) -> None:
    """Nothing a port makes replaces what is already there (issue 18). QEMU 7.2 unlinks
    whatever is at a listening socket's path before it binds, so ``unix:`` refuses a path
    holding anything but a dead socket; ``file:`` is opened for appending (qemu.argv: QEMU
    would truncate it otherwise), so it refuses only a path that is not a regular file."""
    assert chardev.path is not None
    path = chardev.path
    if chardev.kind is ChardevKind.UNIX:
        try:
            state = socket_path_state(path)
        except OSError:
            return  # unreachable: QEMU will say so
        problem = {
            SocketPath.OTHER: "exists and is not a socket",
            SocketPath.LIVE: "is a socket something is listening on",
        }.get(state)  # nothing there, or a stale socket QEMU may replace: fine
    else:
        try:
            mode: int | None = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError:
            return  # unreachable: QEMU will say so
        problem = None if mode is None or stat.S_ISREG(mode) else "exists and is not a file"
    if problem is not None:
        raise _port_error(config, key,
                          f"{key} = {spec!r}: {path} {problem}, and QEMU would replace it")


def _plan_ports(
    config: DomainConfig, platform: Platform, check_files: bool
) -> tuple[str | None, tuple[str, ...], str | None]:
    """serial (the console), the serial ports after it and the parallel port."""
    check = check_files and platform is Platform.QEMU
    serial = _plan_port(config, "serial", config.serial, tcp=True, check_files=check)
    more: list[str] = []
    for spec in config.more_serials:
        planned = _plan_port(config, "serial", spec, tcp=True, check_files=check)
        if planned:
            more.append(planned)
    parallel = _plan_port(config, "parallel", config.parallel, tcp=False, check_files=check)
    return serial, tuple(more), parallel


def domain_uuid(config: DomainConfig, identity: str | None = None) -> str:
    """The config's ``uuid=``; else ``identity``, the uuid the toolstack keeps for the domain
    (a defined domain's, a saved one's: runtime/persist.py); else a fresh random one, as xl
    makes one at every create (xl.cfg(5) ``uuid``: "a random one is generated")."""
    if config.uuid is None:
        return identity if identity is not None else str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(config.uuid))
    except ValueError as err:
        raise ConfigError(f"uuid {config.uuid!r} is not a UUID", file=config.file) from err


def default_mac(domain_uuid: str, index: int) -> str:
    """Xen's OUI plus three octets from the domain uuid and vif index (stable across creates)."""
    digest = hashlib.sha256(f"{domain_uuid}/vif/{index}".encode()).digest()
    return f"{XEN_OUI}:{digest[0] & 0x7F:02x}:{digest[1]:02x}:{digest[2]:02x}"


def make_plan(
    config: DomainConfig,
    platform: Platform = Platform.QEMU,
    registry: TypeRegistry | None = None,
    check_files: bool = True,
    skip_unsupported: bool = False,
    uuid: str | None = None,
) -> Plan:
    """Resolve every device of ``config`` and decide every default.

    ``skip_unsupported`` turns keys that change the guest but cannot be realised here (PCI
    passthrough, a vTPM...) from errors into warnings; export-xl keeps them either way.
    ``uuid``: the domain's kept identity, used when the config has no ``uuid=``
    (:func:`domain_uuid`); the default MACs derive from the uuid (:func:`default_mac`)."""
    registry = registry or default_registry()
    warnings = list(config.warnings)
    notes: list[str] = []
    _unsupported_keys(config, platform, skip_unsupported, warnings)
    uuid = domain_uuid(config, uuid)
    pv_guest = config.guest_type is GuestType.PV
    if pv_guest:
        _check_pv_guest(config, platform, warnings)
    disks = _plan_disks(config, registry, check_files, notes)
    vifs = _plan_vifs(config, registry, uuid, warnings, notes)
    vifs = _plan_forwards(config, vifs, platform, skip_unsupported, warnings)

    kernel, ramdisk = _absolute(config.kernel), _absolute(config.ramdisk)
    if ramdisk is not None and kernel is None:
        raise ConfigError("ramdisk is set but kernel is not (direct boot needs a kernel)",
                          file=config.file)
    if check_files:
        for key, path in (("kernel", kernel), ("ramdisk", ramdisk)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{key} {path!r} does not exist", file=config.file)
        if config.bios == "ovmf" and platform is Platform.QEMU and not os.path.isfile(OVMF_PATH):
            raise ConfigError(f"bios = 'ovmf' needs the OVMF firmware at {OVMF_PATH} "
                              "(Debian's ovmf package)", file=config.file)
        if kernel is not None and platform is Platform.QEMU:
            pv_only = pv_only_kernel(kernel)
            if pv_only is not None:
                raise config.where("kernel").error(
                    f"kernel {config.kernel!r} is {pv_only}: a Xen PV-only kernel (PV-GRUB, "
                    "Mini-OS, a unikernel) boots only on Xen, not on QEMU; use --platform xen "
                    "or export-xl, or boot a Linux bzImage or a PVH/multiboot kernel here")
    if platform is Platform.QEMU:
        for key, value in (("memory", config.memory), ("maxmem", config.maxmem)):
            if value is not None and value < MIN_QEMU_MEMORY_MIB:
                raise config.where(key).error(
                    f"{key} = {value}: a guest on QEMU needs at least {MIN_QEMU_MEMORY_MIB} "
                    "MiB (its firmware and kernel); a Mini-OS stub domain's few MiB work only "
                    "on Xen")
    if ramdisk is not None and "," in ramdisk:
        # QEMU splits -initrd at commas (multiboot modules); a Linux kernel's loader takes
        # the path whole, so no escape means the same to both
        raise ConfigError(f"ramdisk {ramdisk!r}: QEMU's -initrd splits a path at commas; move "
                          "or link the file to a path without a comma", file=config.file)
    if check_files and platform is Platform.QEMU and ramdisk is not None and " " in ramdisk \
            and kernel is not None and is_multiboot(kernel):
        raise ConfigError(f"ramdisk {ramdisk!r}: kernel {kernel!r} is a multiboot kernel, and "
                          "QEMU ends a multiboot module's file name at its first space (the "
                          "rest is the module's command line); move or link the file to a "
                          "path without a space", file=config.file)
    serial, more_serials, parallel = _plan_ports(config, platform, check_files)
    cmdline = config.cmdline
    if config.root is not None:
        cmdline = f"root={config.root}" + (f" {cmdline}" if cmdline else "")

    boot = config.boot or "cd"
    if kernel is None:
        disks, vifs = _assign_bootindex(boot, disks, vifs, warnings, config.boot is not None)

    memory = config.memory or DEFAULT_MEMORY_MIB
    if config.maxmem is not None and config.maxmem < memory:
        raise ConfigError(f"maxmem = {config.maxmem} is below memory = {memory} (the "
                          "default when memory is not set)", file=config.file)
    if config.maxvcpus is not None and config.maxvcpus < (config.vcpus or 1):
        raise ConfigError(f"maxvcpus = {config.maxvcpus} is below vcpus = "
                          f"{config.vcpus or 1}", file=config.file)

    xen_platform_pci = config.xen_platform_pci
    if xen_platform_pci is None:
        xen_platform_pci = any(d.kind is DeviceKind.XENBUS for d in disks) or any(
            v.kind is DeviceKind.XENBUS for v in vifs
        )
    return Plan(
        name=config.name,
        uuid=uuid,
        platform=platform,
        memory_mib=memory,
        vcpus=config.vcpus or 1,
        ide_controller=any(d.ide_place is not None for d in disks),
        disks=tuple(disks),
        vifs=tuple(vifs),
        kernel=kernel,
        ramdisk=ramdisk,
        cmdline=cmdline,
        boot=boot,
        serial=serial,
        on_poweroff=config.on_poweroff,
        on_reboot=config.on_reboot,
        on_crash=config.on_crash,
        acpi=config.acpi,
        apic=config.apic,
        pae=config.pae,
        localtime=config.localtime,
        xen_platform_pci=xen_platform_pci,
        vnc=config.vnc,
        sdl=config.sdl,
        device_model=config.device_model,
        dialect=config.dialect,
        dialect_reason=config.dialect_reason,
        guest_type=config.guest_type,
        guest_type_reason=config.guest_type_reason,
        maxmem_mib=config.maxmem if config.maxmem not in (None, memory) else None,
        maxvcpus=config.maxvcpus if config.maxvcpus != (config.vcpus or 1) else None,
        display=_display(config),
        usb=config.usb,
        usbdevices=config.usbdevices,
        rtc_timeoffset=config.rtc_timeoffset,
        bios=config.bios,
        soundhw=config.soundhw,
        hpet=config.hpet,
        hotplug_slots=(DEFAULT_HOTPLUG_SLOTS if config.hotplug_slots is None
                       else config.hotplug_slots),
        parallel=parallel,
        device_model_version=config.device_model_version,
        bootloader=config.bootloader,
        more_serials=more_serials,
        xl_passthrough=config.xl_passthrough,
        kernel_given=config.kernel,
        ramdisk_given=config.ramdisk,
        notes=tuple(notes),
        warnings=tuple(warnings),
    )


def _unsupported_keys(
    config: DomainConfig, platform: Platform, skip: bool, warnings: list[str]
) -> None:
    """GUEST keys (config.keys): errors unless the user said to go ahead without them."""
    for key, position in config.unsupported:
        message = (
            f"{key} changes what the guest gets, and the {platform.value} platform cannot "
            "realise it (no passthrough or Xen-only device here)"
        )
        if key in RAW_QEMU_ARGS:
            message = (f"{key} would put arbitrary options on QEMU's command line, and pvhvm "
                       "makes every QEMU option from the config's typed keys")
        if not skip:
            raise position.error(f"{message}; remove it, or give --skip-unsupported to create "
                                 "the guest without it")
        warnings.append(f"{position}: {message}: created without it (--skip-unsupported)")


def _check_pv_guest(config: DomainConfig, platform: Platform, warnings: list[str]) -> None:
    """A PV guest runs its own kernel on PV devices only: on QEMU, direct kernel boot (a
    bootloader = "pygrub" config has had its kernel found by pvhvm.inspect.pygrub by now)."""
    hvm_hint = 'add type = "hvm" (xl) or builder = "hvm" (xm) for an HVM guest'
    if config.kernel is None:
        if config.bootloader is not None and platform is Platform.XEN:
            return  # Xen runs the bootloader itself
        if config.bootloader is not None:
            raise ConfigError(
                f"bootloader = {config.bootloader!r} ({config.guest_type_reason}): pvhvm does "
                "not run a bootloader from the guest's disk; set kernel=, ramdisk= and "
                "extra= to the guest's kernel, initrd and arguments (pvhvm guest inspect "
                f"lists them), or {hvm_hint}",
                file=config.file,
            )
        raise ConfigError(
            f"{config.guest_type_reason}, and a PV guest needs kernel= (or bootloader=); "
            f"{hvm_hint}", file=config.file,
        )
    if platform is not Platform.XEN and config.cmdline and any(
            f"console={c}" in config.cmdline for c in ("hvc0", "xvc0")):
        warnings.append(
            "the kernel command line names Xen's PV console (hvc0/xvc0), which QEMU does not "
            "have: the serial console is ttyS0 (extra = \"console=ttyS0 ...\")"
        )


def _display(config: DomainConfig) -> Display | None:
    """The graphics card and VNC server; listen address, display and keymap checked as such
    (config.values) whatever reader made ``config``."""
    if config.vga == "none" and config.spice is not None:
        raise config.where("vga").error("vga = 'none' and spice = 1: SPICE shows the guest's "
                                        "graphics card, so give it one (or drop spice)")
    # sdl = 1 asks for a window on the card, so the guest has its card (xl: cirrus) even
    # where no window opens (the qemu platform says it ignores sdl)
    if config.vga == "none" or not (config.vnc or config.vga or config.spice or config.sdl):
        return None
    try:
        listen, display = parse_vnc_listen(config.vnc_listen)
    except SpecError as err:
        raise ConfigError(str(err), file=config.file) from err
    if display is not None:
        raise ConfigError(f"vnclisten = {config.vnc_listen!r}: give the display as vncdisplay",
                          file=config.file)
    display = config.vnc_display or 0
    if not 0 <= display <= MAX_VNC_DISPLAY:
        raise ConfigError(f"vncdisplay = {display} is out of range (0..{MAX_VNC_DISPLAY})",
                          file=config.file)
    problem = None if config.keymap is None else keymap_problem(config.keymap)
    if problem is not None:
        raise ConfigError(problem, file=config.file)
    return Display(
        vga=config.vga or "cirrus", vnc=config.vnc, listen=listen, display=display,
        unused=config.vnc_unused, keymap=config.keymap, spice=config.spice,
        # one secret for the display: vncpasswd, or spicepasswd (config.domain: never two)
        password=config.vnc_password or (config.spice.password if config.spice else None),
    )


_PV_GUEST = 'a PV guest has no emulated devices; add type = "hvm" (xl) or builder = "hvm" (xm)'


def _explicit_kind(
    config: DomainConfig, type_: str | None, device_class: DeviceClass, cdrom: bool,
    registry: TypeRegistry, where: str, pos: Any,
) -> DeviceKind | None:
    """The kind a device's own ``type=`` gives (a PV guest: always xenbus, and an emulated
    device in it is an error), or None when the dialect's default decides."""
    kind: DeviceKind | None = None
    if type_ is not None:
        try:
            kind = registry.resolve(type_, device_class)
        except SpecError as err:
            raise pos.error(f"{where}: {err}") from err
    if config.guest_type is GuestType.PV:
        if cdrom or kind is DeviceKind.IOEMU:
            what = "a cdrom is emulated" if cdrom else f"type={type_} is emulated"
            raise pos.error(f"{where}: {what}, and {_PV_GUEST} to emulate it")
        return DeviceKind.XENBUS
    return kind


def _disk_kind(
    config: DomainConfig, spec: DiskSpec, vdev: Vdev, registry: TypeRegistry, where: str,
    pos: Any,
) -> DeviceKind:
    """The one place an untyped disk's kind is decided: by guest type, then dialect.

    xl (libxl_dm.c, qemu-xen): sd* disks are emulated as SCSI, other disks among the first
    four as IDE, the rest are PV only, and a disk served by a driver domain (backend=) is PV
    only (libxl_disk.c: no local path for the device model to open). xm (xend 3.0.4-4.4,
    qemu-dm's xenstore.c): hd* disks IDE, sd* SCSI, xvd* PV only. xend 3.0.2 (the RFC): hd*
    IDE, everything else PV only."""
    kind = _explicit_kind(config, spec.type, DeviceClass.DISK, spec.cdrom, registry, where, pos)
    if kind is not None:
        return kind
    if spec.cdrom:
        return DeviceKind.IOEMU
    if config.dialect is Dialect.XL and spec.backend is not None:
        return DeviceKind.XENBUS
    if config.dialect is Dialect.XL:
        emulated = vdev.family is VdevFamily.SD or (
            vdev.family is not VdevFamily.NUMBER and vdev.disk < XL_EMULATED_DISKS)
        return DeviceKind.IOEMU if emulated else DeviceKind.XENBUS
    if config.dialect is Dialect.XM and vdev.family is VdevFamily.SD:
        return DeviceKind.IOEMU
    return default_disk_type(vdev.family.value)


def _scsi_unit(config: DomainConfig, spec: DiskSpec, vdev: Vdev) -> int | None:
    """An emulated sd* hard disk's SCSI target (sda → 0), as libxl_dm.c and xend's qemu-dm
    place it; None for every other disk (xend 3.0.2 emulated IDE only)."""
    if spec.cdrom or vdev.family is not VdevFamily.SD or config.dialect is Dialect.XEND_302:
        return None
    return vdev.disk


def _ide_place(config: DomainConfig, spec: DiskSpec, vdev: Vdev) -> tuple[int, int] | None:
    """hda..hdd sit at their own place; in xl files, and for any cdrom, a disk of another
    name sits at the place of its disk index (xvdc → hdc), as libxl_dm.c puts it."""
    if vdev.ide_place is not None:
        return vdev.ide_place
    by_index = config.dialect is Dialect.XL or spec.cdrom
    if by_index and vdev.family is not VdevFamily.NUMBER and vdev.disk < len(IDE_PLACES):
        return list(IDE_PLACES.values())[vdev.disk]
    return None


def _plan_disks(
    config: DomainConfig, registry: TypeRegistry, check_files: bool, notes: list[str]
) -> list[DiskPlan]:
    disks: list[DiskPlan] = []
    by_devid: dict[int, Located[DiskSpec]] = {}
    by_place: dict[tuple[int, int], Located[DiskSpec]] = {}
    untyped_emulated: list[str] = []
    for located in config.disks:
        spec, pos = located.value, located.position
        where = f"disk {spec.vdev!r}"
        try:
            vdev = parse_vdev(spec.vdev)
        except SpecError as err:
            raise pos.error(str(err)) from err
        if vdev.devid in by_devid:
            other = by_devid[vdev.devid]
            raise pos.error(
                f"{where}: virtual device already used by disk {other.value.vdev!r} "
                f"at {other.position}"
            )
        kind = _disk_kind(config, spec, vdev, registry, where, pos)
        if spec.cdrom and kind is DeviceKind.XENBUS:
            raise pos.error(
                f"{where}: a cdrom is always emulated; type={spec.type} is not allowed on it "
                "(drop type= or use type=ioemu)"
            )
        ide_place = None
        scsi_unit = None if kind is DeviceKind.XENBUS else _scsi_unit(config, spec, vdev)
        if scsi_unit is not None and scsi_unit >= SCSI_UNITS:
            last = "sd" + chr(ord("a") + SCSI_UNITS - 1)
            raise pos.error(
                f"{where}: an emulated SCSI disk must be one of sda..{last} (the "
                f"{SCSI_CONTROLLER} controller's {SCSI_UNITS} targets); make it PV "
                "(type=xenbus) or give it one of those names"
            )
        if scsi_unit is not None:
            if spec.type is None:
                untyped_emulated.append(spec.vdev)
        elif kind is DeviceKind.IOEMU:
            ide_place = _ide_place(config, spec, vdev)
            if ide_place is None:
                hint = "" if spec.type else " (or give type=xenbus to make it PV)"
                raise pos.error(
                    f"{where}: an emulated (ioemu) disk must sit at one of the four IDE places "
                    f"{', '.join(IDE_PLACES)}; {spec.vdev} is not one{hint}"
                )
            other_place = by_place.get(ide_place)
            if other_place is not None:
                place_name = list(IDE_PLACES)[list(IDE_PLACES.values()).index(ide_place)]
                raise pos.error(
                    f"{where}: IDE place {place_name} is already taken by disk "
                    f"{other_place.value.vdev!r} at {other_place.position}"
                )
            by_place[ide_place] = located
            if spec.type is None and not spec.cdrom and config.dialect is not Dialect.XEND_302:
                untyped_emulated.append(spec.vdev)
        if kind is DeviceKind.IOEMU and not spec.cdrom and not spec.access.writable \
                and scsi_unit is None:
            how = ("xl emulates it as IDE (one of the first four disks), and neither xl "
                   "(XSA-142) nor QEMU can emulate" if spec.type is None
                   and config.dialect is Dialect.XL else "QEMU cannot emulate")
            raise pos.error(
                f"{where}: {how} a read-only IDE hard disk; make it PV "
                "(type=xenbus), a cdrom (:cdrom), or writable"
            )
        by_devid[vdev.devid] = located
        target = spec.target
        problem = path_problem(target)
        if problem is not None:
            raise pos.error(f"{where}: target: {problem}")
        if target and not (spec.is_script_backed or spec.is_network):
            target = os.path.abspath(target)
            what = "cdrom media" if spec.cdrom else "image"
            if check_files and not os.path.exists(target):
                raise pos.error(f"{where}: {what} {spec.target!r} does not exist")
            if check_files and os.path.isdir(target):
                raise pos.error(f"{where}: {what} {spec.target!r} is a directory")
        disks.append(
            DiskPlan(
                vdev=spec.vdev, devid=vdev.devid, kind=kind, target=target,
                format=spec.format, access=spec.access, cdrom=spec.cdrom, ide_place=ide_place,
                script=spec.script, backend_domain=spec.backend, backendtype=spec.backendtype,
                scsi_unit=scsi_unit, trusted=spec.trusted is not False,
                discard=spec.discard is not False,
            )
        )
    if untyped_emulated:
        rule = ("emulates an HVM guest's sd* disks as SCSI and its other first four disks as "
                "IDE" if config.dialect is Dialect.XL
                else "emulates an HVM guest's hd* disks as IDE and its sd* disks as SCSI")
        notes.append(
            f"disk(s) {', '.join(untyped_emulated)} have no type=: "
            f"{config.dialect.toolstack} {rule} and offers them PV too, for the guest's PV "
            "drivers to unplug the emulated ones; QEMU has no unplug, so they are emulated "
            "only (type=xenbus makes a disk PV-only)"
        )
    _check_sharing(config)
    return disks


def _check_sharing(config: DomainConfig) -> None:
    """A writable image may be in two disks only when every writable use says ``w!``."""
    seen: dict[str, Located[DiskSpec]] = {}
    for located in config.disks:
        spec = located.value
        if not spec.target or spec.is_script_backed:
            continue
        key = os.path.realpath(spec.target)
        other = seen.get(key)
        if other is not None:
            modes = {spec.access, other.value.access}
            if Access.RW in modes:
                raise located.position.error(
                    f"disk {spec.vdev!r}: image {spec.target!r} is also used by disk "
                    f"{other.value.vdev!r} at {other.position}, and one of them is writable; "
                    "use mode w! on both to share a writable image on purpose"
                )
        else:
            seen[key] = located


def _nic_kind(
    config: DomainConfig, spec: VifSpec, registry: TypeRegistry, where: str, pos: Any,
    warnings: list[str],
) -> DeviceKind:
    """The one place an untyped NIC's kind is decided: by guest type, then dialect.

    xl (xl-network-configuration(5)) and xend 3.0.4-4.4 (image.py) default an HVM guest's
    vif to type=ioemu, an emulated NIC plus its PV path; xend 3.0.2 made it PV only. xl reads
    a type it does not know with "Invalid parameter `type'." and the default."""
    type_ = spec.type
    if (config.dialect is Dialect.XL and type_ is not None
            and type_ not in registry.names(DeviceClass.NIC)):
        warnings.append(f"{pos}: {where}: type={type_}: xl says \"Invalid parameter `type'\" "
                        "and uses its default, type=ioemu")
        type_ = None
    kind = _explicit_kind(config, type_, DeviceClass.NIC, False, registry, where, pos)
    if kind is not None:
        return kind
    if config.dialect is Dialect.XEND_302:
        return default_nic_type()
    return DeviceKind.IOEMU


def _plan_vifs(
    config: DomainConfig, registry: TypeRegistry, uuid: str, warnings: list[str],
    notes: list[str],
) -> list[VifPlan]:
    vifs: list[VifPlan] = []
    macs: dict[str, Located[VifSpec]] = {}
    devids: dict[int, Located[VifSpec]] = {}
    untyped_emulated: list[str] = []
    for index, located in enumerate(config.vifs):
        spec, pos = located.value, located.position
        where = f"vif {index}"
        kind = _nic_kind(config, spec, registry, where, pos, warnings)
        explicit_type = spec.type if spec.type in registry.names(DeviceClass.NIC) else None
        for key, value in (("script", spec.script), ("bridge", spec.bridge)):
            problem = None if value is None else path_problem(value)
            if problem is not None:
                raise pos.error(f"{where}: {key}: {problem}")
        for key, value in (("bridge", spec.bridge), ("vifname", spec.vifname),
                           ("gatewaydev", spec.gatewaydev), ("forwarddev", spec.forwarddev)):
            problem = None if value is None else ifname_problem(value)
            if problem is not None:
                raise pos.error(f"{where}: {key}: {problem}")
        if spec.mac is not None:
            try:
                normalise_mac(spec.mac, where)
            except SpecError as err:
                raise pos.error(str(err)) from err
        model = spec.model
        if kind is DeviceKind.IOEMU and explicit_type is None and \
                (model or "").startswith("virtio"):
            # xl hands model= to QEMU as is: virtio-net is QEMU's PV NIC, so this vif is PV
            notes.append(f"{where}: model={model} is QEMU's PV NIC, so this vif is PV "
                         "(type=xenbus)")
            kind, model = DeviceKind.XENBUS, None
        if kind is DeviceKind.IOEMU:
            model = model or DEFAULT_NIC_MODEL
            if model.startswith("virtio"):
                raise pos.error(f"{where}: model={model} is the PV NIC; give type=xenbus "
                                "instead of an emulated model")
            if model not in EMULATED_NIC_MODELS:
                raise pos.error(
                    f"{where}: model={model!r} is not an emulated NIC model QEMU has "
                    f"(known: {', '.join(EMULATED_NIC_MODELS)})"
                )
            if explicit_type is None:
                untyped_emulated.append(str(index))
        elif model is not None:
            if explicit_type is not None:
                raise pos.error(
                    f"{where}: model={model} applies only to emulated NICs, "
                    f"and this one is type={spec.type}"
                )
            why = ("a PV guest's NICs are PV" if config.guest_type is GuestType.PV
                   else "a vif without type= is PV in xend 3.0.2's files (add type=ioemu to "
                        "emulate it)")
            warnings.append(f"{pos}: {where}: model={model} ignored: {why}")
            model = None
        mac = spec.mac or default_mac(uuid, index)
        if mac in macs:
            other = macs[mac].position
            raise pos.error(f"{where}: MAC {mac} is already used by the vif at {other}")
        macs[mac] = located
        devid = index if spec.devid is None else spec.devid
        if devid in devids:
            other = devids[devid].position
            raise pos.error(f"{where}: devid {devid} is already used by the vif at {other}")
        devids[devid] = located
        vifs.append(
            VifPlan(
                devid=devid, kind=kind, mac=mac, bridge=spec.bridge or DEFAULT_BRIDGE,
                model=model, ip=spec.ip, script=spec.script, vifname=spec.vifname,
                rate=spec.rate, backend_domain=spec.backend, mtu=spec.mtu,
                gatewaydev=spec.gatewaydev, trusted=spec.trusted is not False,
            )
        )
    if untyped_emulated:
        notes.append(
            f"vif(s) {', '.join(untyped_emulated)} have no type=: "
            f"{config.dialect.toolstack}'s default is type=ioemu, an emulated NIC and a PV one "
            "the guest's drivers may use instead; QEMU has no unplug, so they are emulated "
            "only (type=xenbus makes a NIC PV-only)"
        )
    return vifs


def _plan_forwards(
    config: DomainConfig, vifs: list[VifPlan], platform: Platform, skip: bool,
    warnings: list[str],
) -> list[VifPlan]:
    """hostfwd= (pvhvm's port forwards of QEMU user networking): refused on a vif that names
    a bridge, on the xen platform (xl's vifs are all on bridges; with ``skip`` a warning, as
    export-xl plans), and where two forwards would listen on one host port; an empty host
    address becomes DEFAULT_HOSTFWD_ADDRESS."""
    planned: list[VifPlan] = []
    seen: list[tuple[HostForward, str]] = []
    for index, (vif, located) in enumerate(zip(vifs, config.vifs, strict=True)):
        spec, pos = located.value, located.position
        if not spec.hostfwd:
            planned.append(vif)
            continue
        where = f"vif {index}"
        if spec.bridge is not None:
            raise pos.error(f"{where}: hostfwd= forwards ports of QEMU user networking, and "
                            f"bridge={spec.bridge} puts this vif on a bridge (reach the guest "
                            "at its own address there); drop one of them")
        if platform is Platform.XEN:
            message = (f"{where}: hostfwd= forwards ports of QEMU user networking, which the "
                       "xen platform has not: xl puts every vif on a bridge")
            if not skip:
                raise pos.error(f"{message}; remove it, or give --skip-unsupported to create "
                                "the guest without it")
            warnings.append(f"{pos}: {message}: left out")
        forwards = tuple(
            f if f.host_address is not None else replace(f, host_address=DEFAULT_HOSTFWD_ADDRESS)
            for f in spec.hostfwd)
        for forward in forwards:
            for other, other_where in seen:
                if forwards_clash(forward, other):
                    raise pos.error(f"{where}: hostfwd={forward}: {forward.protocol} host port "
                                    f"{forward.host_port} is forwarded by {other_where} too")
            seen.append((forward, f"{where} at {pos}"))
        planned.append(replace(vif, hostfwd=forwards))
    return planned


def _assign_bootindex(
    boot: str, disks: list[DiskPlan], vifs: list[VifPlan], warnings: list[str], explicit: bool
) -> tuple[list[DiskPlan], list[VifPlan]]:
    """Firmware boot order from ``boot=``: c = first hard disk, d = first cdrom, n = first NIC."""
    disk_index: dict[int, int] = {}
    vif_index: dict[int, int] = {}
    order = 0
    for letter in dict.fromkeys(boot.replace("a", "")):
        if letter == "c":
            candidates = [i for i, d in enumerate(disks) if not d.cdrom]
        elif letter == "d":
            candidates = [i for i, d in enumerate(disks) if d.cdrom and not d.is_empty]
        else:
            candidates = []
        if letter == "n":
            if vifs:
                vif_index[0] = order
                order += 1
            elif explicit:
                warnings.append("boot=n: there is no NIC to boot from")
            continue
        if candidates:
            disk_index[candidates[0]] = order
            order += 1
        elif explicit:
            warnings.append(f"boot={letter}: there is no {'disk' if letter == 'c' else 'cdrom'}")
    disks = [replace(d, bootindex=disk_index.get(i)) for i, d in enumerate(disks)]
    vifs = [replace(v, bootindex=vif_index.get(i)) for i, v in enumerate(vifs)]
    return disks, vifs
