"""Make an installed Linux guest boot on PV (virtio) disks, as virt-v2v's convert_linux does.

Everything that reads or writes the guest's files or runs its programs happens inside the
libguestfs appliance VM (:mod:`pvhvm.guest.appliance`; issue 17): the guest's filesystems are
mounted there as its fstab says (ext2/3/4, XFS, btrfs, LVM, a separate /boot: what the
appliance has tools for) and every guest path is resolved inside the guest. By default no
guest program runs at all. Steps (SPEC.md, "Moving an installed Linux guest to PV disks"):

1. add ``virtio virtio_ring virtio_pci virtio_blk virtio_net`` (in this order) to
   ``/etc/initramfs-tools/modules``, or for a dracut guest to
   ``/etc/dracut.conf.d/90-pvhvm-virtio.conf`` (``add_drivers+=``), so that the guest's own
   next rebuild keeps them; then, for each kernel, append to its initramfs an archive with
   ``virtio_pci``, ``virtio_blk`` and what the guest's modules.dep says they need, and kmod's
   index over its old and new modules (:mod:`.initrd_append`; the kernel unpacks
   concatenated archives in order). With ``regenerate`` (``--regenerate-initramfs``) the
   guest's own ``update-initramfs -u -k all`` (with /proc, /sys and /dev, which
   ``MODULES=dep`` needs) or ``dracut -f IMAGE KVER`` per kernel (as virt-v2v) rebuilds them
   instead, in the appliance: minutes under TCG;
2. rewrite kernel device names (``/dev/hda1``, ``/dev/sda1``, ``/dev/xvda1``, ``/dev/vda1``)
   that name a partition of this disk to ``UUID=`` in ``/etc/fstab``, ``/etc/crypttab`` and
   the bootloader configs (``root=``/``resume=`` in grub.cfg, /etc/default/grub, menu.lst,
   extlinux.conf, syslinux.cfg); ``GRUB_DISABLE_LINUX_UUID=true`` is turned off so a later
   update-grub keeps the UUIDs;
3. initramfs-tools' ``conf.d/*`` ``RESUME=`` the same way; a partition with no filesystem UUID
   (a plain dm-crypt swap in crypttab) is named by its ``PARTUUID=`` (MBR disk id and number),
   which holds on IDE and virtio alike, as UUID= does;
4. a Xen guest's console: ``console=hvc0``/``xvc0`` → ``console=ttyS0,115200`` in every boot
   loader config and /etc/default/grub, inittab getty lines, and systemd's
   ``getty.target.wants/serial-getty@hvc0.service`` link replaced by one for ttyS0;
5. keep the previous version of every file it changes as ``<file>.pre-pvhvm``.

grub.cfg, menu.lst and extlinux.conf are edited in place, never regenerated: grub-mkconfig run in
the appliance names the appliance's disks where the guest has ``GRUB_DISABLE_LINUX_UUID=true``
(virt-v2v's failure, SPEC.md), and where it would name them right (UUIDs, LVM) the in-place edit
gives the same kernel arguments without running more guest code.

A file prepare edits that is a symlink is followed inside the guest; one that leads nowhere in
the guest (a link to a host path, say) is left alone, with a note.

Atomicity: the work is done on a copy of the image in a private directory (``mkdtemp``: mode
0700, a random name, on the image's filesystem so that the final ``rename(2)`` is atomic); the
copy gets the image's mode and owner and replaces the image only after the appliance shut down
cleanly (the guest's filesystems unmounted: a journal the guest left dirty is replayed by the
mount). On any failure or timeout the appliance is killed and the directory removed: nothing
is left. mkinitrd (SUSE, old Red Hat) guests are refused with a message.

Errors::

    PvhvmError
    ├── PrepareError                 the image cannot be prepared (unreadable, unsupported)
    │   └── ImageInUseError          a running domain uses the image
    └── ApplianceError               (pvhvm.guest.appliance) an appliance step failed
        └── ApplianceTimeout         ... or passed its deadline
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pvhvm.errors import PvhvmError, printable
from pvhvm.guest.appliance import Appliance, GuestOS, Timeouts
from pvhvm.guest.initrd_append import (
    INDEX_INPUTS,
    MODULE_SUFFIX,
    ROOT_ON_VIRTIO,
    ModuleDepError,
    appended_archive,
    builtin_names,
    closure,
    module_name,
    modules_in_archive,
    parse_modules_dep,
)
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.deep import appliance_report
from pvhvm.inspect.errors import InspectError
from pvhvm.inspect.etcfiles import DeviceName, Naming, classify
from pvhvm.inspect.image import MAX_INITRAMFS, ImageReport
from pvhvm.runtime.state import StateStore

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
#: what the caller makes of the prepared guest's report (``guest check --deep``'s verdict)
Verify = Callable[[ImageReport], dict[str, Any]]

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
UPDATE_INITRAMFS = ("/usr/sbin/update-initramfs", "/sbin/update-initramfs")
DRACUT = ("/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/bin/dracut")
#: dracut.conf(5): the drivers in every image dracut builds from now on (hostonly or not)
DRACUT_CONF = "/etc/dracut.conf.d/90-pvhvm-virtio.conf"
DRACUT_CONF_TEXT = ("# PV (virtio) drivers, added by pvhvm guest prepare\n"
                    f'add_drivers+=" {" ".join(VIRTIO_MODULES)} "\n')
#: the largest kernel module read (Debian 12's largest, amdgpu, is 11 MiB)
MAX_MODULE = 64 << 20
#: the work directory's name starts so (then mkdtemp's random part)
WORKDIR_PREFIX = ".pvhvm-prepare."
#: the image copy, before and while the appliance works on it (sparse, reflinked if it can)
COPY_TIMEOUT = 1800.0
RESUME_CONF_DIR = "/etc/initramfs-tools/conf.d"
INITTAB = "/etc/inittab"
GETTY_WANTS = "/etc/systemd/system/getty.target.wants"
SERIAL_GETTY_UNITS = ("/lib/systemd/system/serial-getty@.service",
                      "/usr/lib/systemd/system/serial-getty@.service")
SERIAL_TTY = "ttyS0"
XEN_CONSOLES = ("hvc0", "xvc0")
_RESUME = re.compile(r"^(\s*RESUME\s*=\s*)([\"']?)(\S+?)\2[ \t]*$", re.M)
_XEN_CONSOLE = re.compile(r"(?<![\w.-])console=(?:hvc0|xvc0)(?:,\S*)?")
_XEN_GETTY = re.compile(r"^(?:serial-)?getty@(hvc0|xvc0)\.service$")
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
    #: files written in the guest (rebuilt initramfs images and backups included)
    written: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: how the drivers reached the initramfs: "append" (no guest program ran) or
    #: "regenerate" (the guest's own generator, in the appliance)
    initramfs: str = "append"
    #: what ``verify`` said of the prepared guest, read in the same appliance session
    check: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image), "dry_run": self.dry_run, "initramfs": self.initramfs,
            "changes": [c.to_json() for c in self.changes], "notes": self.notes,
            "written": self.written, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "check": self.check,
        }


@dataclass(frozen=True)
class RootFilesystem:
    """The guest's root filesystem: its device in the appliance, its partition number, and the
    filesystem UUIDs of its disk's partitions by number (0: the whole disk is the
    filesystem)."""

    device: str
    partition: int
    uuids: dict[int, str]
    #: partition number → PARTUUID (MBR: disk id and number; GPT: the entry's GUID), for a
    #: partition that has no filesystem UUID (a plain dm-crypt swap, say)
    partuuids: dict[int, str] = field(default_factory=dict)


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

    return _outside_comments(_KERNEL_ARG, replace, text), changes


def _outside_comments(pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str],
                      text: str) -> str:
    """``pattern.sub(replace, text)`` on the lines that are not ``#`` comments (a comment
    that mentions ``root=/dev/sda1`` says what was, and is left as it is); match offsets
    stay those of ``text``."""
    out: list[str] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("#"):
            out.append(line)
        else:
            out.append(_sub_span(pattern, replace, text, offset, offset + len(line)))
        offset += len(line)
    return "".join(out)


def _sub_span(pattern: re.Pattern[str], replace: Callable[[re.Match[str]], str], text: str,
              start: int, end: int) -> str:
    """``text[start:end]`` with each match of ``pattern`` in it replaced."""
    pieces: list[str] = []
    last = start
    for match in pattern.finditer(text, start, end):
        pieces.append(text[last:match.start()])
        pieces.append(replace(match))
        last = match.end()
    pieces.append(text[last:end])
    return "".join(pieces)


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


def rewrite_resume_conf(text: str, resolve: Resolver, path: str) -> tuple[str, list[Change]]:
    """initramfs-tools' ``conf.d/resume`` (``RESUME=/dev/xvda2``): the device renamed."""
    changes: list[Change] = []

    def replace(match: re.Match[str]) -> str:
        device = classify(match.group(3))
        replacement = resolve(device) if device.naming is Naming.KERNEL_NAME else None
        if replacement is None:
            return match.group(0)
        number = text.count("\n", 0, match.start()) + 1
        changes.append(Change(path, "resume", f"line {number}: RESUME={match.group(3)} -> "
                                              f"RESUME={replacement}"))
        return f"{match.group(1)}{replacement}"

    return _RESUME.sub(replace, text), changes


