"""Lifecycle verbs on the qemu platform: create, destroy, pause, shutdown..., and finding
domains again.

``create`` introduces the domain (its directory appears whole, with a ``starting`` record and
the owner lock held), starts the detached supervisor, which inherits the owner lock, and
waits on a pipe for "ok" or QEMU's own error. A failed create leaves nothing: no QEMU, no
socket, no record. A toolstack killed in the middle of a create leaves a supervisor that
finishes the job (a running, listed guest) or nothing: a ``starting`` record whose owner lock
is free is garbage, removed (with its QEMU) when next seen — see :func:`refresh`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvhvm.config.source import ConfigSource
from pvhvm.errors import DomainError, ForeignPeerError, LaunchError, PlanError
from pvhvm.plan.plan import DEFAULT_BRIDGE, Plan, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.private import open_private
from pvhvm.qemu.accel import choose_accel, probe_cache_dir
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.runtime import hostctl
from pvhvm.runtime.listing import vnc_address
from pvhvm.runtime.state import (
    DomainPaths,
    DomainRecord,
    DomainState,
    OwnerLock,
    StateStore,
    pid_alive,
    qemu_alive,
)

log = logging.getLogger(__name__)

CREATE_TIMEOUT = 120.0
DESTROY_TIMEOUT = 30.0


@dataclass(frozen=True)
class CreateOptions:
    accel: str = "auto"
    paused: bool = False
    qemu_binary: str = "qemu-system-x86_64"
    #: the config as create read it, kept in the record for save and migrate (issue 18)
    source: ConfigSource | None = None


def run_paths(paths: DomainPaths) -> RunPaths:
    return RunPaths(
        qmp_socket=paths.qmp_socket, control_socket=paths.control_socket,
        console_socket=paths.console_socket, console_log=paths.console_log,
        vnc_secret=paths.directory / VNC_SECRET,
    )


#: the vncpasswd of a domain, in its directory (gone with it at destroy)
VNC_SECRET = "vnc.secret"
#: the config as create read it (ConfigSource as JSON), in the domain's directory, 0600: it
#: may hold the vncpasswd, which record.json never does; save and migrate carry it
SOURCE_FILE = "source.json"


def _write_private(path: Path, text: str) -> None:
    """``text`` as the whole of file ``path``, 0600, no symlink followed (private.open_private)."""
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as out:
        out.write(text)


def write_source(directory: Path, source: ConfigSource) -> None:
    """Keep ``source`` beside the domain's record (see SOURCE_FILE)."""
    _write_private(directory / SOURCE_FILE, json.dumps(source.to_json()))


