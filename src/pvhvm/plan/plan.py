"""The planner: DomainConfig -> Plan, a pure step that decides every default in one place.

It does no I/O beyond checking that image, kernel and ramdisk files exist, and starts
nothing. Realisers (QEMU argv, XenStore nodes, xl.cfg) only read the Plan.
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from pvhvm.config.disk import Access, DiskSpec
from pvhvm.config.domain import DomainConfig, Located
from pvhvm.config.vif import VifSpec
from pvhvm.errors import ConfigError, SpecError
from pvhvm.hostfs import SocketPath, socket_path_state
from pvhvm.plan.types import (
    DeviceClass,
    DeviceKind,
    TypeRegistry,
    default_disk_type,
    default_nic_type,
    default_registry,
)
from pvhvm.plan.vdev import IDE_PLACES, parse_vdev

DEFAULT_MEMORY_MIB = 512
DEFAULT_BRIDGE = "xenbr0"
EMULATED_NIC_MODELS = ("rtl8139", "e1000", "ne2k_pci")
DEFAULT_NIC_MODEL = "rtl8139"
#: Xen's OUI; the other three octets are derived from the domain's uuid and the vif's index
XEN_OUI = "00:16:3e"
_UUID_NAMESPACE = uuidlib.UUID("6f1c0a6e-3b9e-4f3c-9a57-7076686d0001")


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
    #: (channel, unit) on the emulated IDE controller, for ioemu disks
    ide_place: tuple[int, int] | None
    script: str | None = None
    backend_domain: str | None = None
    backendtype: str | None = None
    #: firmware boot order (0 first), None when firmware should not boot it
    bootindex: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.target == ""


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
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def direct_kernel_boot(self) -> bool:
        return self.kernel is not None

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON data (the ``--dry-run --json`` document)."""
        return {
            "name": self.name,
            "uuid": self.uuid,
            "platform": self.platform.value,
            "memory": self.memory_mib,
            "vcpus": self.vcpus,
            "ide_controller": self.ide_controller,
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
                    "script": d.script, "backend": d.backend_domain, "bootindex": d.bootindex,
                }
                for d in self.disks
            ],
            "vifs": [
                {
                    "devid": v.devid, "type": v.kind.value, "mac": v.mac, "bridge": v.bridge,
                    "model": v.model, "ip": v.ip, "script": v.script, "vifname": v.vifname,
                    "rate": v.rate, "backend": v.backend_domain, "bootindex": v.bootindex,
                }
                for v in self.vifs
            ],
            "serial": self.serial,
            "on_poweroff": self.on_poweroff,
            "on_reboot": self.on_reboot,
            "on_crash": self.on_crash,
            "acpi": self.acpi,
            "xen_platform_pci": self.xen_platform_pci,
            "warnings": list(self.warnings),
        }


def _absolute(path: str | None) -> str | None:
    """Paths are decided against the directory pvhvm was run in, once, here: a supervisor or
    a later command may run elsewhere."""
    return None if path is None else os.path.abspath(path)


def _absolute_serial(serial: str | None) -> str | None:
    for kind in ("file:", "unix:"):
        if serial is not None and serial.startswith(kind) and serial[len(kind):]:
            return kind + os.path.abspath(serial[len(kind):])
    return serial


def _check_serial_socket(config: DomainConfig, serial: str | None) -> None:
    """QEMU unlinks whatever is at a listening socket's path before it binds (checked with
    QEMU 7.2): refuse a path that holds anything but a dead socket."""
    if serial is None or not serial.startswith("unix:"):
        return
    where = serial[5:].split(",")[0]
    try:
        state = socket_path_state(where)
    except OSError:
        return  # unreachable: QEMU will say so
    problem = {
        SocketPath.OTHER: "exists and is not a socket",
        SocketPath.LIVE: "is a socket something is listening on",
    }.get(state)  # nothing there, or a stale socket QEMU may replace: fine
    if problem is not None:
        message = f"serial = {config.serial!r}: {where} {problem}, and QEMU would replace it"
        if config.serial_position is not None:
            raise config.serial_position.error(message)
        raise ConfigError(message, file=config.file)


