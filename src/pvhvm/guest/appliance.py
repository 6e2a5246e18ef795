"""The libguestfs appliance: the one place pvhvm touches a guest's files or runs its programs.

A guest image someone handed you is hostile input (issue 17). Its files are read and written,
and its programs (update-initramfs, its hooks, its /bin/sh) run, only inside libguestfs's
appliance VM (guestfs(3), Debian's libguestfs 1.48; SPEC.md, "libguestfs and virt-v2v on these
machines"): a chroot is no boundary for root, a VM is. Every guest path is resolved inside the
guest (``realpath`` and ``download`` run chrooted in the appliance's daemon), so a guest symlink
to ``/etc/shadow`` is the guest's /etc/shadow, never the host's.

The appliance's QEMU is this process's child in a process group of its own
(``set_pgroup``); every call has a deadline, and a watchdog thread kills that group (and,
during ``launch``, every child the launch started) when it passes, so a hanging guest hook ends
the appliance, not the caller. KVM when pvhvm's accelerator probe proved it on this host, TCG
(``force_tcg``) otherwise.

Errors::

    PvhvmError
    └── ApplianceError              libguestfs is missing, or an appliance step failed
        └── ApplianceTimeout        a step passed its deadline; the appliance was killed
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import posixpath
import shlex
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pvhvm.errors import PvhvmError, printable
from pvhvm.qemu.accel import choose_accel, probe_cache_dir
from pvhvm.qemu.argv import Accel

try:
    import guestfs  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - reported when an appliance is asked for
    guestfs = None

log = logging.getLogger(__name__)

T = TypeVar("T")

#: blkid types whose UUID names no filesystem a guest mounts or swaps on (an LVM PV's UUID
#: is LVM's own, not a name udev gives a by-uuid link that fstab could use)
NOT_NAMED_BY_UUID = ("LVM2_member",)
#: the largest guest text file read into memory (fstab, grub.cfg, ...)
MAX_TEXT = 16 << 20
#: read_file's answer travels in one libguestfs message (4 MB at most): larger files are
#: downloaded into a private directory instead
MESSAGE_LIMIT = 2 << 20
#: marks the lines of an appliance script's answer that list its files
_LISTED = "pvhvm-listed: "
#: bytes per write_append call (a libguestfs message carries 4 MB at most)
APPEND_PIECE = 1 << 20


class ApplianceError(PvhvmError):
    """libguestfs is missing or an appliance step failed."""


class ApplianceTimeout(ApplianceError):
    """An appliance step passed its deadline; the appliance was killed."""


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds: the appliance's start, each file or mount call, each guest
    program (the initramfs rebuild; under TCG a MODULES=most rebuild takes minutes)."""

    launch: float = 600.0
    step: float = 300.0
    tool: float = 1800.0