def read_source(directory: Path) -> ConfigSource | None:
    """The config source kept beside a domain's record; None when there is none (a domain
    of an older pvhvm); DomainError when it is unreadable."""
    try:
        fd = os.open(directory / SOURCE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DomainError(f"{directory / SOURCE_FILE}: {err.strerror}") from err
    try:
        with os.fdopen(fd, encoding="utf-8") as handle:
            return ConfigSource.from_json(json.load(handle))
    except (OSError, ValueError) as err:
        raise DomainError(f"{directory / SOURCE_FILE} is unreadable: {err}") from err


def write_vnc_secret(plan: Plan, directory: Path) -> None:
    """The plan's vncpasswd into the domain's directory, 0600 (not on QEMU's command line)."""
    if plan.display is None or not plan.display.password:
        return
    _write_private(directory / VNC_SECRET, plan.display.password)


#: QEMU's bridge helper's allow list (qemu-bridge-helper.c: "allow BR", "allow all",
#: "deny BR", "deny all", "include FILE"; deny wins; nothing allowed without it)
BRIDGE_CONF = Path("/etc/qemu/bridge.conf")
#: where Debian's qemu-system-common puts the helper (not setuid: root runs it, or an admin
#: makes it setuid for other users)
BRIDGE_HELPER = Path("/usr/lib/qemu/qemu-bridge-helper")


def host_bridges() -> frozenset[str]:
    """Bridges that exist on this host (``/sys/class/net/*/bridge``)."""
    try:
        return frozenset(
            p.name for p in Path("/sys/class/net").iterdir() if (p / "bridge").exists()
        )
    except OSError:
        return frozenset()


def bridge_allowed(bridge: str, conf: Path = BRIDGE_CONF) -> bool | None:
    """Whether QEMU's bridge helper lets a guest onto ``bridge`` by ``conf`` (its ACL file,
    qemu-bridge-helper.c's rules: a ``deny`` of the bridge or ``all`` wins over any ``allow``);
    None when ``conf`` (or a file it includes) cannot be read: the helper then refuses."""
    acl = _bridge_acl(conf, 0)
    if acl is None:
        return None
    allowed, denied = acl
    return bool({"all", bridge} & allowed) and not {"all", bridge} & denied


def _bridge_acl(conf: Path, depth: int) -> tuple[set[str], set[str]] | None:
    """(allowed, denied) bridge names of ``conf`` and the files it includes."""
    try:
        lines = conf.read_text(errors="replace").splitlines()
    except OSError:
        return None
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) != 2:
            continue
        verb, what = words
        if verb == "allow":
            allowed.add(what)
        elif verb == "deny":
            denied.add(what)
        elif verb == "include" and depth < 8:
            included = _bridge_acl(Path(what), depth + 1)
            if included is None:
                return None
            allowed |= included[0]
            denied |= included[1]
    return allowed, denied


def vif_bridge_problems(
    vifs: Iterable[VifPlan], bridges: frozenset[str], conf: Path | None = BRIDGE_CONF
) -> list[str]:
    """One line per vif whose bridge QEMU cannot put it on: not on this host (xl's vif-bridge
    and virsh fail on it too), or not allowed by QEMU's bridge helper by ``conf`` (None: no
    helper is used, as under libvirt, whose daemon makes the tap devices itself).

    Xen's default bridge (DEFAULT_BRIDGE, xenbr0) is the exception when it is absent: it is
    what a vif that names no bridge gets (as xl fills it in), and what export-libvirt writes
    for such a vif, so it falls back to QEMU user networking (:func:`vif_notes`)."""
    problems = []
    for vif in vifs:
        if vif.bridge not in bridges:
            if vif.bridge == DEFAULT_BRIDGE:
                continue
            problems.append(
                f"vif {vif.devid}: bridge {vif.bridge!r} does not exist on this host "
                f"(bridges here: {', '.join(sorted(bridges)) or 'none'}); give an existing "
                "bridge, or no bridge= for QEMU user networking")
            continue
        if conf is None:
            continue
        allowed = bridge_allowed(vif.bridge, conf)
        if not allowed:
            why = (f"{conf} cannot be read" if allowed is None
                   else f"{conf} does not allow it")
            problems.append(
                f"vif {vif.devid}: bridge {vif.bridge!r} exists but QEMU's bridge helper "
                f"({BRIDGE_HELPER}) will refuse it: {why}; add the line 'allow {vif.bridge}' "
                f"to {conf}" + ("" if os.geteuid() == 0 else
                                f", and the helper must be setuid root for user "
                                f"{os.geteuid()} (chmod u+s {BRIDGE_HELPER})"))
    return problems