def domain_uuid(config: DomainConfig) -> str:
    """The config's uuid, or one derived from the name so a re-created guest keeps it."""
    if config.uuid is None:
        return str(uuidlib.uuid5(_UUID_NAMESPACE, config.name))
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
) -> Plan:
    """Resolve every device of ``config`` and decide every default."""
    registry = registry or default_registry()
    warnings = list(config.warnings)
    uuid = domain_uuid(config)
    disks = _plan_disks(config, registry, check_files)
    vifs = _plan_vifs(config, registry, uuid, warnings)

    kernel, ramdisk = _absolute(config.kernel), _absolute(config.ramdisk)
    if ramdisk is not None and kernel is None:
        raise ConfigError("ramdisk is set but kernel is not (direct boot needs a kernel)",
                          file=config.file)
    if check_files:
        for key, path in (("kernel", kernel), ("ramdisk", ramdisk)):
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"{key} {path!r} does not exist", file=config.file)
    serial = _absolute_serial(config.serial)
    if check_files and platform is Platform.QEMU:
        _check_serial_socket(config, serial)
    cmdline = config.cmdline
    if config.root is not None:
        cmdline = f"root={config.root}" + (f" {cmdline}" if cmdline else "")

    boot = config.boot or "cd"
    if kernel is None:
        disks, vifs = _assign_bootindex(boot, disks, vifs, warnings, config.boot is not None)

    xen_platform_pci = config.xen_platform_pci
    if xen_platform_pci is None:
        xen_platform_pci = any(d.kind is DeviceKind.XENBUS for d in disks) or any(
            v.kind is DeviceKind.XENBUS for v in vifs
        )
    return Plan(
        name=config.name,
        uuid=uuid,
        platform=platform,
        memory_mib=config.memory or DEFAULT_MEMORY_MIB,
        vcpus=config.vcpus or 1,
        ide_controller=any(d.kind is DeviceKind.IOEMU for d in disks),
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
        warnings=tuple(warnings),
    )


def _plan_disks(
    config: DomainConfig, registry: TypeRegistry, check_files: bool
) -> list[DiskPlan]:
    disks: list[DiskPlan] = []
    by_devid: dict[int, Located[DiskSpec]] = {}
    for located in config.disks:
        spec, pos = located.value, located.position
        where = f"disk {spec.vdev!r}"
        try:
            vdev = parse_vdev(spec.vdev)
        except SpecError as err:
            raise pos.error(str(err)) from err
        if spec.type is not None:
            try:
                kind = registry.resolve(spec.type, DeviceClass.DISK)
            except SpecError as err:
                raise pos.error(f"{where}: {err}") from err
        elif spec.cdrom:
            kind = DeviceKind.IOEMU
        else:
            kind = default_disk_type(vdev.family.value)
        if spec.cdrom and kind is DeviceKind.XENBUS:
            raise pos.error(
                f"{where}: a cdrom is always emulated; type={spec.type} is not allowed on it "
                "(drop type= or use type=ioemu)"
            )
        ide_place = None
        if kind is DeviceKind.IOEMU:
            ide_place = vdev.ide_place
            if ide_place is None:
                raise pos.error(
                    f"{where}: an emulated (ioemu) disk must sit at one of the four IDE places "
                    f"{', '.join(IDE_PLACES)}; {spec.vdev} is not one"
                    + ("" if spec.type else " (or give type=xenbus to make it PV)")
                )
        if vdev.devid in by_devid:
            other = by_devid[vdev.devid]
            raise pos.error(
                f"{where}: virtual device already used by disk {other.value.vdev!r} "
                f"at {other.position}"
            )
        if kind is DeviceKind.IOEMU and not spec.cdrom and not spec.access.writable:
            raise pos.error(
                f"{where}: QEMU cannot emulate a read-only IDE hard disk; make it PV "
                "(type=xenbus), a cdrom (:cdrom), or writable"
            )
        by_devid[vdev.devid] = located
        target = spec.target
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
            )
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


def _plan_vifs(
    config: DomainConfig, registry: TypeRegistry, uuid: str, warnings: list[str]
) -> list[VifPlan]:
    vifs: list[VifPlan] = []
    macs: dict[str, Located[VifSpec]] = {}
    for index, located in enumerate(config.vifs):
        spec, pos = located.value, located.position
        where = f"vif {index}"
        if spec.type is not None:
            try:
                kind = registry.resolve(spec.type, DeviceClass.NIC)
            except SpecError as err:
                raise pos.error(f"{where}: {err}") from err
        else:
            kind = default_nic_type()
        model = spec.model
        if kind is DeviceKind.IOEMU:
            model = model or DEFAULT_NIC_MODEL
            if model not in EMULATED_NIC_MODELS:
                raise pos.error(
                    f"{where}: model={model!r} is not an emulated NIC model "
                    f"(known: {', '.join(EMULATED_NIC_MODELS)})"
                )
        elif model is not None:
            if spec.type is not None:
                raise pos.error(
                    f"{where}: model={model} applies only to emulated NICs, "
                    f"and this one is type={spec.type}"
                )
            warnings.append(
                f"{pos}: {where}: model={model} ignored: a vif without type= is PV "
                "(add type=ioemu to emulate it)"
            )
            model = None
        mac = spec.mac or default_mac(uuid, index)
        if mac in macs:
            other = macs[mac].position
            raise pos.error(f"{where}: MAC {mac} is already used by the vif at {other}")
        macs[mac] = located
        vifs.append(
            VifPlan(
                devid=index, kind=kind, mac=mac, bridge=spec.bridge or DEFAULT_BRIDGE,
                model=model, ip=spec.ip, script=spec.script, vifname=spec.vifname,
                rate=spec.rate, backend_domain=spec.backend,
            )
        )
    return vifs


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
