"""Make an installed Linux guest boot on PV (virtio) disks, as virt-v2v's convert_linux does.

On the guest's root filesystem (ext2/3/4, in a raw disk image; see SPEC.md, "Moving an
installed Linux guest to PV disks"):

1. add ``virtio virtio_ring virtio_pci virtio_blk virtio_net`` (in this order) to
   ``/etc/initramfs-tools/modules`` and rebuild every initramfs with the guest's own
   ``update-initramfs -u -k all``, run in a chroot of an extracted copy of the filesystem;
2. rewrite kernel device names (``/dev/hda1``, ``/dev/sda1``, ``/dev/xvda1``, ``/dev/vda1``)
   that name a partition of this disk to ``UUID=`` in ``/etc/fstab``, ``/etc/crypttab`` and
   the bootloader configs (``root=``/``resume=`` in grub.cfg, /etc/default/grub, menu.lst,
   extlinux.conf, syslinux.cfg); ``GRUB_DISABLE_LINUX_UUID=true`` is turned off so a later
   update-grub keeps the UUIDs;
3. keep the previous version of every file it changes as ``<file>.pre-pvhvm``.

Atomicity: the work is done on a sparse (reflinked where possible) copy of the image next to
it (``.<name>.pvhvm-prepare*``: the root filesystem alone, its extracted tree, then the image
copy); ``e2fsck -fp`` first replays the journal of a guest that was
destroyed rather than shut down (debugfs never does); the copy replaces the image by
``rename(2)`` only after every write succeeded and ``e2fsck -fn`` finds the filesystem clean.
An interruption leaves the original untouched (and a stale copy, removed by the next run).
Files go back into the ext4 image with ``debugfs -w`` (``rm`` + ``write`` +
``set_inode_field`` for mode, owner and times): nothing is mounted.

Why a chroot and not libguestfs: as root on a Debian host a chroot runs the guest's own
update-initramfs in seconds; libguestfs would boot its appliance under TCG here for the same
job (see benchmarks/installed-guest/README.md). dracut and mkinitrd guests are refused with
a message (not built yet).

Errors::

    PvhvmError
    └── PrepareError                 the image cannot be prepared (unreadable, unsupported)
        └── ImageInUseError          a running domain uses the image
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvhvm.errors import PvhvmError
from pvhvm.inspect.errors import InspectError
from pvhvm.inspect.etcfiles import DeviceName, Naming, classify
from pvhvm.inspect.extfs import ExtFilesystem
from pvhvm.inspect.partitions import probe_signature, read_table
from pvhvm.runtime.state import StateStore

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: virt-v2v's list, in its order (the order sets vdX numbering when all are modules)
VIRTIO_MODULES = ("virtio", "virtio_ring", "virtio_pci", "virtio_blk", "virtio_net")
BACKUP_SUFFIX = ".pre-pvhvm"
INITRAMFS_MODULES_FILE = "/etc/initramfs-tools/modules"
FSTAB = "/etc/fstab"
CRYPTTAB = "/etc/crypttab"
DEFAULT_GRUB = "/etc/default/grub"
BOOTLOADER_FILES = (
    "/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub/menu.lst",
    "/boot/extlinux/extlinux.conf", "/boot/syslinux/syslinux.cfg", "/extlinux.conf",
)
#: parts of the extracted tree never written back
_SCRATCH = ("dev", "proc", "sys", "run", "tmp")
_KERNEL_ARG = re.compile(r"(?<![\w.-])(root|resume)=(/dev/(?:hd|sd|xvd|vd)[a-z]+[0-9]*)")
_DISABLE_UUID = re.compile(r"^(\s*)(GRUB_DISABLE_LINUX_UUID\s*=\s*[\"']?true[\"']?)\s*$", re.M)


class PrepareError(PvhvmError):
    """The image cannot be prepared."""


class ImageInUseError(PrepareError):
    """A running domain uses the image."""


@dataclass(frozen=True)
class Change:
    """One change to one guest file (``kind``: initramfs, fstab, crypttab, bootloader)."""

    path: str
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.path}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "detail": self.detail}


@dataclass
class PrepareResult:
    """What prepare changed (or, with ``dry_run``, would change), and how long each step took."""

    image: Path
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: files written back into the image (rebuilt initramfs images and backups included)
    written: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image), "dry_run": self.dry_run,
            "changes": [c.to_json() for c in self.changes], "notes": self.notes,
            "written": self.written, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class RootFilesystem:
    """Where the guest's root filesystem is: byte offset and size, its partition, the disk's
    partitions' UUIDs by number (0: the whole disk is the filesystem)."""

    offset: int
    partition: int
    uuids: dict[int, str]
    size: int = 0


