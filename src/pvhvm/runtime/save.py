"""``pvhvm save`` and ``pvhvm restore`` on the qemu platform, as xl save / xl restore.

save stops the guest (QMP ``stop``), writes the domain image (runtime/incoming.py) and QEMU's
migration stream into a save file (runtime/savefile.py) — QEMU 7.2 has no ``file:``
migration URI, so the stream goes through a pipe passed to QEMU with ``getfd`` (``migrate
fd:``) and is hashed on its way to the file — then the domain is destroyed (``-c``: left
running, ``-p``: left paused, as xl). The file is written under a temporary name and renamed
into place once whole, so a failed save leaves no file and a running guest.

restore takes only a file the invoking user or root owns and no one else may write; it reads
the whole file first (magic, version, trailer, length, SHA-256), plans the domain again
from the config the image carries and checks the files it opens (runtime/replan.py), so a
bad, stale or forged file starts nothing; then it starts the domain from its own plan and
feeds its supervisor the stream, from the file it checked, through a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from qemu.qmp import QMPClient

from pvhvm.errors import DomainError, InputError
from pvhvm.libvirt import saveimage
from pvhvm.qemu import qmp
from pvhvm.runtime import lifecycle
from pvhvm.runtime.incoming import image_of, start_incoming
from pvhvm.runtime.replan import ReplanError, check_savable, replan
from pvhvm.runtime.savefile import (
    MAGIC,
    PREFIX,
    TRAILER,
    DomainImage,
    NeedMore,
    SaveFileError,
    decode_prefix,
    decode_trailer,
    encode_prefix,
    encode_trailer,
    header_bytes,
)
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, qemu_alive

#: how often the migration's progress is read (QMP query-migrate)
POLL = 0.2
QMP_TIMEOUT = 30.0
OUTGOING_FD_NAME = "pvhvm-outgoing"
#: bytes/s: as good as no limit (QEMU takes up to 2^64-1)
UNTHROTTLED = 1 << 40
#: a migration whose stream does not move for this long is given up (the channel hangs)
STALL_TIMEOUT = 60.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class MigrationProgress:
    """One reading of QMP query-migrate (``ram``), or bytes of a stream fed to QEMU."""

    status: str
    transferred: int
    total: int
    remaining: int


Progress = Callable[[MigrationProgress], None]


def no_progress(_: MigrationProgress) -> None:
    return None


# --- QEMU's outgoing migration ------------------------------------------------------------------


async def execute(client: QMPClient, command: str, arguments: dict[str, Any] | None = None
                  ) -> Any:
    """One QMP command; DomainError with QEMU's words when it fails."""
    try:
        return await asyncio.wait_for(client.execute(command, arguments), QMP_TIMEOUT)
    except Exception as err:  # ExecuteError, QMPError, OSError, EOFError, TimeoutError
        raise DomainError(f"QMP {command} failed: {err}") from err


async def qemu_version(client: QMPClient) -> str:
    version = (await execute(client, "query-version")).get("qemu", {})
    return f"{version.get('major')}.{version.get('minor')}.{version.get('micro')}"


def _reading(info: dict[str, Any]) -> MigrationProgress:
    ram = info.get("ram") or {}
    return MigrationProgress(
        status=str(info.get("status", "")), transferred=int(ram.get("transferred", 0)),
        total=int(ram.get("total", 0)), remaining=int(ram.get("remaining", 0)))


