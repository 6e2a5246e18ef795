"""Domain records: what a running domain is, written atomically under the state directory.

Layout (``PVHVM_STATE_DIR``, else ``$XDG_STATE_HOME/pvhvm``, else ``~/.local/state/pvhvm``)::

    lock                     flock held while allocating a domid
    domid                    the last domid given: domids are not reused (issue 21 item 6)
    defined/                 defined (persistent) domains (runtime/persist.py)
    uuids.json               the uuid each name got at its first create (runtime/persist.py)
    host-saved.json          the domains ``pvhvm host stop --save-dir`` saved (runtime/hostsvc.py)
    domains/<name>/          one directory per domain; it appears whole, with its record and
                             owner lock, by renaming a staging directory ``.<name>.<pid>.new``
                             (a rename onto an existing domain fails: one of two racing
                             creates of a name wins)
        record.json          the DomainRecord (replaced atomically: tmp file, fsync, rename)
        source.json          the config as create read it, 0600 (runtime/lifecycle.py)
        owner.lock           flock held by whoever is responsible for the domain: the creating
                             ``pvhvm create``, then its supervisor (the lock is inherited); free
                             means nobody is (see lifecycle.refresh)
        qmp.sock             QMP for the supervisor
        ctl.sock             QMP for the CLI verbs
        console.sock         the serial console (when serial= does not say otherwise)
    logs/                    like /var/log/xen: qemu-dm-<name>.log, <name>.console.log,
                             supervisor-<name>.log (kept after the domain is gone)
    hostd.sock, hostd.lock   the host supervisor's socket and lock (runtime/hostd.py)

Private by default (issue 18): the state directory, ``domains/``, each domain's directory and
``logs/`` are 0700, every file in them 0600 (pvhvm/private.py makes them so from the start and
tightens an older pvhvm's 0755/0644 ones at first use, never through a symlink).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pvhvm.config.domain import name_problem
from pvhvm.errors import DomainError
from pvhvm.private import open_private, private_dir

#: sun_path is 108 bytes on Linux, NUL included
MAX_SOCKET_PATH = 107
OWNER_LOCK = "owner.lock"
#: stores under the state directory for the platforms other than qemu (whose records are
#: in the state directory itself): xen/domain.py, platforms/libvirt.py
PLATFORM_SUBSTORES = ("xen", "libvirt")
STAGING_SUFFIX = ".new"
#: the last domid given (StateStore.next_domid), in the state directory
DOMID_FILE = "domid"
#: Xen's DOMID_FIRST_RESERVED is 0x7FF0: domids of guests stay below it
DOMID_MAX = 0x7FEF


class DomainState(Enum):
    """States as ``xl list`` prints them (r b p s c d), plus ``starting``."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    CRASHED = "crashed"
    DYING = "dying"

    @property
    def letter(self) -> str:
        return {
            DomainState.STARTING: "-", DomainState.RUNNING: "r", DomainState.PAUSED: "p",
            DomainState.SHUTDOWN: "s", DomainState.CRASHED: "c", DomainState.DYING: "d",
        }[self]


def state_dir() -> Path:
    """The state directory, from PVHVM_STATE_DIR or the XDG state directory; absolute, as
    QEMU and the host supervisor (which runs in /) are given paths under it."""
    explicit = os.environ.get("PVHVM_STATE_DIR")
    if explicit:
        return Path(explicit).absolute()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return (base / "pvhvm").absolute()