def rewrite_console(text: str, path: str) -> tuple[str, list[Change]]:
    """Xen's PV console (``console=hvc0``, ``xvc0``) on a kernel command line → ttyS0, the
    serial port an HVM guest has (virt-v2v moves it the same way)."""
    changes: list[Change] = []

    def replace(match: re.Match[str]) -> str:
        number = text.count("\n", 0, match.start()) + 1
        changes.append(Change(path, "console", f"line {number}: {match.group(0)} -> "
                                               f"console={SERIAL_TTY},115200"))
        return f"console={SERIAL_TTY},115200"

    return _outside_comments(_XEN_CONSOLE, replace, text), changes


def rewrite_inittab(text: str, path: str = INITTAB) -> tuple[str, list[Change]]:
    """inittab(5) getty lines on hvc0/xvc0 moved to ttyS0."""
    out: list[str] = []
    changes: list[Change] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        fields = line.split(":", 3)
        if (len(fields) == 4 and "getty" in fields[3] and not line.lstrip().startswith("#")
                and re.search(r"\b(hvc0|xvc0)\b", fields[3])):
            new = re.sub(r"\b(hvc0|xvc0)\b", SERIAL_TTY, fields[3])
            ident = SERIAL_TTY if fields[0] in XEN_CONSOLES else fields[0]
            line = ":".join((ident, fields[1], fields[2], new))
            changes.append(Change(path, "console", f"line {number}: getty on {SERIAL_TTY} "
                                                   "instead of Xen's console"))
        out.append(line)
    return "".join(out), changes


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