async def migrate_out(client: QMPClient, fd: int, progress: Progress = no_progress,
                      failure: Callable[[], str | None] = lambda: None) -> dict[str, Any]:
    """Run QEMU's migration into ``fd`` (getfd, ``migrate fd:``) until it completes; the last
    query-migrate. ``failure`` is asked at every reading: a reason stops the migration
    (``migrate_cancel``) and becomes the DomainError, as does a migration QEMU fails."""
    # QEMU 7.2 caps a migration at 128 MiB/s; xl does not throttle its stream, nor does this
    await execute(client, "migrate-set-parameters", {"max-bandwidth": UNTHROTTLED})
    client.send_fd_scm(fd)
    await execute(client, "getfd", {"fdname": OUTGOING_FD_NAME})
    try:
        await execute(client, "migrate", {"uri": f"fd:{OUTGOING_FD_NAME}"})
    except DomainError:
        with contextlib.suppress(DomainError):
            await execute(client, "closefd", {"fdname": OUTGOING_FD_NAME})
        raise
    reason: str | None = None
    moved, last_move = -1, time.monotonic()
    started = last_move
    while True:
        info = await execute(client, "query-migrate")
        if info.get("status") == "completed" and "total-time" not in info:
            # A QEMU that was itself restored or migrated in reports that incoming migration
            # (``{"status": "completed"}`` alone) until this outgoing one has started.
            info = {**info, "status": "setup"}
        reading = _reading(info)
        progress(reading)
        if reading.transferred != moved:
            moved, last_move = reading.transferred, time.monotonic()
        if reading.status == "completed" and reason is None:
            # pvhvm's own measure of the whole migration, beside QEMU's total-time
            return {**info, "pvhvm-total-ms": round((time.monotonic() - started) * 1000)}
        if reading.status in ("failed", "cancelled", "completed"):
            # the other end's own words say more than QEMU's broken pipe
            reason = reason or failure()
            raise DomainError(reason or "QEMU's migration failed: "
                              + str(info.get("error-desc") or reading.status))
        if reason is None:
            reason = failure()
            if reason is None and time.monotonic() - last_move > STALL_TIMEOUT:
                reason = f"the stream has not moved for {STALL_TIMEOUT:.0f}s"
            if reason is not None:
                with contextlib.suppress(DomainError):
                    await execute(client, "migrate_cancel")
        await asyncio.sleep(POLL)


async def resume_if(client: QMPClient, was_running: bool) -> None:
    """``cont`` a guest the migration's end (or the save) stopped, when it ran before."""
    if not was_running:
        return
    status = await execute(client, "query-status")
    if not status.get("running"):
        await execute(client, "cont")


# --- save ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveOutcome:
    path: Path
    size: int
    seconds: float
    #: what became of the domain: destroyed, running or paused
    domain: str


class _Writer(threading.Thread):
    """Copies QEMU's stream from a pipe into the save file, hashing it on the way."""

    def __init__(self, source: int, out: int, digest: Any) -> None:
        super().__init__(daemon=True)
        self.source, self.out, self.digest = source, out, digest
        self.length = 0
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            while chunk := os.read(self.source, CHUNK):
                self.digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.out, view):]
                self.length += len(chunk)
        except OSError as err:
            self.error = err
        finally:
            os.close(self.source)


async def _save_stream(socket: Path, record: DomainRecord, store: StateStore, out: int,
                       progress: Progress) -> tuple[bool, DomainImage]:
    """Stop the guest and write prefix, stream and trailer to ``out``; whether it ran."""
    client = await qmp.connect(socket, "pvhvm-save", timeout=QMP_TIMEOUT)
    was_running = False
    try:
        image = image_of(record, store.paths(record.name), await qemu_version(client))
        was_running = bool((await execute(client, "query-status")).get("running"))
        if was_running:
            await execute(client, "stop")
        prefix = encode_prefix(image)
        os.write(out, prefix)
        digest = hashlib.sha256(header_bytes(image))
        source, sink = os.pipe()
        writer = _Writer(source, out, digest)
        writer.start()
        try:
            await migrate_out(client, sink, progress)
        finally:
            os.close(sink)
            await asyncio.get_running_loop().run_in_executor(None, writer.join)
        if writer.error is not None:
            raise DomainError(f"cannot write the save file: {writer.error.strerror}")
        os.write(out, encode_trailer(writer.length, digest.digest()))
        os.fsync(out)
    except BaseException:
        with contextlib.suppress(DomainError):
            await resume_if(client, was_running)
        raise
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    return was_running, image


