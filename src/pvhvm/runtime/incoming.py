"""A domain as a migration stream carries it: the image written before the stream (save,
migrate), planned again on this host, and a domain started from it (restore,
migrate-receive).

The image (runtime/savefile.py, format 2) is the domain's config as ``create`` read it, the
devices hot-plugged since as their specs (with the slots, vdevs, devids and MACs they got),
the memory, vCPUs and CD media as they were left, and the size of every file QEMU opens. It
holds no command line: runtime/replan.py plans it as create would, and this module builds
QEMU's argv from that plan (``qemu_argv`` for this host's run paths, then each hot-plugged
device's argv from runtime/hotplug.py, in the order they were attached), so QEMU starts with
the very devices, MACs and PCI slots the stream's device state belongs to and with nothing a
file chose. Starting one introduces the domain as ``create`` does and hands its supervisor
the stream (supervisor ``--incoming-fd``); it loads it paused and says ``received``;
:meth:`IncomingDomain.commit` then tells it to run or stay paused. Until then the domain is
not the creator's to keep: an error, an abort, or a creator that dies removes it whole, as a
failed create. An image that does not plan starts nothing: no QEMU, no state directory, no
record.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator

from pvhvm.errors import DomainError, LaunchError
from pvhvm.plan.plan import DiskPlan
from pvhvm.qemu.argv import qemu_argv
from pvhvm.runtime import hotplug, lifecycle, resize
from pvhvm.runtime.replan import (
    ReplanError,
    Replanned,
    check_savable,
    device_set,
    file_size,
    opened_files,
    replan,
)
from pvhvm.runtime.savefile import DomainImage, HotplugSpec, SavedFile
from pvhvm.runtime.state import DomainPaths, DomainRecord, StateStore
from pvhvm.runtime.supervisor import PAUSE, RUN

# --- the image of a running domain -----------------------------------------------------------


def _hotplug_spec(entry: dict[str, object]) -> HotplugSpec:
    slot, vdev, mac, queues = (entry.get(k) for k in ("slot", "vdev", "mac", "queues"))
    return HotplugSpec(
        kind=str(entry["kind"]), spec=str(entry["spec"]),
        slot=None if slot is None else str(slot), devid=int(str(entry["devid"])),
        vdev=None if vdev is None else str(vdev), mac=None if mac is None else str(mac),
        directory=str(entry.get("directory") or "/"),
        queues=None if queues is None else int(str(queues)))


def image_of(record: DomainRecord, paths: DomainPaths, qemu_version: str = "",
             verb: str = "saved or migrated") -> DomainImage:
    """What a save or a migration carries of ``record``'s domain beside QEMU's stream;
    ReplanError when its record keeps no config to carry (a domain of an older pvhvm)."""
    source = check_savable(record, paths.directory, verb)
    files = []
    for what, path in opened_files(record.plan):
        try:
            files.append(SavedFile(what, path, file_size(path)))
        except OSError as err:
            raise DomainError(f"{what}: cannot read {path}: {err.strerror}") from err
    return DomainImage(
        name=record.name, uuid=record.uuid, platform=record.platform, source=source,
        memory_kib=resize.target_kib(record), vcpus=record.vcpus,
        on_poweroff=record.on_poweroff, on_reboot=record.on_reboot, on_crash=record.on_crash,
        accel=record.accel, hotplugged=tuple(_hotplug_spec(e) for e in record.hotplugged),
        media=dict(record.media), devices=device_set(record.plan), files=tuple(files),
        qemu_version=qemu_version, saved_from=socket.gethostname(), saved_at=time.time(),
    )


# --- a domain started from an image ------------------------------------------------------


def realise(image: DomainImage, replanned: Replanned, domid: int, paths: DomainPaths,
            store: StateStore) -> DomainRecord:
    """The record (argv included) of ``replanned`` on this host's run paths: the argv from
    the plan, as create makes it, then each hot-plugged device's, as its attach made it."""
    plan = replanned.plan
    options = lifecycle.argv_options(plan, lifecycle.CreateOptions(accel=image.accel), store)
    argv = qemu_argv(plan, lifecycle.run_paths(paths), options)
    if replanned.vcpus != plan.vcpus:  # as vcpu-set left the argv
        argv = resize.smp_argv(argv, replanned.vcpus)
    max_vcpus = plan.maxvcpus if plan.maxvcpus is not None else plan.vcpus
    entries = []
    for spec, device in replanned.hotplugged:
        if isinstance(device, DiskPlan):
            if spec.queues is None or not 1 <= spec.queues <= max_vcpus:
                raise ReplanError(f"hot-plugged disk {device.vdev}: its queue count is not "
                                  f"1 to maxvcpus ({max_vcpus})")
            fragment = hotplug.disk_argv(device, spec.queues, spec.slot)
        else:
            fragment = hotplug.vif_argv(device, spec.slot, options.bridges)
        argv = hotplug.before_tail(argv, fragment)
        entries.append({**spec.to_json(), "argv": fragment})
    return DomainRecord(
        name=plan.name, domid=domid, uuid=plan.uuid, platform=plan.platform.value,
        memory_mib=image.memory_kib // 1024, vcpus=replanned.vcpus, plan=replanned.plan_json,
        argv=argv, on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
        on_crash=plan.on_crash, accel=options.accel.value,
        console=lifecycle.console_of(plan, paths), hotplugged=entries,
        media=dict(image.media),
    )