# -- pure rewriting -------------------------------------------------------------------------

Resolver = Callable[[DeviceName], str | None]


def rewrite_fstab(text: str, resolve: Resolver, path: str = FSTAB) -> tuple[str, list[Change]]:
    """fstab(5) with the device field of each kernel-named entry replaced by ``UUID=``."""
    return _rewrite_field(text, 0, resolve, path, "fstab")


def rewrite_crypttab(text: str, resolve: Resolver,
                     path: str = CRYPTTAB) -> tuple[str, list[Change]]:
    """crypttab(5): the second field is the encrypted device."""
    return _rewrite_field(text, 1, resolve, path, "crypttab")


def _rewrite_field(text: str, index: int, resolve: Resolver, path: str,
                   kind: str) -> tuple[str, list[Change]]:
    out: list[str] = []
    changes: list[Change] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        body = line.split("#", 1)[0]
        fields = body.split()
        if len(fields) > index:
            device = classify(fields[index])
            replacement = resolve(device) if device.naming is Naming.KERNEL_NAME else None
            if replacement is not None:
                spans = [m.span() for m in re.finditer(r"\S+", body)]
                start, end = spans[index]
                line = line[:start] + replacement + line[end:]
                changes.append(Change(path, kind,
                                      f"line {number}: {fields[index]} -> {replacement}"))
        out.append(line)
    return "".join(out), changes


def rewrite_kernel_args(text: str, resolve: Resolver, path: str) -> tuple[str, list[Change]]:
    """``root=``/``resume=`` naming a kernel device, in any bootloader config or shell file."""
    changes: list[Change] = []

    def replace(match: re.Match[str]) -> str:
        replacement = resolve(classify(match.group(2)))
        if replacement is None:
            return match.group(0)
        number = text.count("\n", 0, match.start()) + 1
        changes.append(Change(path, "bootloader",
                              f"line {number}: {match.group(0)} -> {match.group(1)}="
                              f"{replacement}"))
        return f"{match.group(1)}={replacement}"

    return _KERNEL_ARG.sub(replace, text), changes


def rewrite_default_grub(text: str, resolve: Resolver) -> tuple[str, list[Change]]:
    """/etc/default/grub: kernel arguments, and GRUB_DISABLE_LINUX_UUID=true commented out."""
    text, changes = rewrite_kernel_args(text, resolve, DEFAULT_GRUB)

    def disable(match: re.Match[str]) -> str:
        number = text.count("\n", 0, match.start()) + 1
        changes.append(Change(DEFAULT_GRUB, "bootloader",
                              f"line {number}: {match.group(2)} commented out (update-grub "
                              "then writes root=UUID=)"))
        return f"{match.group(1)}#{match.group(2)}  # pvhvm guest prepare"

    return _DISABLE_UUID.sub(disable, text), changes


def add_initramfs_modules(text: str) -> tuple[str, list[str]]:
    """initramfs-tools' modules file with the virtio modules missing from it appended."""
    present = {line.split()[0].replace("-", "_") for line in text.splitlines()
               if line.strip() and not line.lstrip().startswith("#")}
    missing = [name for name in VIRTIO_MODULES if name not in present]
    if not missing:
        return text, []
    if text and not text.endswith("\n"):
        text += "\n"
    text += "# PV (virtio) drivers, added by pvhvm guest prepare\n"
    text += "".join(f"{name}\n" for name in missing)
    return text, missing


# -- the image ------------------------------------------------------------------------------