def movable(name: str, store: StateStore, verb: str) -> DomainRecord:
    """``name``'s record, when its state can be taken (running or paused, QEMU alive)."""
    record = lifecycle.lookup(name, store)
    if record.domain_state not in (DomainState.RUNNING, DomainState.PAUSED):
        raise DomainError(f"domain {name!r} is {record.state}: only a running or paused "
                          f"domain can be {verb}")
    if not qemu_alive(record, store.paths(name)):
        raise DomainError(f"domain {name!r} has crashed (its QEMU is gone); destroy it")
    return record


def check_restorable(record: DomainRecord, store: StateStore) -> None:
    """Plan ``record``'s domain again as ``restore`` will (ReplanError, one line, when it would
    refuse): run before a save that destroys the domain, so a save never trades a running guest
    for a file this host cannot restore (a config that no longer plans, a disk moved or resized
    since create)."""
    image = image_of(record, store.paths(record.name))
    try:
        replan(image, f"domain {record.name!r}")
    except ReplanError as err:
        raise ReplanError(f"domain {record.name!r} is not saved, as restore would refuse the "
                          f"file: {err}") from err


def save(name: str, path: Path, store: StateStore | None = None, leave: str = "destroyed",
         progress: Progress = no_progress) -> SaveOutcome:
    """``xl save NAME FILE``: the domain's state into ``path``; ``leave`` says what becomes
    of the domain: destroyed (xl's default), running (``-c``) or paused (``-p``)."""
    store = store or StateStore()
    paths = store.paths(name)
    started = time.monotonic()
    with store.flocked(paths.hotplug_lock):  # no device changes while the state is taken
        record = movable(name, store, "saved")
        check_savable(record, paths.directory, "saved")
        if leave == "destroyed":
            check_restorable(record, store)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise InputError(f"cannot write {path}: {err.strerror}") from err
        try:
            try:
                was_running, _ = asyncio.run(
                    _save_stream(paths.control_socket, record, store, out, progress))
            finally:
                os.close(out)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
    size = path.stat().st_size
    if leave == "destroyed":
        lifecycle.destroy(name, store)
    elif leave == "running" and was_running:
        qmp.execute(paths.control_socket, "cont")
    return SaveOutcome(path=path, size=size, seconds=time.monotonic() - started,
                       domain="paused" if leave == "running" and not was_running else leave)


# --- restore ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveFile:
    """A save file read whole and found sound; ``fd`` is the file it was read from (the
    stream is fed from that open file, never from the path again)."""

    path: Path
    image: DomainImage
    stream_offset: int
    stream_length: int
    fd: int = -1


def check_owner(path: Path, info: os.stat_result) -> None:
    """SaveFileError unless the file is the invoking user's or root's and no one else may
    write it: a file another local user could have written is not restored (as OpenSSH's
    StrictModes treats keys), whatever its config says."""
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        raise SaveFileError(
            f"{path}: owned by uid {info.st_uid}, not by you (uid {uid}) or root: a save file "
            "another user could have written is not restored (check it, then chown it)")
    if info.st_mode & 0o022:
        raise SaveFileError(
            f"{path}: writable by other users (mode {info.st_mode & 0o7777:04o}): a save file "
            "someone else could have changed is not restored (chmod go-w it)")


def _read_image(stream: BinaryIO) -> tuple[DomainImage, int, int]:
    """The image, the stream's offset and the file's size from a save file's preamble."""
    info = os.fstat(stream.fileno())
    size = info.st_size
    data = stream.read(PREFIX.size)
    decoded = decode_prefix(data)
    if isinstance(decoded, NeedMore):
        data += stream.read(decoded.count - len(data))
        decoded = decode_prefix(data)
    if isinstance(decoded, NeedMore):
        if len(data) < len(MAGIC):
            raise SaveFileError("not a pvhvm save (no PVHVMSAV magic)")
        raise SaveFileError("truncated: the file ends inside its header")
    image, offset = decoded
    return image, offset, size


def read_image(path: Path) -> tuple[DomainImage, int, int]:
    """The image, the stream's offset and the file's size from a save file's preamble."""
    try:
        with open(path, "rb") as stream:
            check_owner(path, os.fstat(stream.fileno()))
            return _read_image(stream)
    except OSError as err:
        raise SaveFileError(f"cannot read it: {err.strerror}") from err