def direct_io_ok(target: str) -> bool:
    """Whether ``target`` can be opened with O_DIRECT (not on tmpfs, some FUSE mounts)."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def targets_without_direct_io(plan: Plan) -> frozenset[str]:
    """PV disk targets that cannot be opened with O_DIRECT."""
    return frozenset(
        disk.target for disk in plan.disks
        if disk.kind is DeviceKind.XENBUS and disk.target and not direct_io_ok(disk.target)
    )


def argv_options(
    plan: Plan, options: CreateOptions, store: StateStore, dry_run: bool = False
) -> ArgvOptions:
    """The realise-time choices for ``plan`` on this host (a dry run probes nothing); a NIC
    on a bridge QEMU cannot use is refused here (restore and migrate-receive come this way;
    create refuses it earlier, platforms/qemu.py)."""
    bridges = host_bridges()
    if not dry_run:
        problems = vif_bridge_problems(plan.vifs, bridges)
        if problems:
            raise PlanError("; ".join(problems))
    accel = choose_accel(
        options.accel, cache_dir=probe_cache_dir(), qemu_binary=options.qemu_binary,
        kernel=Path(plan.kernel) if plan.kernel else None, probe_allowed=not dry_run,
        notify=note,
    )
    return ArgvOptions(
        accel=accel, qemu_binary=options.qemu_binary, bridges=bridges,
        no_direct_io=targets_without_direct_io(plan), start_paused=options.paused,
    )


def note(message: str) -> None:
    """One ``note:`` line on stderr: long work the user would otherwise wait through in
    silence (the KVM probe), or what pvhvm did beyond the toolstack's own work (the xen
    platform's cleanup after libxl)."""
    sys.stderr.write(f"note: {message}\n")
    sys.stderr.flush()


def network_warnings(plan: Plan, bridges: frozenset[str]) -> list[str]:
    """What a create through libvirt says of the plan's NICs: bridges not on this host (the
    daemon refuses them) and user networking notes; no bridge helper is involved there."""
    return vif_bridge_problems(plan.vifs, bridges, None) + vif_notes(plan.vifs, bridges)


def vif_notes(vifs: Iterable[VifPlan], bridges: frozenset[str]) -> list[str]:
    """One note per NIC on Xen's default bridge (a vif that names no bridge is on it) when
    that bridge is not on this host: it gets QEMU user networking (no way in from the host)."""
    return [
        f"vif {v.devid}: no bridge {v.bridge!r} (Xen's default bridge, used when a vif names "
        "none) on this host: QEMU user networking"
        for v in vifs if v.bridge == DEFAULT_BRIDGE and v.bridge not in bridges
    ]


def vnc_display(record: DomainRecord) -> str:
    """``HOST:DISPLAY`` of the domain's VNC server as its QEMU reported it (query-vnc), as
    ``virsh vncdisplay`` prints it (``:N`` when it listens on every address)."""
    if not record.vnc:
        raise DomainError(f"domain {record.name!r} has no VNC server (vnc=1 in its config "
                          "gives it one)")
    return vnc_address(record.vnc)


def dry_run_argv(plan: Plan, options: CreateOptions, store: StateStore | None = None) -> list[str]:
    """The argv ``create`` would run for ``plan`` (nothing is started or written)."""
    store = store or StateStore()
    return qemu_argv(
        plan, run_paths(store.paths(plan.name)), argv_options(plan, options, store, True)
    )


def console_of(plan: Plan, paths: DomainPaths) -> str:
    """Where the domain's console is, as ``pvhvm console`` reads it from the record."""
    if plan.serial == "none":
        return ""
    return str(paths.console_socket) if plan.serial in (None, "") else plan.serial


def shared_image_conflict(plan: Plan, others: list[DomainRecord]) -> str | None:
    """Why ``plan`` may not use an image another domain uses, or None.

    xend's rule for ``w!`` (forced writable): two domains may share an image that one of them
    writes only when *every* user said ``w!``; QEMU's image lock is off for a ``w!`` disk, so
    without this a ``w!`` domain would silently share a filesystem another domain opened
    ``rw`` and never agreed to share."""
    return disks_conflict(plan.to_json()["disks"], others)