def find_root(image: Path) -> RootFilesystem:
    """The ext filesystem of ``image`` holding /etc/fstab, and the UUIDs of all partitions."""
    try:
        size = image.stat().st_size
        with open(image, "rb") as stream:
            head = stream.read(4)
            if head == b"QFI\xfb":
                raise PrepareError(f"{image}: a qcow2 image; prepare works on raw images "
                                   "(qemu-img convert -O raw first)")
            table = read_table(stream, size)
            places = ([(p.number, p.start) for p in table.partitions]
                      if table.partitions else [(0, 0)])
            sizes = {p.number: p.size for p in table.partitions} or {0: size}
            uuids: dict[int, str] = {}
            kinds: dict[int, str] = {}
            for number, start in places:
                signature = probe_signature(stream, start)
                if signature is not None:
                    uuids[number] = signature.uuid
                    kinds[number] = signature.type
    except OSError as err:
        raise PrepareError(f"cannot read {image}: {err}") from err
    offsets = dict(places)
    for number, kind in kinds.items():
        if not kind.startswith("ext"):
            continue
        try:
            if ExtFilesystem(image, offsets[number]).read_text(FSTAB) is not None:
                return RootFilesystem(offsets[number], number, uuids, sizes[number])
        except InspectError as err:
            raise PrepareError(str(err)) from err
    raise PrepareError(f"{image}: no ext2/3/4 filesystem with {FSTAB} (a Linux root) found")


def resolver_for(root: RootFilesystem, root_spec: str | None) -> Resolver:
    """Rewrite names on the root's disk: ``<disk><n>`` → ``UUID=`` of partition n.

    The root's disk is the one the guest's fstab (or root=) names for ``/``; other disks are
    left as they are (their images are not read here).
    """
    disk = ""
    if root_spec is not None:
        device = classify(root_spec)
        if device.naming is Naming.KERNEL_NAME:
            disk = device.disk

    def resolve(device: DeviceName) -> str | None:
        if device.naming is not Naming.KERNEL_NAME or device.disk != disk:
            return None
        uuid = root.uuids.get(device.partition or 0)
        return f"UUID={uuid}" if uuid else None

    return resolve


def root_spec_of(fstab: str | None, bootloader: str | None) -> str | None:
    """The device the guest mounts as ``/``: fstab's, else the first ``root=``."""
    for line in (fstab or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1] == "/":
            return fields[0]
    match = re.search(r"(?<![\w.-])root=(\S+)", bootloader or "")
    return match.group(1) if match else None


def images_in_use(image: Path, store: StateStore | None = None) -> list[str]:
    """Names of domains in the state directory whose plan has ``image`` as a disk target."""
    wanted = image.resolve()
    users = []
    for record in (store or StateStore()).records():
        for disk in record.plan.get("disks", []):
            target = disk.get("target") if isinstance(disk, dict) else None
            if target and Path(target).resolve() == wanted:
                users.append(record.name)
    return users


@dataclass
class _Plan:
    """The text edits to make, computed from the image's current files."""

    edits: dict[str, tuple[str, str]] = field(default_factory=dict)  # path → (old, new)
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)


