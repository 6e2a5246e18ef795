"""Run the host tools that parse untrusted guest bytes (debugfs, mtools, zstd, lz4) confined.

Every tool runs with a timeout, in a session (process group) of its own that is killed with
SIGKILL when the time is up or the reader stops early, never left running; what it prints is
read incrementally and capped, and what it writes to a file is capped by RLIMIT_FSIZE.

A tool that reads a guest *image* (debugfs, mtools) gets it as a descriptor the parent opened,
named ``/proc/self/fd/N``, and runs as the unprivileged user ``nobody`` (uid/gid 65534, no
supplementary groups, ``PR_SET_NO_NEW_PRIVS``, a parent-death SIGKILL) in new network, IPC
and UTS namespaces (unshare(2)), without core dumps and with an address-space cap. Opening
``/proc/self/fd/N`` is a new open(2) that checks the file's permissions against the opener, so
a root-owned 0600 image cannot be handed to ``nobody`` as is. When running as root, pvhvm
therefore hands over a *detached, read-only, idmapped mount* of the image file: open_tree(2)
``OPEN_TREE_CLONE`` of the already-open file, then mount_setattr(2) with
``MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY`` and a user namespace whose map sends the file's owner
and group to 65534 (mount_setattr(2), "Idmapped mounts"; Linux 5.12+, on ext4, xfs, btrfs,
tmpfs...). Through that mount the file is nobody's and read-only; the mount is never attached
to any directory, so nothing changes on the host and it goes away with its descriptor.

Every confined tool (and the decompressors, which get only a pipe) is also Landlocked where the
kernel has Landlock (Linux 5.13+; ABI 4 adds TCP, ABI 6 signal and abstract-socket scoping): it
may read and execute what its uid may read, read the image's descriptor and use /dev/null, and
nothing else, so an exploited parser writes no file (not even in a world-writable /tmp), creates
no node, and cannot signal or ptrace a process outside its own sandbox.

Where that is not possible (an old kernel, a filesystem without idmapped mounts, a block
device) and ``nobody`` cannot read the image by its mode, the tool runs as the invoking user
in the same namespaces, with every capability dropped (bounding set and capset(2)), and
:attr:`ImageHandle.confinement` says so (inspect prints it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import select
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError

#: seconds any one tool run may take
TOOL_TIMEOUT = 120.0
#: the unprivileged user and group the image readers run as
NOBODY = 65534
#: address space of a confined tool: far above what debugfs or mtools need
TOOL_ADDRESS_SPACE = 2 << 30
CHUNK = 1 << 20
#: what one tool run may print (a directory listing, a file up to an initramfs)
MAX_OUTPUT = 576 << 20

_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# x86-64 and aarch64 share these numbers (the new "common" syscall table)
_SYS_OPEN_TREE = 428
_SYS_MOUNT_SETATTR = 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_NOEXEC = 0x8
_MOUNT_ATTR_IDMAP = 0x100000

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_NET_BIND_TCP, _LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
_LL_SCOPE_ABSTRACT_UNIX_SOCKET, _LL_SCOPE_SIGNAL = 1 << 0, 1 << 1


class _LandlockRuleset(ctypes.Structure):
    """struct landlock_ruleset_attr (linux/landlock.h): its size grows with the ABI."""

    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _LandlockPathBeneath(ctypes.Structure):
    """struct landlock_path_beneath_attr (packed)."""

    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_unshare = _libc.unshare
_prctl = _libc.prctl
_syscall = _libc.syscall
_capset = _libc.capset


def _confine_child(privileged: bool, file_size: int | None = None,
                   readable: tuple[int, ...] = ()) -> Callable[[], None]:
    """The preexec step of a confined tool: namespaces, then (as root) uid/gid nobody, no new
    privileges, Landlock where the kernel has it (``readable``: descriptors it may read);
    ``file_size`` caps what it may write to a file (RLIMIT_FSIZE: SIGXFSZ beyond)."""
    abi = LANDLOCK_ABI

    def confine() -> None:
        # only syscalls here: this runs between fork and exec
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.geteuid() == 0:
            if _unshare(_CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            if privileged:
                _drop_capabilities()
            else:
                os.setgroups([])
                os.setresgid(NOBODY, NOBODY, NOBODY)
                os.setresuid(NOBODY, NOBODY, NOBODY)
        if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if abi:
            _landlock(abi, readable)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (TOOL_ADDRESS_SPACE, TOOL_ADDRESS_SPACE))
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return confine


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version (0: none, or disabled at boot)."""
    version = int(_syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    return max(version, 0)


#: probed once: a cheap syscall, and the preexec step must not probe between fork and exec
LANDLOCK_ABI = landlock_abi()


def _landlock_fs_rights(abi: int) -> int:
    """Every filesystem access right ABI ``abi`` knows (1: 13 rights, 2: +REFER,
    3: +TRUNCATE, 5: +IOCTL_DEV): all handled, so all are denied unless a rule allows."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= 1 << 13
    if abi >= 3:
        rights |= 1 << 14
    if abi >= 5:
        rights |= 1 << 15
    return rights


def _landlock(abi: int, readable: tuple[int, ...]) -> None:
    """Landlock the calling process (after PR_SET_NO_NEW_PRIVS): it may read and execute what
    its uid may read, read the descriptors in ``readable`` (the image, also through a detached
    mount) and read or write /dev/null; it may write, create, remove, link or rename nothing,
    bind or connect no TCP port (ABI 4), and signal or reach through an abstract Unix socket no
    process outside its own domain (ABI 6). Descriptors open before (its stdout file) work as
    they are. OSError when the kernel refuses."""
    attr = _LandlockRuleset(handled_access_fs=_landlock_fs_rights(abi))
    size = 8
    if abi >= 4:
        attr.handled_access_net = _LL_NET_BIND_TCP | _LL_NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = _LL_SCOPE_ABSTRACT_UNIX_SOCKET | _LL_SCOPE_SIGNAL
        size = 24
    ruleset = int(_syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                           ctypes.c_size_t(size), ctypes.c_uint32(0)))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    opened: list[int] = []
    try:
        opened.append(os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        opened.append(os.open("/dev/null", os.O_PATH | os.O_CLOEXEC))
        rules = [(opened[0], _LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR),
                 (opened[1], _LL_READ_FILE | _LL_WRITE_FILE),
                 *((fd, _LL_READ_FILE) for fd in readable)]
        for fd, allowed in rules:
            rule = _LandlockPathBeneath(allowed_access=allowed, parent_fd=fd)
            if _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule")
        if _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        for fd in (ruleset, *opened):
            os.close(fd)


def _drop_capabilities() -> None:
    """Root without any capability (bounding set emptied, then capset(2) all zero): it can
    still open what root owns by its mode bits, but not override permissions, mount, trace,
    or regain them by exec."""
    for cap in range(64):
        if _prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} sets, all empty
    if _capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


@contextlib.contextmanager
def new_output_file(destination: Path) -> Iterator[tuple[int, list[bool]]]:
    """A new file at ``destination`` for a tool to write a guest file into: made by pvhvm
    itself (O_EXCL, no symlink followed), removed again unless the body sets ``done[0]``.
    Yields (descriptor, done)."""
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise ImageUnreadableError(f"cannot write {destination}: {err.strerror or err}") from err
    done = [False]
    try:
        yield fd, done
    finally:
        os.close(fd)
        if not done[0]:
            with contextlib.suppress(OSError):
                os.unlink(destination)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the tool's whole process group (while the tool, its leader, is unreaped, so
    the group id cannot have been reused) and reap the tool."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_tool(
    argv: Sequence[str], *, what: str, timeout: float = TOOL_TIMEOUT,
    image: ImageHandle | None = None, stdout: int | None = None,
    env: dict[str, str] | None = None, max_output: int = MAX_OUTPUT,
) -> tuple[bytes, bytes, int]:
    """Run ``argv``: (stdout, stderr, exit status). With ``image`` it reads that image's
    descriptor, confined (module docstring). ``stdout`` sends the output to a file instead.
    At most ``max_output`` bytes of output are taken (to the pipe, or written to the file);
    beyond that, or past the timeout, its process group is killed and the run is an
    ImageUnreadableError."""
    pass_fds: tuple[int, ...] = ()
    preexec: Callable[[], None] | None = None
    if image is not None:
        pass_fds = (image.child_fd,)
        preexec = _confine_child(image.privileged,
                                 file_size=max_output if stdout is not None else None,
                                 readable=(image.child_fd,))
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, pass_fds=pass_fds, preexec_fn=preexec, env=env,
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise ImageUnreadableError(f"{what}: cannot run {argv[0]}: {err}") from err
    try:
        out, errs = _collect(process, what=what, timeout=timeout, max_output=max_output)
    finally:
        _kill_group(process)
    if process.returncode == -signal.SIGXFSZ:
        raise ImageUnreadableError(f"{what}: {argv[0]} wrote over {max_output >> 20} MiB; "
                                   "killed")
    return out, errs, process.returncode


def _collect(process: subprocess.Popen[bytes], *, what: str, timeout: float,
             max_output: int) -> tuple[bytes, bytes]:
    """The tool's stdout and stderr until it closes them, within the time and size bounds."""
    deadline = time.monotonic() + timeout
    out = process.stdout.fileno() if process.stdout is not None else -1
    err = process.stderr.fileno() if process.stderr is not None else -1
    streams = {s.fileno(): s for s in (process.stdout, process.stderr) if s is not None}
    chunks: dict[int, list[bytes]] = {fd: [] for fd in streams}
    taken = 0
    name = str(process.args[0]) if isinstance(process.args, list) else "tool"
    while streams:
        left = deadline - time.monotonic()
        ready = select.select(list(streams), [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            raise ImageUnreadableError(f"{what}: {name} took over {timeout:g} s; killed")
        for fd in ready:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                streams.pop(fd).close()
                continue
            taken += len(chunk)
            if taken > max_output:
                raise ImageUnreadableError(
                    f"{what}: {name} printed over {max_output >> 20} MiB; killed")
            chunks[fd].append(chunk)
    try:
        process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired as expired:
        raise ImageUnreadableError(f"{what}: {name} took over {timeout:g} s; killed") \
            from expired
    return b"".join(chunks.get(out, [])), b"".join(chunks.get(err, []))


def stream_tool(argv: Sequence[str], data: memoryview, *, what: str,
                timeout: float = TOOL_TIMEOUT) -> Iterator[bytes]:
    """``argv`` as a filter: ``data`` on its stdin, its stdout yielded chunk by chunk as it
    comes. Closing the generator early (a reader that has had enough) kills the tool's
    process group; so does the timeout (then ImageUnreadableError). A tool that fails before
    any output is an ImageFormatError with its last stderr line."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                start_new_session=True,
                preexec_fn=_confine_child(privileged=False),
            )
        except (OSError, subprocess.SubprocessError) as err:
            raise ImageUnreadableError(f"{what}: cannot run {argv[0]}: {err}") from err
        yield from _filter(process, data, errors, what=what, timeout=timeout)


def _filter(process: subprocess.Popen[bytes], data: memoryview, errors: IO[bytes], *,
            what: str, timeout: float) -> Iterator[bytes]:
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    name = str(process.args[0]) if isinstance(process.args, list) else "tool"

    def feed() -> None:
        with contextlib.suppress(OSError, ValueError):
            for start in range(0, len(data), CHUNK):
                stdin.write(data[start:start + CHUNK])
        with contextlib.suppress(OSError, ValueError):
            stdin.close()

    writer = threading.Thread(target=feed, name=f"{name}-stdin", daemon=True)
    writer.start()
    deadline = time.monotonic() + timeout
    produced = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise ImageUnreadableError(f"{what}: {name} took over {timeout:g} s; killed")
            chunk = os.read(stdout.fileno(), CHUNK)
            if not chunk:
                break
            produced += len(chunk)
            yield chunk
        status = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        if status != 0 and not produced:
            errors.seek(0)
            lines = errors.read(65536).decode(errors="replace").strip().splitlines()
            raise ImageFormatError(f"{what}: {lines[-1] if lines else 'no output'}")
    except subprocess.TimeoutExpired as expired:
        raise ImageUnreadableError(f"{what}: {name} took over {timeout:g} s; killed") \
            from expired
    finally:
        _kill_group(process)
        stdout.close()
        writer.join()


class ImageHandle:
    """A guest image opened read-only by this process and handed to confined tools as
    ``/proc/self/fd/N`` (see the module docstring for how, and :attr:`confinement`)."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise ImageUnreadableError(f"{path}: cannot read: {err.strerror or err}") from err
        self.child_fd = self.fd
        self.privileged = False
        self.confinement = "uid nobody, own network/IPC/UTS namespaces"
        fds = [self.fd]
        if os.geteuid() != 0:
            self.confinement = "as the invoking (unprivileged) user, no new privileges"
        else:
            st = os.fstat(self.fd)
            try:
                self.child_fd = _idmapped_clone(self.fd, st.st_uid, st.st_gid)
                fds.append(self.child_fd)
                self.confinement += ", the image through a read-only idmapped mount"
            except OSError as err:
                if not (stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH):
                    self.privileged = True
                    self.confinement = (
                        f"as root without capabilities in own network/IPC/UTS namespaces: the "
                        f"image could not be handed to an unprivileged user "
                        f"({err.strerror or err})")
        if LANDLOCK_ABI:
            self.confinement += (f", Landlocked (ABI {LANDLOCK_ABI}): it writes no file and "
                                 "signals no process outside")
        self._finalizer = weakref.finalize(self, _close_all, tuple(fds))

    @property
    def child_path(self) -> str:
        """The image's name inside the confined tool."""
        return f"/proc/self/fd/{self.child_fd}"

    def close(self) -> None:
        self._finalizer()


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _idmapped_clone(fd: int, uid: int, gid: int) -> int:
    """A detached read-only bind mount of the open file ``fd`` on which its owner and group
    are 65534 (open_tree(2) + mount_setattr(2) MOUNT_ATTR_IDMAP); its inheritable descriptor."""
    userns = _user_namespace(uid, gid)
    try:
        tree = _syscall(_SYS_OPEN_TREE, fd, b"", _OPEN_TREE_CLONE | _AT_EMPTY_PATH)
        if tree < 0:
            raise OSError(ctypes.get_errno(), f"open_tree: {os.strerror(ctypes.get_errno())}")
        flags = (_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID
                 | _MOUNT_ATTR_NODEV | _MOUNT_ATTR_NOEXEC)
        attr = ctypes.create_string_buffer(struct.pack("=QQQQ", flags, 0, 0, userns), 32)
        if _syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, attr, 32) != 0:
            errno = ctypes.get_errno()
            os.close(tree)
            raise OSError(errno, f"mount_setattr: {os.strerror(errno)}")
    finally:
        os.close(userns)
    os.set_inheritable(tree, False)
    return int(tree)


def _user_namespace(uid: int, gid: int) -> int:
    """A descriptor of a new user namespace mapping ``uid``/``gid`` to 65534 (held by a
    short-lived ``cat`` that unshare(2)d it before exec)."""

    def enter() -> None:
        if _unshare(_CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")

    try:
        holder = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  preexec_fn=enter, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise OSError(getattr(err, "errno", None) or 1, f"user namespace: {err}") from err
    try:
        proc = Path(f"/proc/{holder.pid}")
        (proc / "uid_map").write_text(f"{uid} {NOBODY} 1\n")
        (proc / "setgroups").write_text("deny\n")
        (proc / "gid_map").write_text(f"{gid} {NOBODY} 1\n")
        return os.open(proc / "ns" / "user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()