class IncomingDomain:
    """A domain being started from a migration stream; see the module docstring."""

    def __init__(self, store: StateStore, name: str, ready_fd: int, commit_fd: int) -> None:
        self.store = store
        self.name = name
        self._ready_fd: int | None = ready_fd
        self._commit_fd: int | None = commit_fd
        self._said = b""
        self.committed = False

    def _line(self, timeout: float | None) -> str:
        """The supervisor's next line ('' at its end; on timeout, an error line)."""
        assert self._ready_fd is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._said:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return f"error: timed out after {timeout:.0f}s"
            ready, _, _ = select.select([self._ready_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._ready_fd, 4096)
            if not chunk:
                text, self._said = self._said.decode(errors="replace").strip(), b""
                return text
            self._said += chunk
        line, _, self._said = self._said.partition(b"\n")
        return line.decode(errors="replace").strip()

    def _failed(self, message: str) -> LaunchError:
        self.abort()
        if not message:
            message = ("the supervisor exited without a word (see "
                       f"{self.store.paths(self.name).supervisor_log})")
        return LaunchError(f"domain {self.name!r} did not start: "
                           f"{message.removeprefix('error: ')}")

    def wait_received(self, timeout: float | None = None) -> None:
        """Until QEMU has loaded the whole stream (LaunchError, domain removed, if not)."""
        line = self._line(timeout)
        if line != "received":
            raise self._failed(line)

    def commit(self, paused: bool) -> DomainRecord:
        """Let the loaded domain run (or stay paused); its record once it does."""
        assert self._commit_fd is not None
        try:
            os.write(self._commit_fd, f"{PAUSE if paused else RUN}\n".encode())
        except OSError as err:
            raise self._failed(f"its supervisor has gone ({err.strerror})") from err
        os.close(self._commit_fd)
        self._commit_fd = None
        line = self._line(lifecycle.CREATE_TIMEOUT)
        if line != "ok":
            raise self._failed(line)
        self.committed = True
        self._close_ready()
        record = self.store.read(self.name)
        if record is None:
            raise DomainError(f"domain {self.name!r} did not start: destroyed while starting")
        return record

    def abort(self) -> None:
        """Remove the domain, whatever its supervisor is doing (as ``pvhvm destroy``)."""
        if self._commit_fd is not None:
            os.close(self._commit_fd)
            self._commit_fd = None
        with contextlib.suppress(DomainError):
            lifecycle.destroy(self.name, self.store)
        self._close_ready()

    def _close_ready(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None


@contextlib.contextmanager
def start_incoming(store: StateStore, image: DomainImage, stream_fd: int,
                   where: str) -> Iterator[IncomingDomain]:
    """Plan ``image``'s domain here (ReplanError, nothing started, when it does not plan),
    introduce it and start its supervisor reading QEMU's stream from ``stream_fd``; the
    ``with`` body feeds the stream, waits for it to be received and commits. Leaving the
    body without a commit removes the domain. ``where`` names the image in error messages
    (the save file, the migration's source)."""
    if image.platform != "qemu":
        raise ReplanError(f"{where}: a domain of the {image.platform} platform, not qemu")
    replanned = replan(image, where)

    def build(domid: int, paths: DomainPaths) -> DomainRecord:
        others = [r for r in map(store.read, store.names()) if r is not None]
        problem = lifecycle.disks_conflict(replanned.plan_json.get("disks", []), others)
        if problem is not None:
            raise DomainError(problem)
        return realise(image, replanned, domid, paths, store)

    _, owner = store.introduce(image.name, build)
    paths = store.paths(image.name)
    try:
        lifecycle.write_vnc_secret(replanned.plan, paths.directory)
        lifecycle.write_source(paths.directory, image.source)
        ready_r, ready_w = os.pipe()
        commit_r, commit_w = os.pipe()
        try:
            lifecycle.spawn_supervisor(store, image.name, owner, ready_fd=ready_w,
                                       incoming=(stream_fd, commit_r))
        except BaseException:
            for fd in (ready_r, commit_w):
                os.close(fd)
            raise
        finally:
            for fd in (ready_w, commit_r):
                os.close(fd)
    except BaseException:
        store.release(image.name)
        raise
    finally:
        owner.close()
    domain = IncomingDomain(store, image.name, ready_r, commit_w)
    try:
        yield domain
    except BaseException:
        domain.abort()
        raise
    if not domain.committed:
        domain.abort()
