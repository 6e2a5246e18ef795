"""One interface for every platform a domain can be realised on, and the registry the CLI
picks platforms from.

A platform (qemu: QEMU run by pvhvm's supervisor; xen: xenbus entries in XenStore) implements
:class:`DomainPlatform`: create from a Plan, destroy, list, find, and the lifecycle verbs as
xl(1) names them. A verb a platform cannot carry out raises :class:`NotOnPlatformError`, one
line that says why and what to use instead. Each domain's record names the platform that holds
it (``DomainRecord.platform``); :class:`Platforms` finds that platform for a name, and keeps
names unique across platforms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvhvm.config.source import ConfigSource
from pvhvm.errors import DomainError, NotOnPlatformError
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.runtime.state import DomainRecord

if TYPE_CHECKING:  # not imported at run time: a dry run needs none of them
    from pvhvm.runtime.listing import BlockDevice, NetworkDevice
    from pvhvm.runtime.migrate import MigrationOutcome, ReceiverChannel
    from pvhvm.runtime.save import Progress, SaveOutcome
    from pvhvm.runtime.savefile import DomainImage
    from pvhvm.runtime.stats import DomainSample

#: how long ``shutdown -w`` waits by default (seconds)
SHUTDOWN_TIMEOUT = 60.0
#: how long block-/network-detach wait for the guest to release a device (seconds)
DETACH_TIMEOUT = 30.0


@dataclass(frozen=True)
class CreateOptions:
    """What ``pvhvm create`` may ask of a platform beyond the plan. None: not given."""

    accel: str | None = None
    paused: bool = False
    #: attach to the console once created (``create -c``)
    console: bool = False
    #: xen: the xenstored socket to write to
    xenstore: Path | None = None
    #: libvirt: the daemon's URI
    connect: str | None = None
    #: the config as create read it, kept in the record for save and migrate (issue 18)
    source: ConfigSource | None = None
    #: ``create --dry-run``: what a real create would refuse on this host is a warning
    dry_run: bool = False

    def given(self) -> list[str]:
        """The options set, by their CLI names."""
        names = {"accel": self.accel is not None, "paused": self.paused,
                 "console": self.console, "xenstore": self.xenstore is not None,
                 "connect": self.connect is not None}
        return [name for name, set_ in names.items() if set_]


@dataclass(frozen=True)
class Created:
    """A created domain and the one line that says how it runs."""

    record: DomainRecord
    summary: str


@dataclass(frozen=True)
class DeviceChange:
    """What a hotplug verb did, in one line, and what the user should know about it."""

    summary: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportSource:
    """Where a domain's guest prints its device report, and what exists while it lives."""

    console_log: Path
    domain_directory: Path