# -- the guest, read through the appliance --------------------------------------------------


class GuestFiles(Protocol):
    """Read access to a guest's files, every path resolved inside the guest."""

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str] | None: ...

    def read_text(self, path: str) -> str | None: ...


def resolver_for(root: RootFilesystem, root_spec: str | None,
                 named: tuple[str, ...] = ()) -> Resolver:
    """Rewrite names on the root's disk: ``<disk><n>`` → ``UUID=`` of partition n (its
    ``PARTUUID=`` when it has no filesystem UUID: a plain dm-crypt swap).

    The root's disk is the one the guest's fstab (or root=) names for ``/``; when the root is
    named otherwise (LVM, UUID=), the disk is the first disk of its kind among the kernel
    names the guest uses (``sda``, ``hda``, ``xvda``, ``vda``: the one it booted from, its
    /boot). Other disks are left as they are (their images are not read here).
    """
    disks: set[str] = set()
    if root_spec is not None:
        device = classify(root_spec)
        if device.naming is Naming.KERNEL_NAME:
            disks = {device.disk}
    if not disks:
        disks = {d.disk for d in map(classify, named)
                 if d.naming is Naming.KERNEL_NAME and d.disk.endswith("da")}

    def resolve(device: DeviceName) -> str | None:
        if device.naming is not Naming.KERNEL_NAME or device.disk not in disks:
            return None
        uuid = root.uuids.get(device.partition or 0)
        if uuid:
            return f"UUID={uuid}"
        partuuid = root.partuuids.get(device.partition or 0)
        return f"PARTUUID={partuuid}" if partuuid else None

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
    """The text edits to make, computed from the guest's current files."""

    edits: dict[str, tuple[str, str]] = field(default_factory=dict)  # path → (old, new)
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    #: kernel release → its initramfs image
    initrds: dict[str, str] = field(default_factory=dict)
    #: the guest's own commands that rebuild them, with what each is called in messages
    commands: list[tuple[list[str], str]] = field(default_factory=list)
    #: symlinks to make (path → target) and to remove (systemd's getty units)
    links: dict[str, str] = field(default_factory=dict)
    unlinks: list[str] = field(default_factory=list)


