"""The registry of device types: what ``type=`` may say on a disk= or vif= line.

The RFC asks for a convention that lets other backends be added later without disturbing
existing guests. So a type is a registered name with a fixed meaning; new names (or aliases)
may be registered, and the defaults for a device with no ``type=`` are decided by
:func:`default_disk_type` and :func:`default_nic_type`, which never consult the registry, so
registering a type can never change what an existing config means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pvhvm.errors import SpecError


class DeviceKind(Enum):
    """What realises a device: the device model's emulation, or a PV split device."""

    IOEMU = "ioemu"
    XENBUS = "xenbus"


class DeviceClass(Enum):
    """Which spec a type appears on."""

    DISK = "disk"
    NIC = "nic"


@dataclass(frozen=True)
class DeviceType:
    """One registered ``type=`` name."""

    name: str
    kind: DeviceKind
    applies_to: frozenset[DeviceClass]
    description: str


class TypeRegistry:
    """Names accepted by ``type=``; each maps to a fixed DeviceKind."""

    def __init__(self) -> None:
        self._types: dict[str, DeviceType] = {}

    def register(self, device_type: DeviceType) -> None:
        """Add a name; a name already registered cannot be given a new meaning."""
        if device_type.name in self._types:
            raise ValueError(f"device type {device_type.name!r} is already registered")
        self._types[device_type.name] = device_type

    def names(self, device_class: DeviceClass) -> list[str]:
        return [t.name for t in self._types.values() if device_class in t.applies_to]

    def resolve(self, name: str, device_class: DeviceClass) -> DeviceKind:
        """The kind a ``type=`` name stands for on a device of ``device_class``."""
        device_type = self._types.get(name)
        if device_type is None or device_class not in device_type.applies_to:
            allowed = ", ".join(self.names(device_class))
            raise SpecError(
                f"type={name!r} is not a {device_class.value} type (known: {allowed})"
            )
        return device_type.kind


def default_registry() -> TypeRegistry:
    """The built-in types: ioemu and xenbus (the RFC), plus aliases users already write:
    ``virtio``; on NICs xl's ``type=vif`` (xl-network-configuration(5)) and xm's
    ``type=netfront``, both PV only."""
    both = frozenset({DeviceClass.DISK, DeviceClass.NIC})
    registry = TypeRegistry()
    registry.register(DeviceType("ioemu", DeviceKind.IOEMU, both, "emulated by the device model"))
    registry.register(DeviceType("xenbus", DeviceKind.XENBUS, both, "paravirtual split device"))
    registry.register(
        DeviceType("virtio", DeviceKind.XENBUS, both, "alias of xenbus on the qemu platform")
    )
    nic = frozenset({DeviceClass.NIC})
    registry.register(DeviceType("vif", DeviceKind.XENBUS, nic, "xl's name for a PV-only NIC"))
    registry.register(
        DeviceType("netfront", DeviceKind.XENBUS, nic,
                   "xm's name for a PV-only NIC (libvirt's xm converter writes it)")
    )
    return registry


def default_disk_type(vdev_family: str) -> DeviceKind:
    """A disk without ``type=``: ioemu for hd names (Xen 3.0.2), xenbus for xvd and sd."""
    return DeviceKind.IOEMU if vdev_family == "hd" else DeviceKind.XENBUS


def default_nic_type() -> DeviceKind:
    """A NIC without ``type=`` is PV (Xen 3.0.2)."""
    return DeviceKind.XENBUS