def plan_changes(fs: ExtFilesystem, root: RootFilesystem) -> _Plan:
    """Read the guest's files and decide every text edit (no writes)."""
    plan = _Plan()
    if not fs.exists("/usr/sbin/update-initramfs"):
        tool = "dracut" if fs.exists("/usr/bin/dracut") else "no initramfs-tools"
        raise PrepareError(f"{fs.image}: the guest uses {tool}; pvhvm guest prepare rebuilds "
                           "initramfs-tools initramfs images only (for now)")
    boot = fs.listdir("/boot") or {}
    plan.kernels = sorted(n[len("vmlinuz-"):] for n in boot if n.startswith("vmlinuz-")
                          and not n.endswith(BACKUP_SUFFIX))
    if not plan.kernels:
        raise PrepareError(f"{fs.image}: no /boot/vmlinuz-* in the guest's root filesystem")
    fstab = fs.read_text(FSTAB)
    bootloaders = {p: t for p in BOOTLOADER_FILES if (t := fs.read_text(p)) is not None}
    spec = root_spec_of(fstab, next(iter(bootloaders.values()), None))
    resolve = resolver_for(root, spec)
    for line in (fstab or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1] == "/boot":
            raise PrepareError(f"{fs.image}: /boot is a separate filesystem ({fields[0]}); "
                               "not supported yet")

    def edit(path: str, old: str, new: str, changes: list[Change]) -> None:
        if new != old:
            plan.edits[path] = (old, new)
            plan.changes += changes

    modules = fs.read_text(INITRAMFS_MODULES_FILE) or ""
    new_modules, added = add_initramfs_modules(modules)
    if added:
        edit(INITRAMFS_MODULES_FILE, modules, new_modules, [Change(
            INITRAMFS_MODULES_FILE, "initramfs", f"add {' '.join(added)}")])
    for release in plan.kernels:
        plan.changes.append(Change(
            f"/boot/initrd.img-{release}", "initramfs",
            "rebuild with the guest's update-initramfs -u -k all"
            + (f" (adds {', '.join(added)})" if added else "")))
    if fstab is not None:
        edit(FSTAB, fstab, *rewrite_fstab(fstab, resolve))
    crypttab = fs.read_text(CRYPTTAB)
    if crypttab is not None:
        edit(CRYPTTAB, crypttab, *rewrite_crypttab(crypttab, resolve))
    default_grub = fs.read_text(DEFAULT_GRUB)
    if default_grub is not None:
        edit(DEFAULT_GRUB, default_grub, *rewrite_default_grub(default_grub, resolve))
    for path, text in bootloaders.items():
        edit(path, text, *rewrite_kernel_args(text, resolve, path))
    for listed in (fstab, crypttab):
        for line in (listed or "").splitlines():
            fields = line.split("#", 1)[0].split()
            for token in fields[:2]:
                device = classify(token)
                if device.naming is Naming.KERNEL_NAME and resolve(device) is None:
                    plan.notes.append(f"{token} is not on the root's disk: left as it is")
    return plan


# -- extraction, chroot, write-back ---------------------------------------------------------


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    log.debug("run %s", argv)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    except OSError as err:
        raise PrepareError(f"cannot run {argv[0]}: {err}") from err
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise PrepareError(f"{what} failed (exit status {done.returncode}): {tail}")
    return done.stdout


def _debugfs() -> str:
    tool = shutil.which("debugfs") or shutil.which("/sbin/debugfs")
    if tool is None:
        raise PrepareError("debugfs (e2fsprogs) is not installed")
    return tool


def _quote(path: str) -> str:
    if '"' in path or "\n" in path:
        raise PrepareError(f"cannot handle the file name {path!r}")
    return f'"{path}"'


def extract(device: str, destination: Path) -> None:
    """Copy the whole filesystem out with debugfs ``rdump`` (owners, modes, symlinks)."""
    listing = _run([_debugfs(), "-c", "-R", "ls -p /", device], "debugfs ls")
    names = []
    for line in listing.splitlines():
        fields = line.split("/")
        if len(fields) >= 7 and fields[1].isdigit():
            name = "/".join(fields[5:-2])
            if name not in (".", "..", "lost+found"):
                names.append(name)
    script = "".join(f"rdump {_quote('/' + n)} {_quote(str(destination))}\n" for n in names)
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as commands:
        commands.write(script)
        commands.flush()
        _run([_debugfs(), "-c", "-f", commands.name, device], "debugfs rdump")
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8),
                               ("urandom", 1, 9)):
        node = destination / "dev" / name
        node.parent.mkdir(exist_ok=True)
        if not node.exists():
            os.mknod(node, 0o20666, os.makedev(major, minor))


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """path → (size, mtime_ns, mode) of every regular file and symlink outside scratch dirs."""
    found: dict[str, tuple[int, int, int]] = {}
    for top in root.iterdir():
        if top.name in _SCRATCH:
            continue
        if top.is_symlink() or top.is_file():
            st = top.lstat()
            found["/" + top.name] = (st.st_size, st.st_mtime_ns, st.st_mode)
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = Path(dirpath) / name
                st = path.lstat()
                found["/" + str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                                           st.st_mode)
    return found


