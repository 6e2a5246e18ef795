"""Lifecycle verbs on the qemu platform: create, destroy, and finding domains again.

``create`` claims the domain's name (an exclusive mkdir), writes a ``starting`` record,
starts the detached supervisor and waits on a pipe for "ok" or QEMU's own error. A failed
create leaves nothing: no QEMU, no socket, no record. A toolstack killed in the middle of a
create leaves a supervisor that finishes the job (a running, listed guest) or nothing: a
``starting`` record whose supervisor is gone is garbage, removed when next seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import DomainError, LaunchError
from pvhvm.plan.plan import Plan
from pvhvm.plan.types import DeviceKind
from pvhvm.qemu.accel import choose_accel
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.runtime.state import (
    DomainPaths,
    DomainRecord,
    DomainState,
    StateStore,
    pid_alive,
)

log = logging.getLogger(__name__)

CREATE_TIMEOUT = 120.0
DESTROY_TIMEOUT = 30.0
#: a starting record older than this whose supervisor is gone is garbage
STARTING_GRACE = 10.0


@dataclass(frozen=True)
class CreateOptions:
    accel: str = "auto"
    paused: bool = False
    qemu_binary: str = "qemu-system-x86_64"


def run_paths(paths: DomainPaths) -> RunPaths:
    return RunPaths(
        qmp_socket=paths.qmp_socket, control_socket=paths.control_socket,
        console_socket=paths.console_socket, console_log=paths.console_log,
    )


def host_bridges() -> frozenset[str]:
    """Bridges that exist on this host (``/sys/class/net/*/bridge``)."""
    try:
        return frozenset(
            p.name for p in Path("/sys/class/net").iterdir() if (p / "bridge").exists()
        )
    except OSError:
        return frozenset()


def targets_without_direct_io(plan: Plan) -> frozenset[str]:
    """PV disk targets that cannot be opened with O_DIRECT (tmpfs, some FUSE mounts)."""
    out = set()
    for disk in plan.disks:
        if disk.kind is not DeviceKind.XENBUS or not disk.target:
            continue
        try:
            fd = os.open(disk.target, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            out.add(disk.target)
        else:
            os.close(fd)
    return frozenset(out)


def argv_options(
    plan: Plan, options: CreateOptions, store: StateStore, dry_run: bool = False
) -> ArgvOptions:
    """The realise-time choices for ``plan`` on this host (a dry run probes nothing)."""
    accel = choose_accel(
        options.accel, cache_dir=store.root, qemu_binary=options.qemu_binary,
        kernel=Path(plan.kernel) if plan.kernel else None, probe_allowed=not dry_run,
    )
    return ArgvOptions(
        accel=accel, qemu_binary=options.qemu_binary, bridges=host_bridges(),
        no_direct_io=targets_without_direct_io(plan), start_paused=options.paused,
    )


def network_warnings(plan: Plan, bridges: frozenset[str]) -> list[str]:
    return [
        f"vif {v.devid}: bridge {v.bridge!r} does not exist on this host; "
        "using QEMU user networking instead"
        for v in plan.vifs if v.bridge not in bridges
    ]


def dry_run_argv(plan: Plan, options: CreateOptions, store: StateStore | None = None) -> list[str]:
    """The argv ``create`` would run for ``plan`` (nothing is started or written)."""
    store = store or StateStore()
    return qemu_argv(
        plan, run_paths(store.paths(plan.name)), argv_options(plan, options, store, True)
    )


def create(
    plan: Plan, options: CreateOptions = CreateOptions(), store: StateStore | None = None
) -> DomainRecord:
    """Start ``plan``'s domain and return once QEMU runs it (or raise, leaving nothing)."""
    store = store or StateStore()
    argv_opts = argv_options(plan, options, store)
    paths = store.claim(plan.name)
    try:
        with store.locked():
            record = DomainRecord(
                name=plan.name, domid=store.next_domid(), uuid=plan.uuid,
                platform=plan.platform.value, memory_mib=plan.memory_mib, vcpus=plan.vcpus,
                plan=plan.to_json(), argv=qemu_argv(plan, run_paths(paths), argv_opts),
                on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
                on_crash=plan.on_crash, accel=argv_opts.accel.value,
                console=str(paths.console_socket) if plan.serial in (None, "", "none")
                else plan.serial,
            )
            store.write(record)
        _start_supervisor(store, paths, record)
    except BaseException:
        store.release(plan.name)
        raise
    final = store.read(plan.name)
    if final is None:
        raise DomainError(f"domain {plan.name!r} vanished while starting")
    return final


def _start_supervisor(store: StateStore, paths: DomainPaths, record: DomainRecord) -> None:
    read_fd, write_fd = os.pipe()
    try:
        with open(paths.supervisor_log, "ab") as sup_log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "pvhvm.runtime.supervisor",
                    "--state-dir", str(store.root), "--name", record.name,
                    "--ready-fd", str(write_fd),
                ],
                stdin=subprocess.DEVNULL, stdout=sup_log, stderr=sup_log,
                pass_fds=(write_fd,), start_new_session=True, close_fds=True,
            )
    finally:
        os.close(write_fd)
    try:
        message = _read_until_eof(read_fd, CREATE_TIMEOUT)
    finally:
        os.close(read_fd)
    if message == "ok":
        return
    # The supervisor has cleaned up after itself on "error:"; make sure of it in any case.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if not message:
        message = f"the supervisor exited without a word (see {paths.supervisor_log})"
    raise LaunchError(
        f"domain {record.name!r} did not start: {message.removeprefix('error: ')}",
        argv=record.argv,
    )


def _read_until_eof(fd: int, timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"timed out after {timeout:.0f}s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)


def lookup(name: str, store: StateStore | None = None) -> DomainRecord:
    """The record of a live (or preserved) domain called ``name``."""
    store = store or StateStore()
    record = refresh(store, name)
    if record is None:
        raise DomainError(f"no domain named {name!r}")
    return record


def refresh(store: StateStore, name: str) -> DomainRecord | None:
    """Read ``name``'s record and reconcile it with what is running.

    A starting record whose supervisor is gone is removed; a running record whose QEMU is
    gone is reported as crashed (its supervisor, if alive, is about to act on it).
    """
    record = store.read(name)
    paths = store.paths(name)
    if record is None:
        if paths.directory.exists() and time.time() - paths.directory.stat().st_mtime > (
            STARTING_GRACE
        ):
            store.release(name)
        return None
    state = record.domain_state
    supervisor_alive = pid_alive(record.supervisor_pid)
    if state is DomainState.STARTING:
        age = time.time() - record.start_time
        if not supervisor_alive and age > STARTING_GRACE:
            store.release(name)
            return None
        return record
    if state is not DomainState.CRASHED and not pid_alive(record.qemu_pid):
        record.state = DomainState.CRASHED.value
    return record


def list_domains(store: StateStore | None = None) -> list[DomainRecord]:
    store = store or StateStore()
    out = []
    for name in store.names():
        record = refresh(store, name)
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: r.domid)


def destroy(name: str, store: StateStore | None = None, timeout: float = DESTROY_TIMEOUT) -> None:
    """Stop ``name`` at once and remove everything it made (logs stay)."""
    store = store or StateStore()
    record = store.read(name)
    if record is None and not store.paths(name).directory.exists():
        raise DomainError(f"no domain named {name!r}")
    if record is not None and pid_alive(record.supervisor_pid):
        assert record.supervisor_pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(record.supervisor_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(record.supervisor_pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.supervisor_pid, signal.SIGKILL)
    if record is not None and pid_alive(record.qemu_pid):
        assert record.qemu_pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.qemu_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(record.qemu_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    store.release(name)