def peek(path: Path) -> DomainImage:
    """The image in a save file's preamble (the rest is checked by :func:`read_save_file`);
    or, in libvirt's own save image (what ``pvhvm save`` writes for a libvirt domain), the
    image pvhvm keeps in its domain XML (pvhvm.libvirt.saveimage). Either way only a file
    the invoking user or root owns, writable by no one else (:func:`check_owner`)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise SaveFileError(f"{path}: cannot read it: {err.strerror}") from err
    check_owner(path, info)
    libvirt_image = saveimage.peek(path)
    if libvirt_image is not None:
        return libvirt_image
    try:
        return read_image(path)[0]
    except SaveFileError as err:
        raise SaveFileError(f"{path}: {err}") from err


def read_save_file(path: Path) -> SaveFile:
    """Check a whole save file (SaveFileError naming it and what is wrong); the SaveFile
    keeps the file open (its ``fd``: the caller closes it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise SaveFileError(f"{path}: cannot read it: {err.strerror}") from err
    try:
        stream = os.fdopen(os.dup(fd), "rb")
        with stream:
            check_owner(path, os.fstat(fd))
            image, offset, size = _read_image(stream)
            if size < offset + TRAILER.size:
                raise SaveFileError("truncated: the file ends before its trailer")
            stream.seek(size - TRAILER.size)
            length, digest = decode_trailer(stream.read(TRAILER.size))
            if offset + length + TRAILER.size != size:
                raise SaveFileError(
                    f"truncated or padded: its trailer says {length} bytes of QEMU state, "
                    f"the file holds {size - offset - TRAILER.size}")
            stream.seek(offset)
            check = hashlib.sha256(header_bytes(image))
            left = length
            while left:
                chunk = stream.read(min(CHUNK, left))
                if not chunk:
                    raise SaveFileError("truncated: the file ended while being read")
                check.update(chunk)
                left -= len(chunk)
        if check.digest() != digest:
            raise SaveFileError("corrupt: its SHA-256 does not match its trailer")
    except SaveFileError as err:
        os.close(fd)
        if str(err).startswith(str(path)):
            raise
        raise SaveFileError(f"{path}: {err}") from err
    except OSError as err:
        os.close(fd)
        raise SaveFileError(f"{path}: cannot read it: {err.strerror}") from err
    except BaseException:
        os.close(fd)
        raise
    return SaveFile(path, image, offset, length, fd)


class _Feeder(threading.Thread):
    """Writes a save file's stream into the pipe its domain's QEMU reads."""

    def __init__(self, saved: SaveFile, sink: int, progress: Progress) -> None:
        super().__init__(daemon=True)
        self.saved, self.sink, self.progress = saved, sink, progress

    def run(self) -> None:
        total = self.saved.stream_length
        done = 0
        try:
            while done < total:
                sent = os.sendfile(self.sink, self.saved.fd, self.saved.stream_offset + done,
                                   min(CHUNK, total - done))
                if not sent:
                    break
                done += sent
                self.progress(MigrationProgress("active", done, total, total - done))
        except OSError:
            pass  # QEMU stopped reading: its supervisor says why
        finally:
            os.close(self.sink)


def restore(path: Path, store: StateStore | None = None, paused: bool = False,
            progress: Progress = no_progress) -> DomainRecord:
    """``xl restore FILE``: the saved domain running again (paused with ``paused``)."""
    store = store or StateStore()
    saved = read_save_file(path)
    try:
        return _restore(saved, store, paused, progress)
    finally:
        os.close(saved.fd)


def _restore(saved: SaveFile, store: StateStore, paused: bool, progress: Progress
             ) -> DomainRecord:
    path = saved.path
    source, sink = os.pipe()
    try:
        with start_incoming(store, saved.image, source, str(path)) as domain:
            os.close(source)
            source = -1
            feeder = _Feeder(saved, sink, progress)
            sink = -1
            feeder.start()
            domain.wait_received()
            feeder.join()
            return domain.commit(paused)
    finally:
        for fd in (source, sink):
            if fd >= 0:
                os.close(fd)
