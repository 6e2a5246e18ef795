"""Platforms a domain is realised on, behind one interface (see :mod:`pvhvm.platforms.base`).

- :class:`~pvhvm.platforms.qemu.QemuPlatform` (``qemu``, the default): QEMU supervised by pvhvm;
- :class:`~pvhvm.platforms.xen.XenPlatform` (``xen``): xenbus entries in XenStore;
- :class:`~pvhvm.platforms.libvirt.LibvirtPlatform` (``libvirt``): a libvirt daemon, by URI.
"""

from __future__ import annotations

from pvhvm.platforms.base import (
    Created,
    CreateOptions,
    DomainPlatform,
    Platforms,
    ReportSource,
)
from pvhvm.platforms.libvirt import LibvirtPlatform
from pvhvm.platforms.qemu import QemuPlatform
from pvhvm.platforms.xen import XenPlatform
from pvhvm.runtime.state import StateStore

__all__ = [
    "CreateOptions", "Created", "DomainPlatform", "LibvirtPlatform", "Platforms", "QemuPlatform",
    "ReportSource", "XenPlatform", "default_platforms",
]

#: the --platform names of the built-in platforms, default first
PLATFORM_NAMES = ("qemu", "xen", "libvirt")


def default_platforms(store: StateStore | None = None) -> Platforms:
    """The built-in platforms, qemu first (the default), over one state directory."""
    return Platforms([QemuPlatform(store), XenPlatform(store), LibvirtPlatform(store)])