def disks_conflict(disks: list[dict[str, Any]], others: list[DomainRecord]) -> str | None:
    """:func:`shared_image_conflict` for disks as a record's plan holds them."""
    mine = {
        os.path.realpath(d["target"]): d for d in disks
        if str(d.get("target") or "").startswith("/") and d.get("script") is None
    }
    for record in others:
        for disk in record.plan.get("disks", []):
            target, mode = disk.get("target"), disk.get("mode")
            if not target or disk.get("script"):
                continue
            own = mine.get(os.path.realpath(target))
            if own is None:
                continue
            writers = {own["mode"], mode} & {"w", "w!"}
            if writers and not (own["mode"] == mode == "w!"):
                return (
                    f"disk {own['vdev']!r}: image {target} is in use by domain {record.name!r} "
                    f"(disk {disk.get('vdev')}, mode {mode}); a writable image is shared "
                    "only when every domain using it says w!"
                )
    return None


def create(
    plan: Plan, options: CreateOptions = CreateOptions(), store: StateStore | None = None
) -> DomainRecord:
    """Start ``plan``'s domain and return once QEMU runs it (or raise, leaving nothing)."""
    store = store or StateStore()
    argv_opts = argv_options(plan, options, store)

    def build(domid: int, paths: DomainPaths) -> DomainRecord:
        # under the store lock: of two racing creates sharing an image, the second sees
        # the first's record
        others = [r for r in map(store.read, store.names()) if r is not None]
        problem = shared_image_conflict(plan, others)
        if problem is not None:
            raise DomainError(problem)
        return DomainRecord(
            name=plan.name, domid=domid, uuid=plan.uuid,
            platform=plan.platform.value, memory_mib=plan.memory_mib, vcpus=plan.vcpus,
            plan=plan.to_json(), argv=qemu_argv(plan, run_paths(paths), argv_opts),
            on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
            on_crash=plan.on_crash, accel=argv_opts.accel.value,
            console=console_of(plan, paths),
        )

    record, owner = store.introduce(plan.name, build)
    try:
        write_vnc_secret(plan, store.paths(plan.name).directory)
        if options.source is not None:
            write_source(store.paths(plan.name).directory, options.source)
        _start_supervisor(store, record, owner)
    except BaseException:
        store.release(plan.name)
        raise
    finally:
        owner.close()
    final = store.read(plan.name)
    if final is None:  # a destroy came between the supervisor's "ok" and this read
        raise DomainError(f"domain {plan.name!r} did not start: destroyed while starting")
    return final


def spawn_supervisor(
    store: StateStore, name: str, owner: OwnerLock, ready_fd: int | None = None,
    adopt: bool = False, incoming: tuple[int, int] | None = None,
) -> int:
    """Hand ``name`` to the host supervisor of ``store`` (started if none runs) with its owner
    lock; the host supervisor's pid.

    ``incoming``: (stream fd, commit fd) of a domain whose state QEMU loads from a stream
    (runtime/incoming.py)."""
    assert owner.fd is not None
    return hostctl.supervise(store.root, name, owner.fd, ready_fd=ready_fd, adopt=adopt,
                             incoming=incoming)


def _start_supervisor(store: StateStore, record: DomainRecord, owner: OwnerLock) -> None:
    paths = store.paths(record.name)
    read_fd, write_fd = os.pipe()
    try:
        try:
            spawn_supervisor(store, record.name, owner, ready_fd=write_fd)
        finally:
            os.close(write_fd)
        message = hostctl.read_until_eof(read_fd, CREATE_TIMEOUT)
    except ForeignPeerError:
        # another user's socket, told nothing: no supervisor has the domain to be stopped
        # (a destroy would wait for one), and create's own clean-up removes it
        os.close(read_fd)
        raise
    except BaseException:  # Ctrl-C while waiting: take the half-made domain down with us
        os.close(read_fd)
        with contextlib.suppress(DomainError):
            destroy(record.name, store)
        raise
    os.close(read_fd)
    if message == "ok":
        return
    if message.startswith("error: "):
        # The supervisor removes the domain before it says why; wait for it to finish.
        wait_released(store, record.name, DESTROY_TIMEOUT)
    with contextlib.suppress(DomainError):  # and make sure of it in any case
        destroy(record.name, store)
    if not message:
        message = f"the supervisor exited without a word (see {paths.supervisor_log})"
    raise LaunchError(
        f"domain {record.name!r} did not start: {message.removeprefix('error: ')}",
        argv=record.argv,
    )


