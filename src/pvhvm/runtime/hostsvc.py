"""The host service: what xendomains and libvirtd's autostart do at host boot and shutdown
(issue 21, item 1), for the qemu platform's domains of one state directory.

``pvhvm host start`` (:func:`host_start`, systemd's ExecStart):

1. removes the remains of the last boot: a domain nobody answers for (its owner lock is
   free) whose QEMU is gone is what a host crash or power cut leaves; it is removed without
   acting on its ``on_crash`` (libvirtd's reconnect at boot likewise drops a transient domain
   whose QEMU is gone), and a defined one is then shut off;
2. restores the domains ``host stop --save-dir`` saved (``host-saved.json`` in the state
   directory lists their files; each file is removed once its domain runs again, as
   xendomains removes its save images);
3. starts every autostart definition that is not running (:func:`start_defined`).

It is idempotent: a second run finds nothing to remove, restore or start.

``pvhvm host stop`` (:func:`host_stop`, systemd's ExecStop), as xendomains' stop: every
running domain is asked to shut down (the ACPI power button, pressed again while it runs; a
paused one is unpaused first) and waited for, all at once, up to a timeout; what is still
there then is destroyed and named. With ``save_dir`` each domain is saved there instead
(``NAME.save``), and the next ``host start`` restores it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pvhvm.errors import DomainError, PvhvmError
from pvhvm.plan.plan import DEFAULT_MEMORY_MIB
from pvhvm.qemu.argv import ignored_settings
from pvhvm.runtime import lifecycle
from pvhvm.runtime.persist import Definition, Definitions
from pvhvm.runtime.replan import domain_config, plan_source
from pvhvm.runtime.state import (
    DomainRecord,
    DomainState,
    OwnerLock,
    StateStore,
    qemu_alive,
    write_atomic,
)

log = logging.getLogger(__name__)

SAVED_MANIFEST = "host-saved.json"
#: how long ``host stop`` waits for the guests to power off (xendomains'
#: XENDOMAINS_STOP_MAXWAIT is 300 s)
STOP_TIMEOUT = 300.0


@dataclass(frozen=True)
class Started:
    """A defined domain started: its record and what the user should be told."""

    record: DomainRecord
    warnings: tuple[str, ...]
    notes: tuple[str, ...]


def start_defined(definition: Definition, store: StateStore, paused: bool = False,
                  accel: str = "auto") -> Started:
    """Start defined domain ``definition`` on the qemu platform: its kept config planned
    again as ``create`` plans a file (same parser, pygrub, bridge checks) with its uuid, so
    the MACs are the ones it always had."""
    name = definition.name
    if store.read(name) is not None:
        raise DomainError(f"domain {name!r} is already running")
    plan = plan_source(definition.source, uuid=definition.uuid)
    if plan.name != name:  # a definition is kept under its config's name
        raise DomainError(f"the config of defined domain {name!r} now names {plan.name!r}")
    bridges = lifecycle.host_bridges()
    options = lifecycle.CreateOptions(accel=accel, paused=paused, source=definition.source)
    record = lifecycle.create(plan, options, store)
    return Started(record, tuple(list(plan.warnings) + ignored_settings(plan)),
                   tuple(list(plan.notes) + lifecycle.vif_notes(plan.vifs, bridges)))


def config_size(definition: Definition) -> tuple[int, int]:
    """Memory (MiB) and vCPUs of a definition's config, read without planning it (its files
    unchecked: ``list --all`` must not fail on a disk image moved away); (0, 0) when the
    config no longer reads."""
    try:
        config = domain_config(definition.source)
    except (PvhvmError, OSError, RecursionError):
        return 0, 0
    return config.memory or DEFAULT_MEMORY_MIB, config.vcpus or 1


@dataclass
class HostReport:
    """What a ``host start`` or ``host stop`` did, domain by domain, and what failed."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.done.append(line)


def remove_stale(store: StateStore, report: HostReport) -> None:
    """Step 1 of :func:`host_start` (see the module docstring)."""
    store.sweep_staging()
    for name in store.names():
        paths = store.paths(name)
        record = store.read(name)
        if record is None or OwnerLock.held(paths.owner_lock):
            continue
        if qemu_alive(record, paths):
            continue  # a guest whose supervisor alone died: the next refresh adopts it
        with contextlib.suppress(DomainError):
            lifecycle.destroy(name, store)
            report.add(f"{name}: removed (its QEMU was gone: the host went down under it)")


