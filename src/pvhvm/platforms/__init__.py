"""Platforms a domain is realised on, behind one interface (see :mod:`pvhvm.platforms.base`).

- :class:`~pvhvm.platforms.qemu.QemuPlatform` (``qemu``, the default): QEMU supervised by pvhvm;
- :class:`~pvhvm.platforms.xen.XenPlatform` (``xen``): xenbus entries in XenStore;
- :class:`~pvhvm.platforms.libvirt.LibvirtPlatform` (``libvirt``): a libvirt daemon, by URI.

Only the default platform is imported with this package: xen and libvirt (a XenStore client,
libvirt's XML, ...) load when a command names them or a record of theirs is found, so
``create --dry-run`` and the verbs of qemu domains do not pay for them (import them from their
own modules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pvhvm.errors import DomainError
from pvhvm.platforms.base import (
    Created,
    CreateOptions,
    DomainPlatform,
    Platforms,
    ReportSource,
)
from pvhvm.platforms.qemu import QemuPlatform
from pvhvm.runtime.state import DomainRecord, StateStore

__all__ = [
    "BuiltinPlatforms", "CreateOptions", "Created", "DomainPlatform", "Platforms",
    "QemuPlatform", "ReportSource", "default_platforms",
]

#: the --platform names of the built-in platforms, default first
PLATFORM_NAMES = ("qemu", "xen", "libvirt")


def _xen(store: StateStore | None) -> DomainPlatform:
    from pvhvm.platforms.xen import XenPlatform

    return XenPlatform(store)


def _libvirt(store: StateStore | None) -> DomainPlatform:
    from pvhvm.platforms.libvirt import LibvirtPlatform

    return LibvirtPlatform(store)


#: the platforms imported when first needed; each keeps its records in the store of the same
#: name under the state directory (state.PLATFORM_SUBSTORES)
DEFERRED: dict[str, Callable[[StateStore | None], DomainPlatform]] = {
    "xen": _xen, "libvirt": _libvirt,
}


class BuiltinPlatforms(Platforms):
    """The built-in platforms: qemu (the default) at once, xen and libvirt when first needed.

    What the registry must know of a platform it has not imported is its name (``--platform``,
    ``--help``) and whether it holds a domain name, or any domain at all. A deferred platform's
    records are the directories of its own store (``<state dir>/xen``, ``<state dir>/libvirt``),
    which is all its ``holds`` reads; so :meth:`holder` looks there first and imports the
    platform only when its store has that name. Names stay unique across platforms exactly as
    :class:`Platforms` keeps them: every platform is still asked, in order.
    """

    def __init__(self, store: StateStore | None = None) -> None:
        default = QemuPlatform(store)
        super().__init__([default])
        self._store = store
        #: every platform by name, default first; None: not imported yet
        self._platforms: dict[str, DomainPlatform | None] = {
            name: default if name == default.name else None for name in PLATFORM_NAMES
        }

    def _load(self, name: str) -> DomainPlatform:
        platform = self._platforms[name]
        if platform is None:
            platform = self._platforms[name] = DEFERRED[name](self._store)
        return platform

    def _records(self, name: str) -> StateStore:
        """A deferred platform's record store, as that platform opens it."""
        base = self._store.base if self._store is not None else StateStore().base
        return StateStore(base / name, base=base)

    def _may_hold(self, name: str, domain: str | None) -> bool:
        """Whether platform ``name`` is imported, or its store has ``domain`` (any domain)."""
        if self._platforms[name] is not None:
            return True
        records = self._records(name)
        if domain is None:
            return bool(records.names())
        return records.paths(domain).directory.exists()

    def __iter__(self) -> Iterator[DomainPlatform]:
        return (self._load(name) for name in self._platforms)

    def names(self) -> list[str]:
        return list(self._platforms)

    def get(self, name: str) -> DomainPlatform:
        if name not in self._platforms:
            raise DomainError(
                f"no platform named {name!r} (known: {', '.join(self._platforms)})"
            )
        return self._load(name)

    def holder(self, name: str) -> DomainPlatform | None:
        for platform_name in self._platforms:
            if self._may_hold(platform_name, name):
                platform = self._load(platform_name)
                if platform.holds(name):
                    return platform
        return None

    def domains(self) -> list[DomainRecord]:
        return [record for name in self._platforms if self._may_hold(name, None)
                for record in self._load(name).domains()]

    def cpu_seconds(self, record: DomainRecord) -> float:
        if record.platform not in self._platforms:
            return 0.0
        return self._load(record.platform).cpu_seconds(record)


def default_platforms(store: StateStore | None = None) -> Platforms:
    """The built-in platforms, qemu first (the default), over one state directory."""
    return BuiltinPlatforms(store)