def children_of(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (from /proc/*/stat)."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.add(int(entry.name))
    return found


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and ``pid`` itself."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)


class _Watchdog:
    """Kills the appliance when a step passes its deadline (a thread per armed step)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.spared: set[int] = set()
        self.expired: str | None = None
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float, what: str) -> None:
        self.disarm()
        self._timer = threading.Timer(seconds, self._fire, args=(what,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, what: str) -> None:
        self.expired = what
        log.warning("appliance step %s passed its deadline: killing the appliance", what)
        self.kill()

    def kill(self) -> None:
        """The appliance's QEMU and its group; before its pid is known (during launch), every
        child this process started since the launch began (QEMU, supermin, the recovery
        process)."""
        targets = {self.pid} if self.pid is not None else set()
        targets |= children_of(os.getpid()) - self.spared
        for pid in targets:
            if pid is not None:
                _kill_group(pid)


@dataclass(frozen=True)
class GuestOS:
    """What inspection found: the root filesystem's device, its mount points (fstab's, as
    libguestfs maps them to this disk), the distribution."""

    root: str
    mountpoints: dict[str, str]
    distro: str
    product: str


#: kill every process in the appliance that runs a guest program: its executable, root or
#: working directory is under /sysroot (the guest's mounted filesystems), chroot or not.
_KILL_GUEST_PROCESSES = r"""
for p in /proc/[0-9]*; do
  for link in exe root cwd; do
    case "$(readlink "$p/$link" 2>/dev/null)" in
      /sysroot|/sysroot/*) kill -9 "${p#/proc/}" 2>/dev/null; break;;
    esac
  done
done
true
"""


class Appliance:
    """One libguestfs handle on one raw disk image (see the module docstring).

    Use as a context manager: leaving it shuts the appliance down (unmounting and syncing
    the guest's filesystems) when the block succeeded, and kills it otherwise.
    """

    def __init__(self, image: Path, *, readonly: bool, timeouts: Timeouts | None = None,
                 tmpdir: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.image = image
        self.readonly = readonly
        self.timeouts = timeouts or Timeouts()
        self.tmpdir = tmpdir
        self.say = progress or (lambda message: log.info("%s", message))
        self._watchdog = _Watchdog()
        self._handle: Any = None
        self.accel: Accel | None = None

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> Appliance:
        try:
            self.launch()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, *_rest: object) -> None:
        if kind is None:
            try:
                self.shutdown()
            except BaseException:
                self.kill()
                raise
        else:
            self.kill()

    def launch(self) -> None:
        """Start the appliance with the image as its first disk."""
        if guestfs is None:
            raise ApplianceError("libguestfs's Python bindings are not installed (Debian: "
                                 "apt-get install python3-guestfs libguestfs-tools "
                                 "linux-image-amd64; dev/setup links them into the venv)")
        kernels = sorted(Path("/boot").glob("vmlinuz-*"))
        if not kernels:
            raise ApplianceError("the libguestfs appliance needs a host kernel in /boot "
                                 "(apt-get install linux-image-amd64)")
        self.accel = choose_accel("auto", probe_cache_dir(), kernel=kernels[-1],
                                  notify=self.say)
        try:
            self._start()
        except ApplianceTimeout:
            raise
        except ApplianceError as err:
            if self.accel is Accel.TCG:
                raise
            # pvhvm's probe boots a kernel, libguestfs's QEMU asks more of KVM (SPEC.md)
            self.say(f"the appliance did not start under KVM ({err}); starting it under TCG")
            self.kill()
            self._watchdog = _Watchdog()
            self.accel = Accel.TCG
            self._start()

    def _start(self) -> None:
        assert self.accel is not None
        g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        self._handle = g
        g.set_backend("direct")  # QEMU as our child: the watchdog can kill it
        g.set_pgroup(True)
        settings = [s for s in g.get_backend_settings() if s != "force_tcg"]
        if self.accel is Accel.TCG:
            settings.append("force_tcg")
        g.set_backend_settings(settings)
        if self.tmpdir is not None:
            g.set_tmpdir(str(self.tmpdir))
        g.add_drive_opts(str(self.image), format="raw", readonly=self.readonly)
        self.say(f"starting the libguestfs appliance ({self.accel.value}; under TCG about "
                 "20 s)")
        self._watchdog.spared = children_of(os.getpid())
        self._call("starting the appliance", self.timeouts.launch, g.launch)
        self._watchdog.pid = self._call("appliance pid", self.timeouts.step, g.get_pid)

    def shutdown(self) -> None:
        """Unmount and sync the guest's filesystems, stop the appliance, close the handle."""
        g = self._handle
        if g is None:
            return
        self._call("unmounting the guest's filesystems", self.timeouts.step, g.umount_all)
        self._call("stopping the appliance", self.timeouts.step, g.shutdown)
        g.close()
        self._handle = None

    def kill(self) -> None:
        """Stop the appliance now (SIGKILL to its process group), close the handle."""
        self._watchdog.disarm()
        g = self._handle
        self._watchdog.kill()
        if g is not None:
            self._handle = None
            try:
                g.close()
            except RuntimeError as err:  # the daemon is gone: nothing left to close cleanly
                log.debug("closing a killed appliance: %s", err)

    def _call(self, what: str, seconds: float, function: Callable[..., T], *args: Any,
              **kwargs: Any) -> T:
        """``function(*args)`` on the handle, killed at ``seconds``; errors as ApplianceError."""
        self._watchdog.arm(seconds, what)
        try:
            return function(*args, **kwargs)
        except RuntimeError as err:
            if self._watchdog.expired is not None:
                raise ApplianceTimeout(f"{what}: no answer after {seconds:.0f} s; the "
                                       "appliance was stopped") from err
            detail = " | ".join(str(err).strip().splitlines()[-4:])
            raise ApplianceError(f"{what}: {printable(detail)}") from err
        finally:
            self._watchdog.disarm()

    def call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One libguestfs call on the handle with the step deadline (see :meth:`_call`)."""
        return self._call(what, self.timeouts.step, function, *args, **kwargs)

    @property
    def g(self) -> Any:
        if self._handle is None:
            raise ApplianceError("the appliance is not running")
        return self._handle

    # -- the guest's filesystems ----------------------------------------------------------

    def inspect(self) -> GuestOS:
        """libguestfs inspection: the one Linux root, its fstab's mount points."""
        roots: list[str] = self._call("inspecting the guest", self.timeouts.step,
                                      self.g.inspect_os)
        linux = [r for r in roots if self._call("inspecting the guest", self.timeouts.step,
                                                self.g.inspect_get_type, r) == "linux"]
        if not linux:
            raise ApplianceError(f"{self.image}: no Linux root filesystem found "
                                 f"({len(roots)} operating system(s) recognised)")
        if len(linux) > 1:
            raise ApplianceError(f"{self.image}: {len(linux)} Linux root filesystems "
                                 f"({', '.join(linux)}): which one boots is not clear")
        root = linux[0]
        step = self.timeouts.step
        points: dict[str, str] = self._call("reading the guest's fstab", step,
                                            self.g.inspect_get_mountpoints, root)
        return GuestOS(root, dict(points),
                       str(self._call("inspecting", step, self.g.inspect_get_distro, root)),
                       str(self._call("inspecting", step, self.g.inspect_get_product_name,
                                      root)))

    def mount(self, guest: GuestOS) -> list[str]:
        """Mount the guest's filesystems as its fstab says (shortest mount point first); the
        notes say which could not be mounted (/ and /boot must)."""
        notes = []
        for point, device in sorted(guest.mountpoints.items(), key=lambda p: len(p[0])):
            try:
                self._call(f"mounting {printable(device)} on {printable(point)}",
                           self.timeouts.step, self.g.mount, device, point)
            except ApplianceTimeout:
                raise
            except ApplianceError as err:
                if point in ("/", "/boot", "/usr"):
                    raise
                notes.append(f"{printable(point)} not mounted ({err})")
        return notes

    def realpath(self, path: str) -> str | None:
        """``path`` with every symlink resolved inside the guest; None if it does not exist
        there (a link to a host path is a link to the guest's path of that name)."""
        try:
            return str(self._call(f"resolving {printable(path)}", self.timeouts.step,
                                  self.g.realpath, path))
        except ApplianceTimeout:
            raise
        except ApplianceError:
            return None

    def is_symlink(self, path: str) -> bool:
        try:
            return bool(self._call("lstat", self.timeouts.step, self.g.is_symlink, path))
        except ApplianceTimeout:
            raise
        except ApplianceError:
            return False

    def is_file(self, path: str) -> bool:
        """A regular file at ``path`` (resolved inside the guest)."""
        real = self.realpath(path)
        return real is not None and bool(self._call("stat", self.timeouts.step,
                                                    self.g.is_file, real))

    def exists(self, path: str) -> bool:
        return self.realpath(path) is not None

    def listdir(self, path: str) -> list[str] | None:
        real = self.realpath(path)
        if real is None or not self._call("stat", self.timeouts.step, self.g.is_dir, real):
            return None
        return sorted(self._call(f"listing {printable(path)}", self.timeouts.step,
                                 self.g.ls, real))

    def read_text(self, path: str) -> str | None:
        """A regular guest file's text (bytes kept through ``surrogateescape``); None when
        there is none."""
        real = self.realpath(path)
        if real is None or not self._call("stat", self.timeouts.step, self.g.is_file, real):
            return None
        size = int(self._call("stat", self.timeouts.step, self.g.filesize, real))
        if size > MAX_TEXT:
            raise ApplianceError(f"{printable(path)}: {size} bytes; more than a config file "
                                 f"has ({MAX_TEXT} at most)")
        data: bytes = self._call(f"reading {printable(path)}", self.timeouts.step,
                                 self.g.read_file, real)
        return data.decode("utf-8", "surrogateescape")

    def file_size(self, path: str) -> int | None:
        """The size of a regular guest file (resolved inside the guest); None if none."""
        real = self.realpath(path)
        if real is None or not self._call("stat", self.timeouts.step, self.g.is_file, real):
            return None
        return int(self._call("stat", self.timeouts.step, self.g.filesize, real))

    def read_bytes(self, path: str) -> bytes:
        """A small regular guest file's bytes (one libguestfs message: under 2 MiB)."""
        real = self.realpath(path)
        if real is None:
            raise ApplianceError(f"{printable(path)}: not in the guest")
        data: bytes = self._call(f"reading {printable(path)}", self.timeouts.step,
                                 self.g.read_file, real)
        return data

    def read_whole(self, path: str, size: int, workdir: Path, limit: int) -> bytes:
        """The bytes of the guest file ``path`` (resolved inside the guest), whose size the
        caller read and bounded, at most ``limit`` of them: in one libguestfs message when
        small, else downloaded into a private directory under ``workdir``, removed after."""
        if size <= MESSAGE_LIMIT:
            return self.read_bytes(path)
        target = Path(tempfile.mkdtemp(dir=workdir)) / "file"
        try:
            self.download(path, target)
            with open(target, "rb") as stream:
                return stream.read(limit)
        finally:
            shutil.rmtree(target.parent, ignore_errors=True)

    def download(self, path: str, target: Path) -> None:
        """A guest file (resolved inside the guest) into the new host file ``target``, which
        the caller made room for in a private directory."""
        real = self.realpath(path)
        if real is None:
            raise ApplianceError(f"{printable(path)}: not in the guest")
        self._call(f"downloading {printable(path)}", self.timeouts.step, self.g.download,
                   real, str(target))

    def filesystem_identity(self, device: str) -> tuple[str, str, str]:
        """(type, UUID, label) of the filesystem on an appliance device, as blkid says."""
        step = self.timeouts.step
        return (str(self._call("filesystem type", step, self.g.vfs_type, device)),
                str(self._call("filesystem UUID", step, self.g.vfs_uuid, device)),
                str(self._call("filesystem label", step, self.g.vfs_label, device)))

    def partition_number(self, device: str) -> int | None:
        """The partition number of an appliance device (None: an LV or a whole disk)."""
        if not device.startswith("/dev/sd") or not device[-1].isdigit():
            return None
        return int(self._call("partition number", self.timeouts.step, self.g.part_to_partnum,
                              device))

    def write_text(self, path: str, text: str) -> None:
        """Write a guest file that :meth:`realpath` resolved (an existing file keeps its mode
        and owner)."""
        self._call(f"writing {printable(path)}", self.timeouts.step, self.g.write, path,
                   text.encode("utf-8", "surrogateescape"))

    def copy(self, source: str, target: str) -> None:
        """``cp -a`` of resolved guest paths, inside the appliance."""
        self._call(f"copying {printable(source)}", self.timeouts.step, self.g.cp_a, source,
                   target)

    def remove(self, path: str) -> None:
        """Remove a resolved guest path that is a file or a symlink (never followed)."""
        self._call(f"removing {printable(path)}", self.timeouts.step, self.g.rm, path)

    def symlink(self, target: str, path: str) -> None:
        """Make the symlink ``path`` → ``target`` (``path``'s directory resolved already)."""
        self._call(f"linking {printable(path)}", self.timeouts.step, self.g.ln_sf, target, path)

    def stat_entries(self, directory: str) -> dict[str, tuple[int, int, int]]:
        """name → (size, mtime ns, mode) of each entry of a guest directory (no symlink
        followed)."""
        real = self.realpath(directory)
        if real is None:
            return {}
        names = self._call("listing", self.timeouts.step, self.g.ls, real)
        stats = self._call("lstat", self.timeouts.step, self.g.lstatnslist, real, names)
        return {name: (int(st["st_size"]), int(st["st_mtime_sec"]) * 10**9
                       + int(st["st_mtime_nsec"]), int(st["st_mode"]))
                for name, st in zip(names, stats, strict=True)}

    def partition_uuids(self, device: str) -> dict[int, str]:
        """Partition number → filesystem UUID on the disk holding ``device`` (0: the whole
        disk is the filesystem)."""
        step = self.timeouts.step
        g = self.g
        uuids: dict[int, str] = {}
        try:
            disk = str(self._call("partition's disk", step, g.part_to_dev, device))
        except ApplianceError:
            disk = device
        if not disk.startswith("/dev/sd"):
            disk = str(self._call("devices", step, g.list_devices)[0])
        partitions = [p for p in self._call("partitions", step, g.list_partitions)
                      if p.startswith(disk)]
        for partition in partitions or [disk]:
            number = 0 if partition == disk else int(
                self._call("partition number", step, g.part_to_partnum, partition))
            try:
                kind = str(self._call("filesystem type", step, g.vfs_type, partition))
                uuid = str(self._call("uuid", step, g.vfs_uuid, partition))
            except ApplianceError:
                continue
            if uuid and kind not in NOT_NAMED_BY_UUID:
                uuids[number] = uuid
        return uuids

    def partition_partuuids(self) -> dict[int, str]:
        """Partition number → PARTUUID on the first disk: an MBR's is its disk identifier
        (bytes 440-443) and the number (``8f3a41c2-03``), a GPT's the entry's GUID."""
        step = self.timeouts.step
        g = self.g
        disk = str(self._call("devices", step, g.list_devices)[0])
        found: dict[int, str] = {}
        try:
            scheme = str(self._call("partition table", step, g.part_get_parttype, disk))
        except ApplianceError:
            return found
        numbers = [int(p["part_num"]) for p in self._call("partitions", step, g.part_list,
                                                           disk)]
        if scheme == "msdos":
            raw: bytes = self._call("disk identifier", step, g.pread_device, disk, 4, 440)
            ident = int.from_bytes(raw, "little")
            return {n: f"{ident:08x}-{n:02x}" for n in numbers}
        if scheme == "gpt":
            for number in numbers:
                found[number] = str(self._call("partition GUID", step, g.part_get_gpt_guid,
                                               disk, number)).lower()
        return found

    def regular_files(self, directory: str, relpaths: Iterable[str]) -> dict[str, str]:
        """relpath → its path resolved inside the guest, for each of ``relpaths`` under the
        guest directory ``directory`` that is a regular file there (symlinks resolved in the
        guest; what is missing or not a regular file is left out). One lstat call per
        directory, so a few hundred modules cost a few dozen calls."""
        step = self.timeouts.step
        by_parent: dict[str, list[str]] = {}
        for relpath in relpaths:
            by_parent.setdefault(posixpath.dirname(relpath), []).append(relpath)
        found: dict[str, str] = {}
        for parent, members in sorted(by_parent.items()):
            real = self.realpath(f"{directory.rstrip('/')}/{parent}".rstrip("/"))
            if real is None:
                continue
            names = [posixpath.basename(m) for m in members]
            stats = self._call("lstat", step, self.g.lstatnslist, real, names)
            for relpath, name, st in zip(members, names, stats, strict=True):
                path = f"{real.rstrip('/')}/{name}"
                mode = int(st["st_mode"])
                if int(st["st_ino"]) == -1:
                    continue
                if stat.S_ISREG(mode):
                    found[relpath] = path
                elif stat.S_ISLNK(mode):
                    target = self.realpath(path)
                    if target is not None and self._call("stat", step, self.g.is_file, target):
                        found[relpath] = target
        return found

    def append(self, path: str, data: bytes) -> None:
        """Append ``data`` to the guest file ``path`` that :meth:`realpath` resolved (in
        pieces that each fit one libguestfs message)."""
        for start in range(0, len(data), APPEND_PIECE):
            self._call(f"appending to {printable(path)}", self.timeouts.step,
                       self.g.write_append, path, data[start:start + APPEND_PIECE])

    def run_appliance(self, script: str, what: str, timeout: float | None = None) -> str:
        """Run a shell script of the appliance's own programs (never the guest's: the guest is
        under /sysroot and nothing there is executed); its standard output."""
        return str(self._call(what, timeout or self.timeouts.step, self.g.debug, "sh",
                              [script]))

    def depmod(self, release: str, files: Mapping[str, str]) -> dict[str, bytes]:
        """kmod's index for the modules in ``files`` (path under ``lib/modules/RELEASE`` →
        the guest file, resolved inside the guest), made by the appliance's own depmod in a
        private tree in the appliance: name → bytes of every ``modules.*`` file there
        (modules.dep, modules.dep.bin, modules.alias.bin, ... and the copied
        modules.builtin). The guest's ELF files are parsed in the VM, not on the host."""
        base = "/tmp/pvhvm-depmod"
        tree = f"{base}/lib/modules/{release}"
        lines = ["set -e", f"rm -rf {base}", f"mkdir -p {shlex.quote(tree)}",
                 f"cd {shlex.quote(tree)}"]
        for relpath in sorted({posixpath.dirname(r) for r in files if "/" in r}):
            lines.append(f"mkdir -p -- {shlex.quote(relpath)}")
        for relpath, real in sorted(files.items()):
            lines.append(f"cp -- {shlex.quote('/sysroot' + real)} {shlex.quote(relpath)}")
        lines.append(f"depmod -b {base} {shlex.quote(release)}")
        lines.append(f"for f in modules.*; do echo \"{_LISTED}$f\"; done")
        # the answer has depmod's warnings (stderr) in it too: only the marked lines count
        listed = self.run_appliance("\n".join(lines), f"depmod for {printable(release)}, "
                                    "in the appliance")
        index: dict[str, bytes] = {}
        for line in listed.splitlines():
            name = line.removeprefix(_LISTED)
            if name == line or not name.startswith("modules.") or "/" in name:
                continue
            encoded = self.run_appliance(f"base64 -w0 -- {shlex.quote(tree + '/' + name)}",
                                         f"reading {name}")
            try:
                index[name] = base64.b64decode(encoded.strip(), validate=True)
            except binascii.Error as err:
                raise ApplianceError(f"reading {name} from the appliance: {err}") from err
        self.run_appliance(f"rm -rf {base}", "removing the depmod tree")
        return index

    # -- guest programs -------------------------------------------------------------------

    def run_guest(self, argv: list[str], what: str, timeout: float | None = None) -> str:
        """Run a guest program chrooted in its mounted filesystems inside the appliance, with
        /proc, /sys and /dev (libguestfs binds them when the guest has those directories);
        afterwards every process it left behind in the appliance is killed."""
        try:
            return str(self._call(what, timeout or self.timeouts.tool, self.g.command, argv))
        finally:
            if self._handle is not None and self._watchdog.expired is None:
                self.kill_guest_processes()

    def kill_guest_processes(self) -> None:
        """Kill what guest programs left running in the appliance (so the guest's
        filesystems can be unmounted cleanly)."""
        self._call("stopping the guest's leftover processes", self.timeouts.step,
                   self.g.debug, "sh", [_KILL_GUEST_PROCESSES])

