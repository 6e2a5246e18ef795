"""The qemu platform: each domain a QEMU run by pvhvm's own supervisor (runtime/lifecycle).

Records live in the state directory's ``domains/``; the verbs go over QMP (see lifecycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvhvm.errors import DomainError, InputError, PlanError
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.platforms.base import (
    DETACH_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    Created,
    CreateOptions,
    DeviceChange,
    DomainPlatform,
    ReportSource,
)
from pvhvm.qemu.argv import hostfwd_problems, ignored_settings
from pvhvm.runtime import lifecycle
from pvhvm.runtime.logs import current_run
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, process_cpu_seconds

if TYPE_CHECKING:
    # imported by their verbs: a dry run needs none of them (hotplug and resize bring asyncio
    # and qemu.qmp; save and migrate more)
    from pvhvm.runtime import hotplug
    from pvhvm.runtime.listing import BlockDevice, NetworkDevice
    from pvhvm.runtime.migrate import MigrationOutcome, ReceiverChannel
    from pvhvm.runtime.save import Progress, SaveOutcome
    from pvhvm.runtime.savefile import DomainImage
    from pvhvm.runtime.stats import DomainSample


class QemuPlatform(DomainPlatform):
    """QEMU on this host, supervised by pvhvm (the default platform)."""

    name = "qemu"
    plan_target = PlanTarget.QEMU
    create_options = frozenset({"accel", "paused", "console"})

    def __init__(self, store: StateStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> StateStore:
        """The state directory, read from the environment when first needed."""
        if self._store is None:
            self._store = StateStore()
        return self._store

    @staticmethod
    def _lifecycle_options(options: CreateOptions) -> lifecycle.CreateOptions:
        return lifecycle.CreateOptions(accel=options.accel or "auto", paused=options.paused,
                                       source=options.source)

    def realise_warnings(self, plan: Plan, options: CreateOptions) -> list[str]:
        """What create says before it starts anything; a NIC on a named bridge QEMU cannot
        use is refused here (PlanError), a warning in a dry run."""
        bridges = lifecycle.host_bridges()
        problems = (lifecycle.vif_bridge_problems(plan.vifs, bridges)
                    + hostfwd_problems(plan.vifs, bridges))
        if problems and not options.dry_run:
            raise PlanError("; ".join(problems))
        return problems + ignored_settings(plan)

    def realise_notes(self, plan: Plan, options: CreateOptions) -> list[str]:
        return lifecycle.vif_notes(plan.vifs, lifecycle.host_bridges())

    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        return {"qemu_argv": lifecycle.dry_run_argv(
            plan, self._lifecycle_options(options), self.store)}

    def create(self, plan: Plan, options: CreateOptions) -> Created:
        record = lifecycle.create(plan, self._lifecycle_options(options), self.store)
        how = "created paused" if options.paused else "started"
        return Created(record, f"{how}: {record.accel}, console {record.console}")

    def holds(self, name: str) -> bool:
        return self.store.paths(name).directory.exists()

    def find(self, name: str) -> DomainRecord:
        return lifecycle.lookup(name, self.store)

    def domains(self) -> list[DomainRecord]:
        return lifecycle.list_domains(self.store)

    def cpu_seconds(self, record: DomainRecord) -> float:
        return process_cpu_seconds(record.qemu_pid) if record.qemu_pid else 0.0

    def destroy(self, name: str) -> None:
        lifecycle.destroy(name, self.store)

    def console(self, name: str) -> None:
        from pvhvm.runtime import console as domain_console

        record = lifecycle.lookup(name, self.store)
        domain_console.attach(record, lock=self.store.paths(name).console_lock)

    def shutdown(self, name: str, wait: bool = False,
                 timeout: float = SHUTDOWN_TIMEOUT) -> None:
        lifecycle.shutdown(name, self.store, wait=wait, timeout=timeout)

    def pause(self, name: str) -> None:
        lifecycle.pause(name, self.store)

    def unpause(self, name: str) -> None:
        lifecycle.unpause(name, self.store)

    def reboot(self, name: str) -> None:
        lifecycle.reboot(name, self.store)

    def reset(self, name: str) -> None:
        lifecycle.reset(name, self.store)

    def vnc_display(self, name: str) -> str:
        return lifecycle.vnc_display(lifecycle.lookup(name, self.store))

    def block_devices(self, name: str) -> list[BlockDevice]:
        from pvhvm.runtime import listing

        return listing.block_devices(self.find(name), None)

    def network_devices(self, name: str) -> list[NetworkDevice]:
        from pvhvm.runtime import listing

        return listing.network_devices(self.find(name), None)

    def domain_stats(self, name: str) -> DomainSample:
        from pvhvm.runtime import stats

        return stats.sample(lifecycle.lookup(name, self.store), self.store.paths(name))

    def block_attach(self, name: str, spec: str) -> DeviceChange:
        from pvhvm.runtime import hotplug

        disk = hotplug.block_attach(name, spec, self.store)
        return DeviceChange(f"disk {disk.vdev} (devid {disk.devid}) attached: virtio-blk-pci, "
                            f"{disk.target}")

    def block_detach(self, name: str, disk: str, force: bool = False,
                     timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        from pvhvm.runtime import hotplug

        return _detached(hotplug.block_detach(name, disk, self.store, force, timeout))

    def network_attach(self, name: str, spec: str = "") -> DeviceChange:
        from pvhvm.runtime import hotplug

        vif, warnings = hotplug.network_attach(name, spec, self.store)
        return DeviceChange(f"vif {vif.devid} attached: virtio-net-pci, MAC {vif.mac}",
                            tuple(warnings))

    def network_detach(self, name: str, nic: str, force: bool = False,
                       timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        from pvhvm.runtime import hotplug

        return _detached(hotplug.network_detach(name, nic, self.store, force, timeout))

    def cd_insert(self, name: str, vdev: str, target: str) -> DeviceChange:
        from pvhvm.runtime import hotplug

        hotplug.cd_insert(name, vdev, target, self.store)
        return DeviceChange(f"cdrom {vdev}: {target} inserted")

    def cd_eject(self, name: str, vdev: str) -> DeviceChange:
        from pvhvm.runtime import hotplug

        hotplug.cd_eject(name, vdev, self.store)
        return DeviceChange(f"cdrom {vdev}: ejected")

    def mem_set(self, name: str, memory_kib: int) -> DeviceChange:
        from pvhvm.runtime import resize

        done = resize.mem_set(name, memory_kib, self.store)
        return DeviceChange(
            f"memory target {resize.show_kib(done.target_kib)} (virtio balloon); the guest "
            f"had {resize.show_kib(done.actual_kib)} and follows it with its virtio_balloon "
            "driver")

    def vcpu_set(self, name: str, vcpus: int, ignore_host: bool = False) -> DeviceChange:
        from pvhvm.runtime import resize

        done = resize.vcpu_set(name, vcpus, self.store, ignore_host=ignore_host)
        return DeviceChange(f"{done.present} vCPU(s) (CPU hotplug)")

    def save(self, name: str, path: Path, leave: str = "destroyed",
             progress: Progress | None = None) -> SaveOutcome:
        from pvhvm.runtime import save

        return save.save(name, path, self.store, leave, progress or save.no_progress)

    def restore(self, path: Path, image: DomainImage, paused: bool = False,
                progress: Progress | None = None, connect: str | None = None) -> DomainRecord:
        from pvhvm.runtime import save

        if connect is not None:
            raise InputError(f"--connect applies to libvirt save images only; {path} was "
                             f"saved on the {self.name} platform")
        return save.restore(path, self.store, paused, progress or save.no_progress)

    def migrate_to_host(self, name: str, host: str, ssh_command: str | None = None,
                        paused: bool = False, progress: Progress | None = None
                        ) -> MigrationOutcome:
        from pvhvm.runtime import migrate, save

        return migrate.send(name, host, self.store, ssh_command, paused,
                            progress or save.no_progress)

    def migrate_receive(self, image: DomainImage, channel: ReceiverChannel) -> str:
        from pvhvm.runtime import migrate

        return migrate.receive(image, channel, self.store)

    def report_source(self, name: str) -> ReportSource:
        """The console log, once the domain is known to be running or to have reported."""
        from pvhvm.guest.report import END

        paths = self.store.paths(name)
        log = paths.console_log
        # only this QEMU run's output counts (the log is kept across runs: runtime/logs.py)
        if not (log.exists() and END in current_run(log.read_text(errors="replace"))):
            state = lifecycle.lookup(name, self.store).domain_state
            if state is not DomainState.RUNNING and state is not DomainState.STARTING:
                what = "shut down" if state is DomainState.SHUTDOWN else state.value
                raise DomainError(
                    f"domain {name!r} is {what} and has not reported yet"
                    + (f"; 'pvhvm unpause {name}' lets it boot" if state is DomainState.PAUSED
                       else ""))
        return ReportSource(console_log=log, domain_directory=paths.directory)


def _detached(done: hotplug.Detached) -> DeviceChange:
    if not done.forced:
        return DeviceChange(f"{done.what} detached")
    return DeviceChange(
        f"{done.what} removed from the domain (--force)",
        (f"{done.what}: the guest has not released it yet; QEMU keeps the device until it "
         "does, and it is gone once QEMU next starts",))