@dataclass
class DomainRecord:
    """One domain as the toolstack knows it."""

    name: str
    domid: int
    uuid: str
    platform: str
    memory_mib: int
    vcpus: int
    plan: dict[str, Any]
    argv: list[str]
    on_poweroff: str
    on_reboot: str
    on_crash: str
    state: str = DomainState.STARTING.value
    qemu_pid: int | None = None
    supervisor_pid: int | None = None
    start_time: float = field(default_factory=time.time)
    accel: str = "tcg"
    console: str | None = None
    restarts: int = 0
    #: set by the toolstack before it asks the supervisor to destroy the domain
    destroying: bool = False
    #: devices added while the domain ran (runtime/hotplug.py): kind, devid, the slot they
    #: took, the spec they were attached with and the directory it was given in (what a
    #: save or migration carries), and the argv that re-creates them, which ``argv`` also
    #: holds (kept on this host only)
    hotplugged: list[dict[str, Any]] = field(default_factory=list)
    #: what to remove once QEMU reports a force-detached device gone: device (its id),
    #: command and arguments (blockdev-del / netdev_del), run by the supervisor
    releasing: list[dict[str, Any]] = field(default_factory=list)
    #: CD drives whose medium cd-insert / cd-eject changed: vdev → path ("" empty)
    media: dict[str, str] = field(default_factory=dict)
    #: ``pvhvm reboot`` pressed the power button: the guest's next power-off is a reboot
    #: (on_reboot), as libvirt's fakeReboot (runtime/lifecycle.py reboot); cleared by it,
    #: by ``shutdown`` and by every QEMU start
    reboot_requested: bool = False
    #: the VNC server QEMU runs (QMP query-vnc at each start): host, port, display
    vnc: dict[str, Any] | None = None

    @property
    def domain_state(self) -> DomainState:
        return DomainState(self.state)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class DomainPaths:
    """Every path of one domain."""

    directory: Path
    record: Path
    qmp_socket: Path
    control_socket: Path
    console_socket: Path
    console_log: Path
    qemu_log: Path
    supervisor_log: Path
    owner_lock: Path
    #: flock held by the one ``pvhvm console`` attached to the domain
    console_lock: Path
    #: flock held by one block-/network-attach/-detach or cd-insert/-eject at a time
    hotplug_lock: Path
    #: flock held around each read-modify-write of the record (supervisor and hotplug)
    record_lock: Path

    @classmethod
    def of(cls, root: Path, name: str) -> DomainPaths:
        directory = root / "domains" / name
        logs = root / "logs"
        return cls(
            directory=directory,
            owner_lock=directory / OWNER_LOCK,
            console_lock=directory / "console.lock",
            hotplug_lock=directory / "hotplug.lock",
            record_lock=directory / "record.lock",
            record=directory / "record.json",
            qmp_socket=directory / "qmp.sock",
            control_socket=directory / "ctl.sock",
            console_socket=directory / "console.sock",
            console_log=logs / f"{name}.console.log",
            qemu_log=logs / f"qemu-dm-{name}.log",
            supervisor_log=logs / f"supervisor-{name}.log",
        )

    def check_socket_lengths(self) -> None:
        for sock in (self.qmp_socket, self.control_socket, self.console_socket):
            if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
                raise DomainError(
                    f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; "
                    "set PVHVM_STATE_DIR to a shorter directory"
                )


def write_atomic(path: Path, data: str) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dirfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