class DomainPlatform(ABC):
    """A place domains run (or are written to). Verbs not overridden are not on it."""

    #: the ``--platform`` name, also written in each record it holds
    name: str
    #: what the planner plans for (libvirt's QEMU and pvhvm's QEMU share a plan)
    plan_target: PlanTarget
    #: the CreateOptions fields this platform acts on
    create_options: frozenset[str] = frozenset()

    # --- create and its dry run --------------------------------------------------------

    def realise_warnings(self, plan: Plan, options: CreateOptions) -> list[str]:
        """What this platform will not realise as the plan says (said before creating)."""
        return []

    @abstractmethod
    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        """What create would do, as extra keys of the ``--dry-run --json`` document."""

    @abstractmethod
    def create(self, plan: Plan, options: CreateOptions) -> Created:
        """Realise ``plan``; on failure raise and leave nothing behind."""

    # --- finding domains -----------------------------------------------------------------

    @abstractmethod
    def holds(self, name: str) -> bool:
        """Whether this platform has anything of a domain called ``name`` (even half-made)."""

    @abstractmethod
    def find(self, name: str) -> DomainRecord:
        """``name``'s record, reconciled with what runs; DomainError when there is none."""

    @abstractmethod
    def domains(self) -> list[DomainRecord]:
        """Every domain on this platform, by domid."""

    def cpu_seconds(self, record: DomainRecord) -> float:
        """CPU time the domain has used (``list``'s Time(s)); 0.0 where nothing runs it."""
        return 0.0

    @abstractmethod
    def destroy(self, name: str) -> None:
        """Stop ``name`` at once and remove everything it made (as ``xl destroy``)."""

    # --- lifecycle verbs: not on this platform unless overridden --------------------------

    def not_here(self, verb: str, name: str) -> NotOnPlatformError:
        """The one-line refusal of ``pvhvm VERB NAME`` on this platform."""
        return NotOnPlatformError(
            f"domain {name!r} is on the {self.name} platform, which has no 'pvhvm {verb}'",
            platform=self.name, verb=verb,
        )

    def console(self, name: str) -> None:
        """Attach the terminal to the domain's serial console until ^]."""
        raise self.not_here("console", name)

    def shutdown(self, name: str, wait: bool = False,
                 timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Ask the guest to shut down (ACPI power button); ``wait``: until it has."""
        raise self.not_here("shutdown", name)

    def pause(self, name: str) -> None:
        raise self.not_here("pause", name)

    def unpause(self, name: str) -> None:
        raise self.not_here("unpause", name)

    def realise_notes(self, plan: Plan, options: CreateOptions) -> list[str]:
        """What create says of how this host realises the plan, beside its warnings (a vif
        that names no bridge put on user networking)."""
        return []

    def reboot(self, name: str) -> None:
        """Ask the guest to reboot (the ACPI power button, its power-off made a reboot)."""
        raise self.not_here("reboot", name)

    def reset(self, name: str) -> None:
        """Reset the domain at once, as ``virsh reset`` (the guest is not asked)."""
        raise self.not_here("reset", name)

    def vnc_display(self, name: str) -> str:
        """``HOST:DISPLAY`` of the domain's VNC server, as ``virsh vncdisplay`` prints it."""
        raise self.not_here("vncdisplay", name)

    def block_devices(self, name: str) -> list[BlockDevice]:
        """The domain's disks as ``xl block-list`` shows them, with what realises each."""
        raise self.not_here("block-list", name)

    def network_devices(self, name: str) -> list[NetworkDevice]:
        """The domain's NICs as ``xl network-list`` shows them."""
        raise self.not_here("network-list", name)

    def report_source(self, name: str) -> ReportSource:
        """Where the guest's device report appears (``pvhvm report``)."""
        raise self.not_here("report", name)

    def domain_stats(self, name: str) -> DomainSample:
        """The running domain's CPU, memory, block and net counters now (runtime/stats.py)."""
        raise self.not_here("domstats", name)

    # --- devices of a running domain (xl block-attach ... cd-eject) ------------------------

    def block_attach(self, name: str, spec: str) -> DeviceChange:
        """Add the PV disk ``spec`` (xl-disk-configuration(5)) to the running domain."""
        raise self.not_here("block-attach", name)

    def block_detach(self, name: str, disk: str, force: bool = False,
                     timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        """Remove a disk (by vdev or devid); ``force``: even if the guest does not let go."""
        raise self.not_here("block-detach", name)

    def network_attach(self, name: str, spec: str = "") -> DeviceChange:
        """Add the PV NIC ``spec`` (xl-network-configuration(5)) to the running domain."""
        raise self.not_here("network-attach", name)

    def network_detach(self, name: str, nic: str, force: bool = False,
                       timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        """Remove a NIC (by devid or MAC)."""
        raise self.not_here("network-detach", name)

    def cd_insert(self, name: str, vdev: str, target: str) -> DeviceChange:
        """Put ``target`` in the emulated CD drive ``vdev`` (empty or not)."""
        raise self.not_here("cd-insert", name)

    def cd_eject(self, name: str, vdev: str) -> DeviceChange:
        """Take the medium out of the emulated CD drive ``vdev``."""
        raise self.not_here("cd-eject", name)

    # --- memory and vCPUs of a running domain (xl mem-set, vcpu-set) -----------------------

    def mem_set(self, name: str, memory_kib: int) -> DeviceChange:
        """Set the domain's memory target (KiB), within the maximum fixed at create."""
        raise self.not_here("mem-set", name)

    def vcpu_set(self, name: str, vcpus: int, ignore_host: bool = False) -> DeviceChange:
        """Give the domain ``vcpus`` online vCPUs, within its maxvcpus."""
        raise self.not_here("vcpu-set", name)

    def migrate(self, name: str, destination: str, *, migrate_uri: str | None = None,
                unsafe: bool = False) -> DomainRecord:
        """Move the running domain to ``destination`` (live, as ``xl migrate``/``virsh
        migrate --live``); disks are assumed shared. Returns the record there."""
        raise self.not_here("migrate", name)

    # --- save / restore / migrate over ssh (xl save, xl restore, xl migrate) -----------------

    def save(self, name: str, path: Path, leave: str = "destroyed",
             progress: Progress | None = None) -> SaveOutcome:
        """Write the domain's state to ``path``; ``leave``: destroyed, running or paused."""
        raise self.not_here("save", name)

    def restore(self, path: Path, image: DomainImage, paused: bool = False,
                progress: Progress | None = None, connect: str | None = None) -> DomainRecord:
        """Start the domain saved in ``path`` (whose preamble holds ``image``); ``connect``:
        the libvirt URI the user named (libvirt only)."""
        raise self.not_here("restore", image.name)

    def migrate_to_host(self, name: str, host: str, ssh_command: str | None = None,
                        paused: bool = False, progress: Progress | None = None
                        ) -> MigrationOutcome:
        """``xl migrate NAME HOST``: run ``pvhvm migrate-receive`` on HOST over ssh and move
        the running domain there, live; disks are assumed shared."""
        raise self.not_here("migrate", name)

    def migrate_receive(self, image: DomainImage, channel: ReceiverChannel) -> str:
        """The receiving end of :meth:`migrate_to_host`: run ``image``'s domain here from the
        stream on ``channel``; its state (running or paused)."""
        raise self.not_here("migrate-receive", image.name)


class Platforms:
    """The platforms the CLI may use, by name; the first one given is the default."""

    def __init__(self, platforms: Iterable[DomainPlatform]) -> None:
        self._by_name: dict[str, DomainPlatform] = {}
        for platform in platforms:
            if platform.name in self._by_name:
                raise ValueError(f"platform {platform.name!r} registered twice")
            self._by_name[platform.name] = platform
        if not self._by_name:
            raise ValueError("no platform registered")

    def __iter__(self) -> Iterator[DomainPlatform]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def default(self) -> DomainPlatform:
        return next(iter(self._by_name.values()))

    def get(self, name: str) -> DomainPlatform:
        try:
            return self._by_name[name]
        except KeyError:
            raise DomainError(
                f"no platform named {name!r} (known: {', '.join(self._by_name)})"
            ) from None

    def holder(self, name: str) -> DomainPlatform | None:
        """The platform that holds domain ``name``, if any (names are unique across them)."""
        return next((p for p in self if p.holds(name)), None)

    def locate(self, name: str) -> DomainPlatform:
        """The platform holding ``name``; DomainError ``no domain named`` when none does."""
        platform = self.holder(name)
        if platform is None:
            raise DomainError(f"no domain named {name!r}")
        return platform

    def check_options(self, platform: DomainPlatform, options: CreateOptions) -> None:
        """Options given that ``platform`` does not act on: an InputError naming them."""
        for option in options.given():
            if option not in platform.create_options:
                users = [p.name for p in self if option in p.create_options]
                where = " or ".join(f"--platform {u}" for u in users) or "no platform"
                raise NotOnPlatformError(
                    f"--{option} applies to {where} only", platform=platform.name, verb="create"
                )

    def create(self, platform: DomainPlatform, plan: Plan, options: CreateOptions) -> Created:
        """Create ``plan`` on ``platform`` once no other platform holds its name.

        (Each platform's own store refuses a name it holds, atomically; this check covers
        names held elsewhere.)
        """
        self.check_free(plan.name, platform)
        return platform.create(plan, options)

    def check_free(self, name: str, platform: DomainPlatform) -> None:
        """DomainError when a platform other than ``platform`` holds ``name`` (create,
        restore: each platform's own store refuses the names it holds)."""
        other = self.holder(name)
        if other is not None and other is not platform:
            raise DomainError(f"domain {name!r} already exists (on the {other.name} platform)")

    def cpu_seconds(self, record: DomainRecord) -> float:
        """CPU time of ``record``'s domain, asked of the platform its record names."""
        platform = self._by_name.get(record.platform)
        return 0.0 if platform is None else platform.cpu_seconds(record)

    def domains(self) -> list[DomainRecord]:
        """Every domain of every platform, platform by platform."""
        return [record for platform in self for record in platform.domains()]