def plan_changes(fs: GuestFiles, root: RootFilesystem, name: str, *,
                 regenerate: bool = False) -> _Plan:
    """Read the guest's files and decide every text edit (no writes); ``name`` names the
    image in messages. ``regenerate``: the guest's own generator rebuilds each initramfs
    (``plan.commands``); otherwise the drivers are appended to it (:mod:`.initrd_append`)."""
    plan = _Plan()
    update = next((p for p in UPDATE_INITRAMFS if fs.exists(p)), "")
    dracut = next((p for p in DRACUT if fs.exists(p)), "")
    if not update and not dracut:
        raise PrepareError(f"{name}: the guest has neither initramfs-tools nor dracut; pvhvm "
                           "guest prepare rebuilds initramfs images with one of those")
    boot = fs.listdir("/boot") or []
    plan.kernels = sorted(n[len("vmlinuz-"):] for n in boot if n.startswith("vmlinuz-")
                          and not n.endswith(BACKUP_SUFFIX))
    if not plan.kernels:
        raise PrepareError(f"{name}: no /boot/vmlinuz-* in the guest")
    fstab = fs.read_text(FSTAB)
    bootloaders = {p: t for p in BOOTLOADER_FILES if (t := fs.read_text(p)) is not None}
    crypttab = fs.read_text(CRYPTTAB)
    default_grub = fs.read_text(DEFAULT_GRUB)
    resume_confs = {f"{RESUME_CONF_DIR}/{n}": t for n in fs.listdir(RESUME_CONF_DIR) or []
                    if (t := fs.read_text(f"{RESUME_CONF_DIR}/{n}")) is not None}
    spec = root_spec_of(fstab, next(iter(bootloaders.values()), None))
    named = tuple(re.findall(r"/dev/(?:hd|sd|xvd|vd)[a-z]+[0-9]*", "\n".join(
        t or "" for t in (fstab, crypttab, default_grub, *bootloaders.values(),
                          *resume_confs.values()))))
    resolve = resolver_for(root, spec, named)

    def edit(path: str, old: str, new: str, changes: list[Change]) -> None:
        if new != old:
            plan.edits[path] = (old, new)
            plan.changes += changes

    debian = fs.exists("/etc/debian_version")
    for release in plan.kernels:
        names = [f"/boot/initrd.img-{release}", f"/boot/initramfs-{release}.img"]
        if not debian:
            names.reverse()
        plan.initrds[release] = next((n for n in names if n.removeprefix("/boot/") in boot),
                                      names[0])
    if update and (fs.exists("/etc/initramfs-tools") or not dracut):
        added = _plan_initramfs_tools(fs, plan, edit)
        if regenerate:
            plan.commands.append(([update, "-u", "-k", "all"], "update-initramfs"))
        how = "rebuild with the guest's update-initramfs -u -k all"
    else:
        conf = fs.read_text(DRACUT_CONF)
        added = list(VIRTIO_MODULES) if conf != DRACUT_CONF_TEXT else []
        if added:
            edit(DRACUT_CONF, conf or "", DRACUT_CONF_TEXT, [Change(
                DRACUT_CONF, "initramfs", f"add_drivers+= {' '.join(added)}")])
        if regenerate:
            for release in plan.kernels:
                plan.commands.append(([dracut, "-f", plan.initrds[release], release],
                                      "dracut"))
        how = "rebuild with the guest's dracut -f"
    if not regenerate:
        how = (f"add {', '.join(ROOT_ON_VIRTIO)} and what they need in place (an archive "
               "appended, no guest program run)")
        added = []
    for release in plan.kernels:
        plan.changes.append(Change(plan.initrds[release], "initramfs", how + (
            f" (adds {', '.join(added)})" if added else "")))
    if fstab is not None:
        edit(FSTAB, fstab, *rewrite_fstab(fstab, resolve))
    if crypttab is not None:
        edit(CRYPTTAB, crypttab, *rewrite_crypttab(crypttab, resolve))
    if default_grub is not None:
        new, changes = rewrite_default_grub(default_grub, resolve)
        new, more = rewrite_console(new, DEFAULT_GRUB)
        edit(DEFAULT_GRUB, default_grub, new, changes + more)
    for path, text in bootloaders.items():
        new, changes = rewrite_kernel_args(text, resolve, path)
        new, more = rewrite_console(new, path)
        edit(path, text, new, changes + more)
    for path, text in resume_confs.items():
        edit(path, text, *rewrite_resume_conf(text, resolve, path))
    inittab = fs.read_text(INITTAB)
    if inittab is not None:
        edit(INITTAB, inittab, *rewrite_inittab(inittab))
    _plan_gettys(fs, plan)
    for listed in (fstab, crypttab):
        for line in (listed or "").splitlines():
            fields = line.split("#", 1)[0].split()
            for token in fields[:2]:
                device = classify(token)
                if device.naming is Naming.KERNEL_NAME and resolve(device) is None:
                    plan.notes.append(f"{printable(token)} is not on the root's disk: left "
                                      "as it is")
    return plan


