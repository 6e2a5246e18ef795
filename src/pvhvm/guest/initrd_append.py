"""The PV disk drivers added to an existing initramfs without running any guest program.

The kernel unpacks an initramfs that is several archives one after another, in order, later
entries replacing earlier ones (``Documentation/driver-api/early-userspace/buffer-format.rst``:
"the initramfs archive is ... one or more concatenated cpio archives, each of which may be
compressed"; ``init/initramfs.c`` starts a new archive wherever a ``070701`` magic stands at a
4-byte aligned offset after zero padding). So the drivers need no rebuild: a small uncompressed
"newc" archive appended to the guest's initrd carries

- the module files the guest's ``modules.dep`` says root on virtio needs (``virtio_pci`` and
  ``virtio_blk`` and what they depend on; what ``modules.builtin`` lists needs nothing; what
  the initramfs already has is not added again), at the place the initramfs keeps its modules
  (``usr/lib/modules/VER`` when its ``lib`` is a link to ``usr/lib``, as in Debian 12's);
- kmod's whole index (``modules.dep``, ``modules.dep.bin``, ``modules.alias.bin``, ...) for
  the union of the modules it had and the new ones: kmod's modprobe and udev read the ``.bin``
  files, so the old ones are replaced. depmod makes them, run in the appliance (the
  appliance's own kmod, never the guest's; guest ELF files are parsed in the VM, not on the
  host).

GRUB, pygrub, extlinux and QEMU's -initrd load the file as it is; the guest's generator config
(initramfs-tools' modules file, dracut's conf.d) gets the drivers too, so the guest's own next
rebuild keeps them.

This module is pure: parsing ``modules.dep`` text, the closure, where the modules live in the
archive, and the archive's bytes (written by :func:`pvhvm.guest.initramfs.cpio_newc`).
"""

from __future__ import annotations

import posixpath
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pvhvm.errors import PvhvmError
from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.inspect.cpio import Initramfs

#: what root on virtio needs in the initramfs (udev loads the rest by alias); virtio_net is
#: for the running system, not for finding root
ROOT_ON_VIRTIO = ("virtio_pci", "virtio_blk")
MODULE_SUFFIX = re.compile(r"\.ko(?:\.(?:xz|zst|gz))?$")
#: every index file depmod writes (kmod 30-33) starts so; the archive carries them all
INDEX_PREFIX = "modules."
#: what depmod reads beside the modules (modules.builtin.bin and .alias.bin come from these;
#: modules.order sets modules.dep's order); copied from the guest when it has them
INDEX_INPUTS = ("modules.builtin", "modules.builtin.modinfo", "modules.order")


class ModuleDepError(PvhvmError, ValueError):
    """The guest's modules.dep lacks a module root on virtio needs."""


def module_name(path: str) -> str:
    """``kernel/drivers/block/virtio_blk.ko.xz`` → ``virtio_blk`` (``-`` folded to ``_``)."""
    return MODULE_SUFFIX.sub("", posixpath.basename(path)).replace("-", "_")


@dataclass(frozen=True)
class ModuleDep:
    """One modules.dep(5) line: a module's path (relative to ``lib/modules/VER``) and the
    paths of everything it needs, nearest first."""

    path: str
    depends: tuple[str, ...]


def parse_modules_dep(text: str) -> dict[str, ModuleDep]:
    """modules.dep(5): ``path: dependency-path ...`` per line → name → :class:`ModuleDep`."""
    found: dict[str, ModuleDep] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        path = path.strip()
        if not sep or not MODULE_SUFFIX.search(path) or _unsafe(path):
            continue
        depends = tuple(d for d in rest.split() if MODULE_SUFFIX.search(d) and not _unsafe(d))
        found.setdefault(module_name(path), ModuleDep(path, depends))
    return found


def _unsafe(path: str) -> bool:
    """A path that would leave ``lib/modules/VER`` (absolute, ``..``) or is not plain."""
    return (path.startswith("/") or ".." in path.split("/") or "\0" in path
            or any(ord(c) < 0x20 for c in path))