def wait_released(store: StateStore, name: str, timeout: float) -> bool:
    """Until nobody holds ``name``'s owner lock (or its directory is gone); False on timeout."""
    lock = store.paths(name).owner_lock
    deadline = time.monotonic() + timeout
    while OwnerLock.held(lock):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def lookup(name: str, store: StateStore | None = None) -> DomainRecord:
    """The record of a live (or preserved) domain called ``name``."""
    store = store or StateStore()
    record = refresh(store, name)
    if record is None:
        raise DomainError(f"no domain named {name!r}")
    return record


def refresh(store: StateStore, name: str, adopt: bool = True) -> DomainRecord | None:
    """Read ``name``'s record and reconcile it with what is running.

    The owner lock says whether anyone (the creating ``pvhvm create``, then the supervisor)
    answers for the domain. When someone does, the record is trusted, except that a QEMU
    that is gone shows as crashed (its supervisor is about to act). When nobody does:

    * a ``starting`` record is garbage of a create killed before its supervisor ran: its QEMU
      (if any) is killed and the record removed;
    * a domain whose QEMU still runs is adopted by a new supervisor (``adopt``);
    * a domain whose QEMU is gone is reported crashed, until ``pvhvm destroy``.
    """
    record = store.read(name)
    paths = store.paths(name)
    if record is None:
        # A directory without a record is one being removed, or the remains of a removal
        # that was killed half-way; nobody owns the latter.
        if paths.directory.exists() and not OwnerLock.held(paths.owner_lock):
            store.release(name)
        return None
    try:
        owner = OwnerLock.try_acquire(paths.owner_lock)
    except FileNotFoundError:
        owner = None  # being removed right now
    if owner is None:
        if _qemu_should_run(record) and not qemu_alive(record, paths):
            record.state = DomainState.CRASHED.value
        return record
    try:
        if record.domain_state is DomainState.STARTING:
            log.info("removing %s: a create that did not finish", name)
            _kill_qemu(record, paths)
            store.release(name)
            return None
        alive = qemu_alive(record, paths)
        if alive or record.domain_state in (DomainState.RUNNING, DomainState.PAUSED):
            # A QEMU that died while nobody watched is a crash: the adopter acts on on_crash.
            if adopt:
                log.info("adopting %s: its supervisor is gone", name)
                try:
                    spawn_supervisor(store, name, owner, adopt=True)
                except DomainError as err:
                    log.warning("cannot adopt %s: %s", name, err)
            if not alive:
                record.state = DomainState.CRASHED.value
            return record
        if record.domain_state is not DomainState.CRASHED:
            record.state = DomainState.CRASHED.value
        return record
    finally:
        owner.close()


def _qemu_should_run(record: DomainRecord) -> bool:
    return record.domain_state is not DomainState.CRASHED and record.qemu_pid is not None


def _kill_qemu(record: DomainRecord, paths: DomainPaths) -> None:
    if not qemu_alive(record, paths):
        return
    assert record.qemu_pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.qemu_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(record.qemu_pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def list_domains(store: StateStore | None = None, adopt: bool = True) -> list[DomainRecord]:
    store = store or StateStore()
    store.sweep_staging()
    out = []
    for name in store.names():
        record = refresh(store, name, adopt=adopt)
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: r.domid)