def _manifest(store: StateStore) -> Path:
    return store.base / SAVED_MANIFEST


def _read_manifest(store: StateStore) -> list[str]:
    try:
        data = json.loads(_manifest(store).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise DomainError(f"{_manifest(store)} is unreadable: {err}") from err
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise DomainError(f"{_manifest(store)} is not a list of save files")
    return list(data)


def _write_manifest(store: StateStore, files: list[str]) -> None:
    if files:
        write_atomic(_manifest(store), json.dumps(files))
    else:
        with contextlib.suppress(FileNotFoundError):
            _manifest(store).unlink()


def host_start(store: StateStore, definitions: Definitions, accel: str = "auto") -> HostReport:
    """``pvhvm host start`` (see the module docstring)."""
    from pvhvm.runtime import save  # QMP and the save format: only when there is one

    report = HostReport()
    remove_stale(store, report)
    kept = []
    for file in _read_manifest(store):
        try:
            record = save.restore(Path(file), store)
        except (PvhvmError, OSError) as err:
            report.failed.append(f"{file}: not restored: {err}")
            kept.append(file)
            continue
        Path(file).unlink(missing_ok=True)
        report.add(f"{record.name}: restored from {file} (id {record.domid})")
    _write_manifest(store, kept)
    for definition in definitions.definitions():
        if not definition.autostart or store.read(definition.name) is not None:
            continue
        try:
            started = start_defined(definition, store, accel=accel)
        except (PvhvmError, OSError) as err:
            report.failed.append(f"{definition.name}: not started: {err}")
            continue
        report.add(f"{definition.name}: started (id {started.record.domid}, autostart)")
    return report


def host_stop(store: StateStore, save_dir: Path | None = None,
              timeout: float = STOP_TIMEOUT) -> HostReport:
    """``pvhvm host stop`` (see the module docstring)."""
    report = HostReport()
    live = [r for r in lifecycle.list_domains(store, adopt=False)
            if r.domain_state in (DomainState.RUNNING, DomainState.PAUSED,
                                  DomainState.STARTING)]
    if save_dir is not None:
        _save_all(store, live, save_dir, report, timeout)
        return report
    lock = threading.Lock()

    def stop(record: DomainRecord) -> None:
        line, ok = _shut_down(store, record, timeout)
        with lock:
            (report.done if ok else report.failed).append(line)

    _each_at_once(live, stop)
    return report


def _each_at_once(records: list[DomainRecord], act: Callable[[DomainRecord], None]) -> None:
    threads = [threading.Thread(target=act, args=(r,), name=f"host-{r.name}") for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _shut_down(store: StateStore, record: DomainRecord, timeout: float) -> tuple[str, bool]:
    name = record.name
    try:
        if record.domain_state is DomainState.PAUSED:
            lifecycle.unpause(name, store)
        left = lifecycle.shutdown(name, store, wait=True, timeout=timeout)
    except (PvhvmError, OSError) as err:
        with contextlib.suppress(PvhvmError, OSError):
            lifecycle.destroy(name, store)
        return f"{name}: destroyed, as it did not shut down: {err}", False
    if left is not None and left.domain_state is DomainState.SHUTDOWN:
        return f"{name}: shut down (kept: on_poweroff = preserve)", True
    return f"{name}: shut down", True


def _save_all(store: StateStore, records: list[DomainRecord], save_dir: Path,
              report: HostReport, timeout: float) -> None:
    from pvhvm.runtime import save

    files = _read_manifest(store)
    for record in records:
        path = (save_dir / f"{record.name}.save").absolute()
        try:
            save.save(record.name, path, store)
        except (PvhvmError, OSError) as err:
            # as xendomains: a domain that cannot be saved is shut down instead
            line, _ = _shut_down(store, record, timeout)
            report.failed.append(f"{record.name}: not saved ({err}); {line}")
            continue
        files.append(str(path))
        _write_manifest(store, files)
        report.add(f"{record.name}: saved to {path}")