def _plan_gettys(fs: GuestFiles, plan: _Plan) -> None:
    """systemd's getty on Xen's console (``serial-getty@hvc0.service`` wanted by
    getty.target) moved to the serial port: that link removed, one for ttyS0 made."""
    wants = fs.listdir(GETTY_WANTS) or []
    xen = [name for name in wants if _XEN_GETTY.match(name)]
    if not xen:
        return
    unit = next((u for u in SERIAL_GETTY_UNITS if fs.exists(u)), SERIAL_GETTY_UNITS[0])
    for name in xen:
        plan.unlinks.append(f"{GETTY_WANTS}/{name}")
        plan.changes.append(Change(f"{GETTY_WANTS}/{name}", "console",
                                   "removed: Xen's console is not there on QEMU"))
    ttys = f"serial-getty@{SERIAL_TTY}.service"
    if ttys not in wants:
        plan.links[f"{GETTY_WANTS}/{ttys}"] = unit
        plan.changes.append(Change(f"{GETTY_WANTS}/{ttys}", "console",
                                   f"added: a getty on {SERIAL_TTY} (-> {unit})"))


def _plan_initramfs_tools(fs: GuestFiles, plan: _Plan,
                          edit: Callable[[str, str, str, list[Change]], None]) -> list[str]:
    """The virtio modules into initramfs-tools' modules file; the ones added."""
    modules = fs.read_text(INITRAMFS_MODULES_FILE)
    if modules is None and fs.exists(INITRAMFS_MODULES_FILE):
        plan.notes.append(f"{INITRAMFS_MODULES_FILE} is not a regular file in the guest: "
                          "left alone")
        return []
    new_modules, added = add_initramfs_modules(modules or "")
    if added:
        edit(INITRAMFS_MODULES_FILE, modules or "", new_modules, [Change(
            INITRAMFS_MODULES_FILE, "initramfs", f"add {' '.join(added)}")])
    return added


def root_filesystem(appliance: Appliance, guest: GuestOS) -> RootFilesystem:
    """The root's device and the UUIDs of its disk's partitions, as the appliance sees them."""
    uuids = appliance.partition_uuids(guest.root)
    match = re.search(r"[0-9]+$", guest.root)
    partition = int(match.group(0)) if match and guest.root.startswith("/dev/sd") else 0
    return RootFilesystem(guest.root, partition, uuids, appliance.partition_partuuids())


# -- doing it -------------------------------------------------------------------------------


def workdir_prefix(image: Path) -> str:
    """``.pvhvm-prepare.NAME.``: mkdtemp adds 8 random characters (no dot) to it."""
    return f"{WORKDIR_PREFIX}{image.name}."