def builtin_names(text: str) -> set[str]:
    """modules.builtin: one path per line, for modules built into the kernel."""
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def closure(wanted: Iterable[str], deps: Mapping[str, ModuleDep],
            builtin: Iterable[str] = ()) -> list[str]:
    """The paths of the wanted modules and everything they need, dependencies first; a module
    built into the kernel needs nothing. ModuleDepError when one is neither."""
    built = set(builtin)
    order: list[str] = []
    for name in wanted:
        if name in built:
            continue
        if name not in deps:
            raise ModuleDepError(f"the guest's modules.dep has no {name} (and modules.builtin "
                                 "does not list it): the kernel has no such driver")
        entry = deps[name]
        for path in (*reversed(entry.depends), entry.path):
            if path not in order:
                order.append(path)
    return order


@dataclass(frozen=True)
class ModulesInArchive:
    """Where an initramfs keeps one kernel's modules, and which it has."""

    #: the archive's real directory (``usr/lib/modules/6.1.0-50-amd64``), no symlink in it
    directory: str
    #: module paths relative to it (``kernel/drivers/ata/ata_piix.ko``)
    modules: frozenset[str]


def modules_in_archive(initramfs: Initramfs, release: str) -> ModulesInArchive:
    """Find ``lib/modules/RELEASE`` in the archive as the kernel will have unpacked it: the
    directory a regular member (modules.dep, a module) really sits in, so that the appended
    archive writes through no symlink and replaces no directory by one (the kernel's
    unpacker removes an entry whose type differs from the new one's)."""
    pattern = re.compile(rf"^((?:[^/]+/)*?lib/modules/{re.escape(release)})/(.+)$")
    found: dict[str, bool] = {}  # directory → it holds modules.dep
    for name, member in initramfs.members.items():
        match = pattern.match(name)
        if match and member.is_file:
            found[match.group(1)] = (found.get(match.group(1), False)
                                     or match.group(2) == "modules.dep")
    directory = next((d for d, index in found.items() if index), next(iter(found), None))
    modules: set[str] = set()
    if directory is None:
        lib = initramfs.members.get("lib")
        merged = lib is not None and stat.S_ISLNK(lib.mode)
        directory = f"{'usr/' if merged else ''}lib/modules/{release}"
    for name, member in initramfs.members.items():
        if member.is_file and name.startswith(directory + "/"):
            relpath = name[len(directory) + 1:]
            if MODULE_SUFFIX.search(relpath):
                modules.add(relpath)
    return ModulesInArchive(directory, frozenset(modules))


def appended_archive(initramfs: Initramfs, directory: str, modules: Mapping[str, bytes],
                     index: Mapping[str, bytes], offset: int) -> bytes:
    """The bytes to append to an initrd of ``offset`` bytes: zero padding to a 4-byte
    boundary, then one newc archive with the directories the archive lacks (parents first),
    the ``modules`` (path relative to ``directory`` → bytes) and the ``index`` files
    (``modules.dep.bin`` → bytes) in ``directory``."""
    entries: list[CpioEntry] = []
    made: set[str] = set()

    def parents(path: str) -> None:
        parent = posixpath.dirname(path)
        if not parent or parent in made or parent in initramfs.members:
            return
        parents(parent)
        made.add(parent)
        entries.append(CpioEntry.directory(parent))

    for relpath, data in sorted(modules.items()):
        path = f"{directory}/{relpath}"
        parents(path)
        entries.append(CpioEntry.file(path, data))
    for name, data in sorted(index.items()):
        if "/" in name or not name.startswith(INDEX_PREFIX):
            raise ModuleDepError(f"not an index file name: {name!r}")
        path = f"{directory}/{name}"
        parents(path)
        entries.append(CpioEntry.file(path, data))
    return b"\0" * (-offset % 4) + cpio_newc(entries)