class StateStore:
    """The state directory: domain records, names and domids."""

    def __init__(self, root: Path | None = None, base: Path | None = None) -> None:
        self.root = root if root is not None else state_dir()
        #: the state directory proper; xen-platform records live in a store under it
        #: (``base/xen``) that shares its lock, its names and its domids
        self.base = base if base is not None else self.root

    @property
    def peers(self) -> list[StateStore]:
        """The other platforms' stores: names and domids are unique across all of them."""
        stores = [StateStore(self.base)] + [
            StateStore(self.base / sub, base=self.base) for sub in PLATFORM_SUBSTORES
        ]
        return [store for store in stores if store.root != self.root]

    def paths(self, name: str) -> DomainPaths:
        problem = name_problem(name)
        if problem is not None:
            raise DomainError(problem)
        return DomainPaths.of(self.root, name)

    def _check_free(self, name: str) -> None:
        if any(peer.paths(name).directory.exists() for peer in self.peers):
            raise DomainError(f"domain {name!r} already exists (on another platform)")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise domid allocation between toolstack processes (both platforms)."""
        _state_dir(self.base)
        fd = open_private(self.base / "lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def claim(self, name: str) -> DomainPaths:
        """Make the domain's directory; exactly one of two racing claims of a name wins."""
        paths = self.paths(name)
        paths.check_socket_lengths()
        self.make_private()
        self._check_free(name)
        try:
            paths.directory.mkdir(mode=0o700)
        except FileExistsError:
            raise DomainError(f"domain {name!r} already exists") from None
        return paths

    def introduce(
        self, name: str, build: Callable[[int, DomainPaths], DomainRecord]
    ) -> tuple[DomainRecord, OwnerLock]:
        """Make domain ``name`` appear with its record (``build(domid, paths)``), owned by us.

        The directory is staged under a dot-name, its owner lock taken, and renamed into place
        while the domid lock is held: a reader sees the domain whole or not at all, and of two
        racing introductions of one name exactly one wins (the other gets DomainError).
        """
        paths = self.paths(name)
        paths.check_socket_lengths()
        domains = self.root / "domains"
        self.make_private()
        if paths.directory.exists():
            raise DomainError(f"domain {name!r} already exists")
        self._check_free(name)
        staging = domains / f".{name}.{os.getpid()}{STAGING_SUFFIX}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        lock: OwnerLock | None = None
        try:
            lock = OwnerLock.try_acquire(staging / OWNER_LOCK, create=True)
            assert lock is not None, "a fresh staging directory's lock is free"
            with self.locked():
                # again under the lock: a racing create of this name that won is whole now,
                # and its name is the answer, not whatever build() would say of its record
                if paths.directory.exists():
                    raise DomainError(f"domain {name!r} already exists")
                record = build(self.next_domid(), paths)
                write_atomic(staging / "record.json", json.dumps(record.to_json(), indent=1))
                try:
                    os.rename(staging, paths.directory)
                except OSError as err:
                    if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        raise DomainError(f"domain {name!r} already exists") from None
                    raise
        except BaseException:
            if lock is not None:
                lock.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return record, lock

    def make_private(self) -> None:
        """Make the state directory, ``domains/`` and ``logs/`` (0700), or tighten an older
        pvhvm's to 0700 (the state directory's base too, when this store is a platform's
        store under it). A state directory that holds anything but pvhvm's own entries
        (``PVHVM_STATE_DIR=$HOME``) is not pvhvm's to chmod: what pvhvm keeps in it is
        private all the same, in 0700 directories and 0600 files."""
        _state_dir(self.base)
        _state_dir(self.root)
        _state_dir(self.root / "domains", pvhvms=True)
        _state_dir(self.root / "logs", pvhvms=True)

    def sweep_staging(self) -> None:
        """Remove staging directories whose creating process is gone."""
        try:
            entries = list((self.root / "domains").iterdir())
        except FileNotFoundError:
            return
        except OSError as err:
            raise DomainError(f"state directory {self.root} is unusable: {err}") from err
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(STAGING_SUFFIX)):
                continue
            pid = entry.name.removesuffix(STAGING_SUFFIX).rpartition(".")[2]
            if not (pid.isdigit() and pid_alive(int(pid))):
                shutil.rmtree(entry, ignore_errors=True)

    def release(self, name: str) -> None:
        """Remove the domain's directory (record first, then sockets and lock); logs stay."""
        paths = self.paths(name)
        with contextlib.suppress(FileNotFoundError):
            paths.record.unlink()
        shutil.rmtree(paths.directory, ignore_errors=True)

    def write(self, record: DomainRecord) -> None:
        write_atomic(self.paths(record.name).record, json.dumps(record.to_json(), indent=1))

    @contextlib.contextmanager
    def flocked(self, path: Path) -> Iterator[None]:
        """An exclusive flock on ``path`` inside a domain's directory (DomainError when the
        domain has gone: the lock file is never made outside it)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise DomainError(f"domain {path.parent.name!r} is gone") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def modify(self, name: str, change: Callable[[DomainRecord], None]) -> DomainRecord:
        """Read ``name``'s record, apply ``change`` and write it back, with no other
        :meth:`modify` in between (the supervisor and the hotplug verbs both write it)."""
        with self.flocked(self.paths(name).record_lock):
            record = self.read(name)
            if record is None:
                raise DomainError(f"record of domain {name!r} vanished")
            change(record)
            self.write(record)
            return record

    def read(self, name: str) -> DomainRecord | None:
        """The record of ``name``, or None when there is none (yet)."""
        try:
            data = json.loads(self.paths(name).record.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise DomainError(f"record of domain {name!r} is unreadable: {err}") from err
        return DomainRecord.from_json(data)

    def names(self) -> list[str]:
        try:
            return sorted(
                p.name for p in (self.root / "domains").iterdir()
                if p.is_dir() and not p.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as err:
            raise DomainError(f"state directory {self.root} is unusable: {err}") from err

    def records(self) -> list[DomainRecord]:
        out = []
        for name in self.names():
            record = self.read(name)
            if record is not None:
                out.append(record)
        return out

    def next_domid(self, take: bool = True) -> int:
        """The domid after the last one given, skipping any in use on a platform (call with
        :meth:`locked` held). The last one is kept in the state directory's ``domid``, so
        domids are not reused while this state directory lives, host supervisor restarts
        included (Xen reuses them only after its 32-bit space wraps; pvhvm wraps at
        DOMID_MAX). An unreadable counter starts again after the highest in use.
        ``take=False`` (a dry run): the domid the next create would get, nothing written."""
        used = {r.domid for store in (self, *self.peers) for r in store.records()}
        counter = self.base / DOMID_FILE
        try:
            last = int(counter.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            last = max(used, default=0)
        domid = last + 1 if 0 <= last < DOMID_MAX else 1
        while domid in used:
            domid = domid + 1 if domid < DOMID_MAX else 1
        if take:
            write_atomic(counter, f"{domid}\n")
        return domid


#: what pvhvm keeps in a state directory (and a platform's store under it)
STATE_ENTRIES = frozenset({"lock", "hostd.lock", "hostd.sock", "domains", "logs",
                           "xenstored", DOMID_FILE, "defined", "host-saved.json", "uuids.json",
                           *PLATFORM_SUBSTORES})


def _state_dir(directory: Path, pvhvms: bool = False) -> None:
    """Make ``directory`` 0700, or tighten it when it is pvhvm's: ``pvhvms`` (a directory
    pvhvm names, domains/ and logs/), or one that holds nothing but pvhvm's own entries (an
    empty one included). DomainError when it cannot be made or another user owns it."""
    try:
        private_dir(directory, tighten=pvhvms or _only_pvhvm_entries(directory))
    except OSError as err:
        raise DomainError(f"state directory {directory}: {err.strerror or err}") from err


def _only_pvhvm_entries(directory: Path) -> bool:
    try:
        return all(entry.name in STATE_ENTRIES for entry in directory.iterdir())
    except OSError:
        return True  # missing (made 0700) or unreadable (private_dir says why)


def pid_alive(pid: int | None) -> bool:
    """Whether a process with ``pid`` exists (zombies count as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class OwnerLock:
    """An exclusive flock on a domain's ``owner.lock``: whoever holds it answers for the domain.

    The lock belongs to the open file, so a child given the descriptor (``pass_fds``) holds it
    too; it is free again once every holder has closed it or exited.
    """

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path, create: bool = False) -> OwnerLock | None:
        """The lock, or None when another process holds it.

        Raises FileNotFoundError when the lock file does not exist and ``create`` is false
        (a domain directory being removed must not get a new file).
        """
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @staticmethod
    def held(path: Path) -> bool | None:
        """Whether someone holds the lock at ``path``; None when there is no lock file."""
        try:
            lock = OwnerLock.try_acquire(path)
        except FileNotFoundError:
            return None
        if lock is None:
            return True
        lock.close()
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of ``pid`` (0.0 when it is gone), from /proc/PID/stat."""
    if not pid:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[-1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def qemu_alive(record: DomainRecord, paths: DomainPaths) -> bool:
    """Whether the record's QEMU still runs: its pid is alive and is this domain's QEMU (its
    command line names the domain's QMP socket), so a reused pid is not mistaken for it."""
    pid = record.qemu_pid
    if not pid_alive(pid):
        return False
    assert pid is not None
    return str(paths.qmp_socket) in " ".join(pid_cmdline(pid))