def write_back(device: str, root: Path, paths: list[str]) -> None:
    """Write regular files ``paths`` of the extracted tree into the filesystem (debugfs -w)."""
    lines = []
    for path in paths:
        host = root / path.lstrip("/")
        st = host.lstat()
        if not host.is_file() or host.is_symlink():
            raise PrepareError(f"cannot write back {path}: not a regular file")
        parent, name = os.path.split(path)
        lines += [
            f"cd {_quote(parent or '/')}",
            f"rm {_quote(name)}",
            f"write {_quote(str(host))} {_quote(name)}",
            f"set_inode_field {_quote(name)} mode 0{st.st_mode:o}",
            f"set_inode_field {_quote(name)} uid {st.st_uid}",
            f"set_inode_field {_quote(name)} gid {st.st_gid}",
            f"set_inode_field {_quote(name)} mtime @{int(st.st_mtime)}",
        ]
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as commands:
        commands.write("\n".join(lines) + "\n")
        commands.flush()
        done = subprocess.run([_debugfs(), "-w", "-f", commands.name, device],
                              capture_output=True, text=True, check=False)
    problems = [line for line in done.stderr.splitlines()
                if line.strip() and not line.startswith("debugfs ")
                and "File not found by ext2_lookup" not in line]
    if done.returncode != 0 or problems:
        raise PrepareError(f"debugfs -w failed: {' | '.join(problems[-4:]) or done.returncode}")


def _chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