def clear_stale_workdirs(image: Path) -> None:
    """Remove the work directories of earlier prepares of ``image`` that were killed (SIGKILL
    leaves one). Called under :func:`_exclusive`, so none of them is in use; only real
    directories of this uid named exactly as mkdtemp names them for this image are removed
    (rmtree follows no symlink)."""
    prefix = workdir_prefix(image)
    with os.scandir(image.parent) as entries:
        for entry in entries:
            rest = entry.name[len(prefix):]
            if (not entry.name.startswith(prefix) or len(rest) != 8 or "." in rest
                    or not entry.is_dir(follow_symlinks=False)
                    or entry.stat(follow_symlinks=False).st_uid != os.geteuid()):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(image: Path) -> Iterator[None]:
    """One prepare of an image at a time (flock on the image itself)."""
    fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ImageInUseError(f"{image}: another pvhvm guest prepare is working on it") \
                from err
        yield
    finally:
        os.close(fd)


def _timed(result: PrepareResult, step: str, started: float) -> float:
    now = time.monotonic()
    result.seconds[step] = now - started
    return now


def copy_image(image: Path, target: Path, timeout: float = COPY_TIMEOUT) -> None:
    """A sparse (reflinked where the filesystem can) copy of ``image`` at the new name
    ``target``, with the image's mode and owner; ``cp`` runs in its own process group, killed
    at ``timeout``."""
    argv = ["cp", "--sparse=always", "--reflink=auto", "--no-dereference", "--",
            str(image), str(target)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        _out, err = process.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise PrepareError(f"copying {image} took longer than {timeout:.0f} s") from None
    if process.returncode != 0:
        raise PrepareError(f"copying {image} failed: {err.decode(errors='replace').strip()}")
    st = image.stat()
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, st.st_mode & 0o7777)


