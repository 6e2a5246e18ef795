"""A domain as a migration stream carries it: the image written before the stream (save,
migrate), checked against this host, and a domain started from it (restore,
migrate-receive).

The image is the record's plan and argv (hot-plugged devices included, so QEMU starts with
the very devices, MACs and PCI slots the stream's device state belongs to) and the size of
every file QEMU opens. Starting one introduces the domain as ``create`` does and hands its
supervisor the stream (supervisor ``--incoming-fd``); it loads it paused and says
``received``; :meth:`IncomingDomain.commit` then tells it to run or stay paused. Until then
the domain is not the creator's to keep: an error, an abort, or a creator that dies removes
it whole, as a failed create.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from pvhvm.errors import DomainError, InputError, LaunchError
from pvhvm.qemu.argv import RunPaths
from pvhvm.runtime import lifecycle
from pvhvm.runtime.savefile import DomainImage, SavedFile
from pvhvm.runtime.state import DomainPaths, DomainRecord, StateStore
from pvhvm.runtime.supervisor import PAUSE, RUN


class ImageMismatchError(InputError):
    """The saved domain no longer matches this host: a disk image missing or resized."""


# --- the image of a running domain -----------------------------------------------------------


def _file_size(path: str) -> int:
    """Bytes in a file or a block device (whose st_size is 0)."""
    info = os.stat(path)
    if stat.S_ISBLK(info.st_mode):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return info.st_size


def opened_files(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, path) of each local file QEMU opens for ``plan``: disks, media, kernel."""
    out = []
    for disk in plan.get("disks", []):
        target = str(disk.get("target") or "")
        if target.startswith("/") and not disk.get("script"):
            what = "cdrom" if disk.get("cdrom") else "disk"
            out.append((f"{what} {disk.get('vdev')}", target))
    boot = plan.get("boot") or {}
    for key in ("kernel", "ramdisk"):
        if boot.get(key):
            out.append((key, str(boot[key])))
    return out


def image_of(record: DomainRecord, paths: DomainPaths, qemu_version: str = "") -> DomainImage:
    """What a save or a migration carries of ``record``'s domain beside QEMU's stream."""
    files = []
    for what, path in opened_files(record.plan):
        try:
            files.append(SavedFile(what, path, _file_size(path)))
        except OSError as err:
            raise DomainError(f"{what}: cannot read {path}: {err.strerror}") from err
    secret = paths.directory / lifecycle.VNC_SECRET
    run = lifecycle.run_paths(paths)
    return DomainImage(
        name=record.name, uuid=record.uuid, platform=record.platform,
        memory_mib=record.memory_mib, vcpus=record.vcpus, plan=record.plan,
        argv=[a for a in record.argv if a != "-S"],
        on_poweroff=record.on_poweroff, on_reboot=record.on_reboot, on_crash=record.on_crash,
        accel=record.accel, console=record.console, hotplugged=record.hotplugged,
        run_paths={f.name: None if getattr(run, f.name) is None else str(getattr(run, f.name))
                   for f in fields(run)},
        files=files, qemu_version=qemu_version, saved_from=socket.gethostname(),
        vncpasswd=secret.read_text(encoding="utf-8") if secret.exists() else None,
        saved_at=time.time(),
    )


def file_problems(image: DomainImage) -> list[str]:
    """One line per file the domain opens that is missing here or not the size it was."""
    problems = []
    for saved in image.files:
        try:
            size = _file_size(saved.path)
        except FileNotFoundError:
            problems.append(f"{saved.what}: {saved.path} does not exist on this host")
            continue
        except OSError as err:
            problems.append(f"{saved.what}: cannot read {saved.path}: {err.strerror}")
            continue
        if size != saved.size:
            problems.append(f"{saved.what}: {saved.path} has changed size "
                            f"({saved.size} bytes when saved, {size} now)")
    return problems


def relocate(argv: list[str], old: dict[str, str | None], new: RunPaths) -> list[str]:
    """``argv`` with the run paths it was made with (sockets, console log) replaced by
    ``new``, which belong to the domain's directory in this state directory."""
    pairs = [(old_path, str(getattr(new, key))) for key, old_path in old.items()
             if old_path and getattr(new, key, None) is not None]
    out = []
    for arg in argv:
        for old_path, new_path in pairs:
            arg = arg.replace(old_path, new_path)
        out.append(arg)
    return out


# --- a domain started from an image ------------------------------------------------------


def _record(image: DomainImage, domid: int, paths: DomainPaths) -> DomainRecord:
    console = image.console
    if console and image.run_paths.get("console_socket") == console:
        console = str(paths.console_socket)
    return DomainRecord(
        name=image.name, domid=domid, uuid=image.uuid, platform=image.platform,
        memory_mib=image.memory_mib, vcpus=image.vcpus, plan=image.plan,
        argv=relocate(image.argv, image.run_paths, lifecycle.run_paths(paths)),
        on_poweroff=image.on_poweroff, on_reboot=image.on_reboot, on_crash=image.on_crash,
        accel=image.accel, console=console, hotplugged=list(image.hotplugged),
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
    """Introduce ``image``'s domain and start its supervisor reading QEMU's stream from
    ``stream_fd``; the ``with`` body feeds the stream, waits for it to be received and
    commits. Leaving the body without a commit removes the domain. ``where`` names the
    image in error messages (the save file, the migration's source)."""
    problems = file_problems(image)
    if problems:
        raise ImageMismatchError(f"{where}: the saved domain does not match this host: "
                                 + "; ".join(problems))

    def build(domid: int, paths: DomainPaths) -> DomainRecord:
        others = [r for r in map(store.read, store.names()) if r is not None]
        problem = lifecycle.disks_conflict(image.plan.get("disks", []), others)
        if problem is not None:
            raise DomainError(problem)
        return _record(image, domid, paths)

    _, owner = store.introduce(image.name, build)
    paths = store.paths(image.name)
    try:
        if image.vncpasswd:
            fd = os.open(paths.directory / lifecycle.VNC_SECRET,
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(image.vncpasswd)
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