@contextlib.contextmanager
def _exclusive(image: Path) -> Iterator[None]:
    """One prepare of an image at a time (flock on the image itself)."""
    fd = os.open(image, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ImageInUseError(f"{image}: another pvhvm guest prepare is working on it") \
                from err
        yield
    finally:
        os.close(fd)


def prepare_image(image: Path, *, dry_run: bool = False, progress: Progress | None = None,
                  store: StateStore | None = None) -> PrepareResult:
    """Prepare the guest in raw disk ``image`` for PV disks (see the module docstring)."""
    say = progress or (lambda message: log.info("%s", message))
    result = PrepareResult(image, dry_run)
    started = time.monotonic()
    if not image.is_file():
        raise PrepareError(f"{image}: no such image file")
    users = images_in_use(image, store)
    if users:
        raise ImageInUseError(f"{image} is in use by running domain {', '.join(users)}; "
                              "shut it down first")
    root = find_root(image)
    if dry_run:
        plan = _plan(image, root)
        result.changes, result.notes = plan.changes, plan.notes
        if needs_recovery(image, root):
            result.notes.append("the filesystem's journal needs recovery (the guest did not "
                                "shut down cleanly): prepare replays it first")
        result.seconds["read"] = time.monotonic() - started
        return result
    if os.geteuid() != 0:
        raise PrepareError("pvhvm guest prepare needs root (chroot into the guest's files)")
    work_image = image.with_name(f".{image.name}.pvhvm-prepare")
    work_fs = image.with_name(f".{image.name}.pvhvm-prepare.rootfs")
    work_tree = image.with_name(f".{image.name}.pvhvm-prepare.tree")
    with _exclusive(image):
        try:
            for stale in (work_image, work_fs):
                stale.unlink(missing_ok=True)
            shutil.rmtree(work_tree, ignore_errors=True)
            _prepare_filesystem(image, work_fs, work_tree, root, result, say)
            mark = time.monotonic()
            say(f"writing the prepared filesystem into a copy of {image.name}")
            _run(["cp", "--sparse=always", "--reflink=auto", str(image), str(work_image)],
                 "cp")
            splice(work_fs, work_image, root.offset)
            _timed(result, "commit", mark)
            os.replace(work_image, image)
        finally:
            for scratch in (work_image, work_fs):
                scratch.unlink(missing_ok=True)
            shutil.rmtree(work_tree, ignore_errors=True)
    result.seconds["total"] = time.monotonic() - started
    return result


def extract_range(image: Path, target: Path, offset: int, size: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``image`` into a new sparse file ``target``."""
    block = 1 << 20
    zero = bytes(block)
    with open(image, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        src.seek(offset)
        done = 0
        while done < size:
            chunk = src.read(min(block, size - done))
            if not chunk:
                break
            if chunk != zero[:len(chunk)]:
                dst.seek(done)
                dst.write(chunk)
            done += len(chunk)


def splice(source: Path, image: Path, offset: int) -> None:
    """Write ``source`` into ``image`` at ``offset``: only the MiB blocks that differ, so the
    copy stays as sparse as the original; then fsync."""
    block = 1 << 20
    with open(source, "rb") as src, open(image, "r+b") as dst:
        position = 0
        while chunk := src.read(block):
            dst.seek(offset + position)
            if dst.read(len(chunk)) != chunk:
                dst.seek(offset + position)
                dst.write(chunk)
            position += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def _plan(image: Path, root: RootFilesystem) -> _Plan:
    try:
        return plan_changes(ExtFilesystem(image, root.offset), root)
    except InspectError as err:
        raise PrepareError(str(err)) from err


def needs_recovery(image: Path, root: RootFilesystem) -> bool:
    """Whether the ext superblock says the journal must be replayed (incompat 0x4)."""
    with open(image, "rb") as stream:
        stream.seek(root.offset + 1024 + 96)
        incompat = int.from_bytes(stream.read(4), "little")
    return bool(incompat & 0x4)


def recover(device: str) -> bool:
    """``e2fsck -fp``: replay the journal of a guest that was not shut down, fix what is
    safe; anything worse is the user's to decide (exit status 4 and up)."""
    done = subprocess.run(["e2fsck", "-fp", device], capture_output=True, text=True,
                          check=False)
    if done.returncode >= 4:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise PrepareError(f"the guest's root filesystem has errors e2fsck -p will not fix "
                           f"(run e2fsck on it first): {tail}")
    return done.returncode != 0


def _timed(result: PrepareResult, step: str, started: float) -> float:
    now = time.monotonic()
    result.seconds[step] = now - started
    return now


def _prepare_filesystem(image: Path, work_fs: Path, tree: Path, root: RootFilesystem,
                        result: PrepareResult, say: Progress) -> None:
    """All the work, on a copy of the root filesystem alone (e2fsck and debugfs then need no
    offset: e2fsck loses ``?offset=`` when it re-opens a device after a journal replay)."""
    mark = time.monotonic()
    say("copying the root filesystem out of the image")
    extract_range(image, work_fs, root.offset, root.size)
    mark = _timed(result, "copy", mark)
    device = str(work_fs)
    say("e2fsck -fp (replays the journal if the guest did not shut down)")
    repaired = recover(device)
    mark = _timed(result, "fsck-before", mark)
    plan = _plan(work_fs, RootFilesystem(0, root.partition, root.uuids, root.size))
    result.changes, result.notes = plan.changes, plan.notes
    if repaired:
        result.notes.append("e2fsck -p replayed the journal or fixed the filesystem first")
    mark = _timed(result, "read", mark)
    tree.mkdir()
    say("extracting the guest's files (debugfs rdump)")
    extract(device, tree)
    mark = _timed(result, "extract", mark)
    before = _snapshot(tree)
    for path, (_old, new) in plan.edits.items():
        host = tree / path.lstrip("/")
        backup = host.with_name(host.name + BACKUP_SUFFIX)
        if host.exists() and not backup.exists():  # a new file has nothing to keep
            shutil.copy2(host, backup)
        mode = host.stat().st_mode if host.exists() else 0o100644
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(new)
        host.chmod(mode & 0o7777)
    for release in plan.kernels:
        initrd = tree / "boot" / f"initrd.img-{release}"
        backup = initrd.with_name(initrd.name + BACKUP_SUFFIX)
        if initrd.is_file() and not backup.exists():
            shutil.copy2(initrd, backup)
    say("update-initramfs -u -k all in the guest (chroot)")
    _run(["chroot", str(tree), "update-initramfs", "-u", "-k", "all"],
         "the guest's update-initramfs", env=_chroot_env())
    mark = _timed(result, "update-initramfs", mark)
    after = _snapshot(tree)
    changed = sorted(p for p, st in after.items() if before.get(p) != st
                     and not Path(tree / p.lstrip("/")).is_symlink())
    say(f"writing {len(changed)} files back (debugfs -w)")
    write_back(device, tree, changed)
    result.written = changed
    mark = _timed(result, "write-back", mark)
    say("e2fsck -fn")
    _run(["e2fsck", "-fn", device], "e2fsck -fn on the prepared filesystem")
    _timed(result, "fsck-after", mark)