def prepare_image(image: Path, *, dry_run: bool = False, progress: Progress | None = None,
                  store: StateStore | None = None, timeouts: Timeouts | None = None,
                  regenerate: bool = False, verify: Verify | None = None) -> PrepareResult:
    """Prepare the guest in raw disk ``image`` for PV disks (see the module docstring).
    ``regenerate``: rebuild each initramfs with the guest's own generator (in the appliance)
    instead of appending the drivers; ``verify`` is given the prepared guest as ``guest check
    --deep`` reads it, in the same appliance session, and its answer is the result's
    ``check``."""
    say = progress or (lambda message: log.info("%s", message))
    result = PrepareResult(image, dry_run, initramfs="regenerate" if regenerate else "append")
    started = time.monotonic()
    if image.is_symlink() or not image.is_file():
        raise PrepareError(f"{image}: not an image file (a symlink is not followed: name the "
                           "file itself)")
    users = images_in_use(image, store)
    if users:
        raise ImageInUseError(f"{image} is in use by running domain {', '.join(users)}; "
                              "shut it down first")
    with open(image, "rb") as stream:
        if stream.read(4) == b"QFI\xfb":
            raise PrepareError(f"{image}: a qcow2 image; prepare works on raw images "
                               "(qemu-img convert -O raw first)")
    if dry_run:
        with Appliance(image, readonly=True, timeouts=timeouts, progress=say) as appliance:
            mark = _timed(result, "launch", started)
            guest = appliance.inspect()
            result.notes += appliance.mount(guest)
            plan = plan_changes(appliance, root_filesystem(appliance, guest), str(image),
                                regenerate=regenerate)
            result.changes, result.notes = plan.changes, result.notes + plan.notes
            _timed(result, "read", mark)
        result.seconds["total"] = time.monotonic() - started
        return result
    with _exclusive(image):
        clear_stale_workdirs(image)
        workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix(image), dir=image.parent))
        try:
            copy = workdir / "disk.img"
            say(f"copying {image.name} into a private work directory")
            copy_image(image, copy)
            mark = _timed(result, "copy", started)
            with Appliance(copy, readonly=False, timeouts=timeouts, tmpdir=workdir,
                           progress=say) as appliance:
                mark = _timed(result, "launch", mark)
                _prepare_guest(appliance, image, result, say, mark,
                               _Work(workdir, copy, regenerate, verify))
                mark = time.monotonic()
                say("unmounting the guest's filesystems, stopping the appliance")
            mark = _timed(result, "shutdown", mark)
            with open(copy, "rb") as stream:
                os.fsync(stream.fileno())
            os.replace(copy, image)
            directory = os.open(image.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            _timed(result, "commit", mark)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    result.seconds["total"] = time.monotonic() - started
    return result


def _backup(appliance: Appliance, path: str, written: list[str]) -> None:
    """``path.pre-pvhvm`` beside a resolved regular guest file, unless one is there already
    (a second prepare keeps the first original)."""
    backup = path + BACKUP_SUFFIX
    if appliance.is_symlink(backup) or appliance.exists(backup):
        return
    appliance.copy(path, backup)
    written.append(backup)


def _apply_links(appliance: Appliance, plan: _Plan, result: PrepareResult,
                 written: list[str]) -> None:
    """The planned symlink removals and additions, each in a directory resolved inside the
    guest (the links themselves are never followed)."""
    for path in plan.unlinks:
        parent = appliance.realpath(os.path.dirname(path))
        if parent is None:
            continue
        link = f"{parent.rstrip('/')}/{os.path.basename(path)}"
        if appliance.is_symlink(link):
            appliance.remove(link)
            written.append(link)
    for path, target in plan.links.items():
        parent = appliance.realpath(os.path.dirname(path))
        if parent is None:
            result.notes.append(f"{os.path.dirname(path)} is not in the guest: {path} not made")
            continue
        link = f"{parent.rstrip('/')}/{os.path.basename(path)}"
        appliance.symlink(target, link)
        written.append(link)


@dataclass(frozen=True)
class _Work:
    """How one prepare runs: its private directory, the image copy, the initramfs method."""

    directory: Path
    copy: Path
    regenerate: bool
    verify: Verify | None


def _prepare_guest(appliance: Appliance, image: Path, result: PrepareResult, say: Progress,
                   mark: float, work: _Work) -> None:
    """Inspect and mount the guest, edit its files, add the drivers to its initramfs images
    (appended, or its own generator run in the appliance), then verify it if asked."""
    say("inspecting the guest and mounting its filesystems as its fstab says")
    guest = appliance.inspect()
    result.notes += appliance.mount(guest)
    plan = plan_changes(appliance, root_filesystem(appliance, guest), str(image),
                        regenerate=work.regenerate)
    result.changes, result.notes = plan.changes, result.notes + plan.notes
    mark = _timed(result, "read", mark)
    written: list[str] = []
    for path, (_old, new) in plan.edits.items():
        real = appliance.realpath(path)
        if real is None and appliance.is_symlink(path):
            result.notes.append(f"{path} is a symlink that leads nowhere in the guest: left "
                                "alone")
            continue
        if real is not None and not appliance.is_file(real):
            result.notes.append(f"{path} is not a regular file in the guest: left alone")
            continue
        if real is None:  # a new file (the initramfs modules list, dracut's conf file)
            parent = appliance.realpath(os.path.dirname(path))
            if parent is None:
                result.notes.append(f"{os.path.dirname(path)} is not in the guest: {path} "
                                    "not written")
                continue
            real = f"{parent.rstrip('/')}/{os.path.basename(path)}"
        else:
            _backup(appliance, real, written)
        appliance.write_text(real, new)
        written.append(real)
    _apply_links(appliance, plan, result, written)
    boot = "/boot"
    for initrd in plan.initrds.values():
        if appliance.is_symlink(initrd):
            result.notes.append(f"{initrd} is a symlink: not backed up")
        elif appliance.is_file(initrd):
            _backup(appliance, initrd, written)
    before = appliance.stat_entries(boot)
    mark = _timed(result, "edit", mark)
    if work.regenerate:
        for argv, tool in plan.commands:
            say(f"the guest's {printable(' '.join(argv))}, in the appliance")
            appliance.run_guest(argv, f"the guest's {tool}")
    else:
        for release in plan.kernels:
            say(f"adding the virtio drivers to {plan.initrds[release]}")
            _append_drivers(appliance, release, plan.initrds[release], result, work.directory)
    mark = _timed(result, "initramfs", mark)
    after = appliance.stat_entries(boot)
    written += [f"{boot}/{name}" for name, st in sorted(after.items())
                if before.get(name) != st and f"{boot}/{name}" not in written]
    result.written = written
    if work.verify is not None:
        say("checking the prepared guest (guest check --deep), in the same appliance")
        report = appliance_report(appliance, work.copy, guest, work.directory, name=str(image))
        result.check = work.verify(report)
        _timed(result, "check", mark)


def _append_drivers(appliance: Appliance, release: str, initrd: str, result: PrepareResult,
                    workdir: Path) -> None:
    """Append the modules root on virtio needs, and kmod's index over the initramfs's old
    and new modules, to the initramfs of kernel ``release`` (:mod:`.initrd_append`)."""
    real = appliance.realpath(initrd)
    if real is None or not appliance.is_file(real):
        result.notes.append(f"{initrd} is not a regular file in the guest: no drivers added "
                            f"for kernel {printable(release)}")
        return
    moddir = appliance.realpath(f"/lib/modules/{release}")
    dep_text = appliance.read_text(f"{moddir}/modules.dep") if moddir else None
    if moddir is None or dep_text is None:
        raise PrepareError(f"{initrd}: the guest has no /lib/modules/{printable(release)}/"
                           "modules.dep to find the drivers by (guest prepare "
                           "--regenerate-initramfs runs the guest's own generator)")
    builtin = appliance.read_text(f"{moddir}/modules.builtin") or ""
    try:
        wanted = closure(ROOT_ON_VIRTIO, parse_modules_dep(dep_text), builtin_names(builtin))
    except ModuleDepError as err:
        raise PrepareError(f"kernel {printable(release)}: {err}") from err
    size = appliance.file_size(real) or 0
    if size > MAX_INITRAMFS:
        raise PrepareError(f"{initrd}: {size} bytes, more than an initramfs has")
    try:
        initramfs = read_initramfs(appliance.read_whole(real, size, workdir, MAX_INITRAMFS))
    except InspectError as err:
        raise PrepareError(f"{initrd}: not read ({err}); guest prepare "
                           "--regenerate-initramfs rebuilds it with the guest's own "
                           "generator") from err
    held = modules_in_archive(initramfs, release)
    names = {module_name(m) for m in held.modules}
    new = [m for m in wanted if module_name(m) not in names]
    # what was done replaces what the plan said would be
    result.changes = [c for c in result.changes
                      if not (c.path == initrd and c.kind == "initramfs")]
    if not new:
        result.changes.append(Change(initrd, "initramfs", "already has "
                                     f"{', '.join(ROOT_ON_VIRTIO)} and what they need"))
        return
    union = set(held.modules) | set(new)
    files = appliance.regular_files(moddir, sorted(union | set(INDEX_INPUTS)))
    lost = sorted(m for m in new if m not in files)
    if lost:
        raise PrepareError(f"kernel {printable(release)}: {', '.join(map(printable, lost))} "
                           "not a regular file in the guest's /lib/modules")
    gone = sorted(m for m in held.modules if m not in files)
    if gone:
        result.notes.append(f"{initrd}: {len(gone)} module(s) it has are not in the guest's "
                            f"/lib/modules/{printable(release)} (e.g. {printable(gone[0])}): "
                            "left out of its new module index")
    index = {name: data for name, data in appliance.depmod(release, files).items()
             if not MODULE_SUFFIX.search(name)}
    if "modules.dep.bin" not in index:
        raise PrepareError(f"kernel {printable(release)}: depmod made no modules.dep.bin")
    modules = {m: _guest_bytes(appliance, files[m], workdir) for m in new}
    archive = appended_archive(initramfs, held.directory, modules, index, size)
    appliance.append(real, archive)
    result.changes.append(Change(initrd, "initramfs", (
        f"appended {', '.join(module_name(m) for m in new)} and kmod's index of "
        f"{len(union)} modules ({len(archive)} bytes at "
        f"{printable(held.directory)}; no guest program ran)")))


def _guest_bytes(appliance: Appliance, path: str, workdir: Path) -> bytes:
    """A guest file's bytes (resolved inside the guest), through the appliance."""
    size = appliance.file_size(path) or 0
    if size > MAX_MODULE:
        raise PrepareError(f"{printable(path)}: {size} bytes, more than a kernel module has")
    return appliance.read_whole(path, size, workdir, MAX_MODULE)