def destroy(name: str, store: StateStore | None = None, timeout: float = DESTROY_TIMEOUT) -> None:
    """Stop ``name`` at once and remove everything it made (logs stay)."""
    store = store or StateStore()
    paths = store.paths(name)
    record = store.read(name)
    if record is None and not paths.directory.exists():
        raise DomainError(f"no domain named {name!r}")
    deadline = time.monotonic() + timeout
    record = _await_supervisor(store, name, record, deadline)
    if record is not None and OwnerLock.held(paths.owner_lock) and hostctl.stop(store.root, name):
        # its supervisor quits QEMU and removes the domain; past the deadline, we do
        wait_released(store, name, max(0.0, deadline - time.monotonic()))
    if record is not None:
        _kill_qemu(record, paths)
    store.release(name)


def _await_supervisor(
    store: StateStore, name: str, record: DomainRecord | None, deadline: float
) -> DomainRecord | None:
    """The record once a create in progress has a supervisor to stop, or None when it is gone.

    A create introduces the domain before its supervisor runs. Removing the directory under
    that supervisor would leave it to fail on a vanished record; waiting for it to record its
    pid (its SIGTERM handler is in place by then) lets it stop cleanly and tell its creator
    that the domain was destroyed while starting.
    """
    owner_lock = store.paths(name).owner_lock
    while (
        record is not None and record.supervisor_pid is None
        and record.domain_state is DomainState.STARTING
        and OwnerLock.held(owner_lock) and time.monotonic() < deadline
    ):
        time.sleep(0.02)
        record = store.read(name)
    return record


# --- verbs over QMP (the control socket, ctl.sock; the supervisor keeps qmp.sock) ----------

#: how long pause/unpause wait for the supervisor to record the new state
STATE_WAIT = 10.0
SHUTDOWN_TIMEOUT = 60.0
#: how often ``shutdown -w`` presses the power button again while the guest still runs
REPRESS_INTERVAL = 5.0
POLL = 0.1


def _control(name: str, store: StateStore, command: str) -> DomainRecord:
    record = lookup(name, store)
    state = record.domain_state
    if state is DomainState.STARTING:
        raise DomainError(f"domain {name!r} is still starting")
    if state is DomainState.SHUTDOWN and command in ("cont", "stop", "system_powerdown"):
        raise DomainError(
            f"domain {name!r} has shut down and is kept (on_poweroff/on_reboot = preserve); "
            f"'pvhvm destroy {name}' removes it"
        )
    if not qemu_alive(record, store.paths(name)):
        raise DomainError(f"domain {name!r} has crashed (its QEMU is gone); destroy it")
    from pvhvm.qemu import qmp  # asyncio and qemu.qmp: not on create's path

    qmp.execute(store.paths(name).control_socket, command)
    return record


def _wait_state(
    name: str, store: StateStore, states: set[DomainState], timeout: float
) -> DomainRecord | None:
    """Wait until ``name``'s record is in one of ``states`` (None: the domain is gone)."""
    deadline = time.monotonic() + timeout
    while True:
        record = refresh(store, name)
        if record is None or record.domain_state in states:
            return record
        if time.monotonic() > deadline:
            raise DomainError(
                f"domain {name!r} is {record.state}, not "
                f"{' or '.join(sorted(s.value for s in states))}, after {timeout:.0f}s"
            )
        time.sleep(POLL)


def pause(name: str, store: StateStore | None = None) -> None:
    """Stop the domain's vCPUs (QMP ``stop``); ``list`` shows ``p`` once this returns."""
    store = store or StateStore()
    _control(name, store, "stop")
    _wait_state(name, store, {DomainState.PAUSED, DomainState.SHUTDOWN,
                              DomainState.CRASHED}, STATE_WAIT)


def unpause(name: str, store: StateStore | None = None) -> None:
    """Resume the domain's vCPUs (QMP ``cont``)."""
    store = store or StateStore()
    _control(name, store, "cont")
    _wait_state(name, store, {DomainState.RUNNING}, STATE_WAIT)


def _refuse_paused(name: str, store: StateStore) -> DomainRecord:
    """The domain's record, unless it is paused: its guest could not act on the power button
    (xl queues the request, virsh's ACPI button waits for a resume; pvhvm says so instead)."""
    record = lookup(name, store)
    if record.domain_state is DomainState.PAUSED:
        raise DomainError(
            f"domain {name!r} is paused, so its guest cannot act on the power button "
            f"('pvhvm unpause {name}' first, or 'pvhvm destroy {name}')"
        )
    return record


def _set_reboot_requested(store: StateStore, name: str, value: bool) -> None:
    def change(record: DomainRecord) -> None:
        record.reboot_requested = value

    store.modify(name, change)


def reboot(name: str, store: StateStore | None = None) -> None:
    """Ask the guest to reboot, as ``virsh reboot --mode acpi``: QEMU has no ACPI reboot
    button, so (like libvirt's qemuDomainReboot, its fakeReboot flag) the record says that
    the guest's next power-off is a reboot and the power button is pressed; the supervisor
    then acts on ``on_reboot`` instead of ``on_poweroff`` (restart: ``system_reset`` and
    ``cont`` in the same QEMU). A guest that ignores the button keeps running, and the request
    stands until it powers off, a ``shutdown`` or a new QEMU start."""
    store = store or StateStore()
    _refuse_paused(name, store)
    _set_reboot_requested(store, name, True)
    try:
        _control(name, store, "system_powerdown")
    except BaseException:
        with contextlib.suppress(DomainError, OSError):
            _set_reboot_requested(store, name, False)
        raise


def reset(name: str, store: StateStore | None = None) -> None:
    """Reset the domain at once (QMP ``system_reset``), as ``virsh reset``: the guest is not
    asked. With on_reboot=destroy QEMU runs with ``-no-reboot`` and the reset ends the domain.
    """
    store = store or StateStore()
    _control(name, store, "system_reset")


def shutdown(
    name: str, store: StateStore | None = None, wait: bool = False,
    timeout: float = SHUTDOWN_TIMEOUT,
) -> DomainRecord | None:
    """Press the ACPI power button (QMP ``system_powerdown``), as ``xl shutdown`` asks the guest.

    With ``wait``: press it again every REPRESS_INTERVAL seconds while the domain runs (a press
    that comes before the guest's OS listens is lost); return once the domain is gone (or
    preserved, on_poweroff=preserve: its record, in state shutdown); DomainError when it is
    still there after ``timeout``.
    """
    store = store or StateStore()
    if _refuse_paused(name, store).reboot_requested:
        _set_reboot_requested(store, name, False)  # as libvirt's shutdown clears fakeReboot
    _control(name, store, "system_powerdown")
    if not wait:
        return lookup(name, store)
    start = time.monotonic()
    deadline, presses = start + timeout, 1
    record: DomainRecord | None = None
    while time.monotonic() < deadline:
        record = refresh(store, name)
        if record is None or record.domain_state in (DomainState.SHUTDOWN, DomainState.CRASHED):
            return record
        if (record.domain_state is DomainState.RUNNING
                and time.monotonic() >= start + presses * REPRESS_INTERVAL):
            # A press before the guest's OS listens (one just created is still booting) is
            # lost, not queued: -w presses again while it waits.
            presses += 1
            from pvhvm.qemu import qmp

            with contextlib.suppress(DomainError, OSError):
                qmp.execute(store.paths(name).control_socket, "system_powerdown", timeout=5)
        time.sleep(POLL)
    if record is not None and record.domain_state is DomainState.PAUSED:
        raise DomainError(
            f"domain {name!r} did not shut down within {timeout:g}s: it was paused meanwhile "
            f"('pvhvm unpause {name}', or 'pvhvm destroy {name}')"
        )
    times = "once" if presses == 1 else f"{presses} times"
    raise DomainError(
        f"domain {name!r} did not shut down within {timeout:g}s: the guest ignored the ACPI "
        f"power button, pressed {times} (use 'pvhvm destroy {name}' to stop it at once)"
    )
