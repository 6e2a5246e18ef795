"""Kernel modules: read ``.modinfo`` from ``.ko`` files, resolve dependencies, write modules.dep.

Debian's kernel package ships no ``modules.dep`` (``depmod`` runs at install time), so the kit
reads each module's ELF ``.modinfo`` section (``depends=``, ``softdep=``, ``alias=``, ``name=``)
itself and writes the ``modules.dep`` that busybox ``modprobe`` reads (modules.dep(5) format:
``path: dependency-path ...``, paths relative to ``/lib/modules/<release>``).

Module names are compared with ``-`` folded to ``_``, as the kernel and kmod do
(``ne2k-pci`` and ``ne2k_pci`` are one module). Compressed modules (``.ko.xz``) are decompressed
when read, so the guest never needs in-kernel decompression.
"""

from __future__ import annotations

import lzma
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pvhvm.errors import GuestImageError

MODULE_SUFFIXES = (".ko", ".ko.xz")


def canonical_name(name: str) -> str:
    """A module name as the kernel compares it: ``ne2k-pci`` -> ``ne2k_pci``."""
    for suffix in MODULE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


@dataclass(frozen=True)
class ModuleInfo:
    """What one module's ``.modinfo`` says, and where the module is in the tree."""

    name: str
    relpath: str
    depends: tuple[str, ...] = ()
    softdep_pre: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def installed_relpath(self) -> str:
        """Its path in the guest: always an uncompressed ``.ko``."""
        return self.relpath.removesuffix(".xz")


def read_module_bytes(path: Path) -> bytes:
    """A module's ELF image, decompressed if it is a ``.ko.xz``."""
    try:
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            data = lzma.decompress(data)
    except (OSError, lzma.LZMAError) as err:
        raise GuestImageError(f"cannot read kernel module {path}: {err}") from err
    return data


def modinfo_section(elf: bytes) -> bytes:
    """The raw ``.modinfo`` section of a little-endian ELF64 relocatable object."""
    if elf[:4] != b"\x7fELF" or len(elf) < 64:
        raise GuestImageError("not an ELF file")
    if elf[4] != 2 or elf[5] != 1:
        raise GuestImageError("not a little-endian ELF64 file")
    try:
        (shoff,) = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

        def section(index: int) -> tuple[int, int, int]:
            base = shoff + index * shentsize
            (name,) = struct.unpack_from("<I", elf, base)
            offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
            return name, offset, size

        _, strtab_offset, strtab_size = section(shstrndx)
        strtab = elf[strtab_offset:strtab_offset + strtab_size]
        for index in range(shnum):
            name_offset, offset, size = section(index)
            end = strtab.find(b"\0", name_offset)
            if strtab[name_offset:end] == b".modinfo":
                return elf[offset:offset + size]
    except struct.error as err:
        raise GuestImageError(f"truncated ELF file: {err}") from err
    raise GuestImageError("ELF file has no .modinfo section")


def parse_modinfo(section: bytes, *, relpath: str) -> ModuleInfo:
    """Turn a ``.modinfo`` section (NUL-separated ``key=value``) into a :class:`ModuleInfo`."""
    name = canonical_name(os.path.basename(relpath))
    depends: list[str] = []
    softdep_pre: list[str] = []
    aliases: list[str] = []
    for raw in section.split(b"\0"):
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if not sep:
            continue
        if key == "name":
            name = canonical_name(value)
        elif key == "depends":
            depends += [canonical_name(d) for d in value.split(",") if d]
        elif key == "alias":
            aliases.append(value)
        elif key == "softdep":
            softdep_pre += _softdep_pre(value)
    return ModuleInfo(
        name=name, relpath=relpath, depends=tuple(depends), softdep_pre=tuple(softdep_pre),
        aliases=tuple(aliases),
    )


def _softdep_pre(value: str) -> list[str]:
    """The ``pre:`` names of a softdep value such as ``pre: crypto-crc32c post: foo``."""
    names: list[str] = []
    in_pre = False
    for token in value.split():
        if token.endswith(":"):
            in_pre = token == "pre:"
        elif in_pre:
            names.append(token)
    return names


def index_tree(module_dir: Path) -> dict[str, str]:
    """Map every module name under ``/lib/modules/<release>`` to its relative path."""
    index: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(module_dir / "kernel"):
        for filename in files:
            if filename.endswith(MODULE_SUFFIXES):
                relpath = os.path.relpath(os.path.join(dirpath, filename), module_dir)
                index[canonical_name(filename)] = relpath
    if not index:
        raise GuestImageError(f"no kernel modules under {module_dir}")
    return index


def read_info(module_dir: Path, relpath: str) -> ModuleInfo:
    """Read one module's :class:`ModuleInfo` from the tree."""
    path = module_dir / relpath
    try:
        return parse_modinfo(modinfo_section(read_module_bytes(path)), relpath=relpath)
    except GuestImageError as err:
        raise GuestImageError(f"{path}: {err}") from err


class ModuleSource:
    """Reads module infos from a tree on demand (the resolver asks only for what it needs)."""

    def __init__(self, module_dir: Path) -> None:
        self.module_dir = module_dir
        self.index = index_tree(module_dir)
        self._cache: dict[str, ModuleInfo] = {}

    def __contains__(self, name: str) -> bool:
        return canonical_name(name) in self.index

    def info(self, name: str) -> ModuleInfo:
        key = canonical_name(name)
        if key not in self._cache:
            if key not in self.index:
                raise GuestImageError(f"kernel module {name!r} is not in {self.module_dir}")
            self._cache[key] = read_info(self.module_dir, self.index[key])
        return self._cache[key]


def resolve(
    wanted: Iterable[str], lookup: Mapping[str, ModuleInfo] | ModuleSource,
    *, builtin: Iterable[str] = (),
) -> list[ModuleInfo]:
    """The wanted modules and everything they depend on, each after its dependencies.

    ``depends=`` must be satisfiable: a missing module is an error, unless it is built into the
    kernel (``builtin``, from modules.builtin). ``softdep pre:`` entries only order modules: a
    soft dependency is honoured when it names (by module name or alias) a module that is in the
    result anyway, and otherwise dropped. The order is deterministic: dependencies first, then
    the wanted order.
    """
    builtin_names = {canonical_name(os.path.basename(b)) for b in builtin}

    def get(name: str) -> ModuleInfo:
        if isinstance(lookup, ModuleSource):
            return lookup.info(name)
        try:
            return lookup[canonical_name(name)]
        except KeyError:
            raise GuestImageError(f"kernel module {name!r} not found") from None

    # Closure over hard dependencies.
    infos: dict[str, ModuleInfo] = {}
    roots = [canonical_name(w) for w in wanted]
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in infos or name in builtin_names:
            continue
        info = get(name)
        infos[name] = info
        pending.extend(info.depends)

    aliases: dict[str, str] = {}
    for info in infos.values():
        for alias in info.aliases:
            aliases.setdefault(alias, info.name)

    def edges(info: ModuleInfo) -> list[str]:
        result = [d for d in info.depends if d in infos]
        for soft in info.softdep_pre:
            target = canonical_name(soft) if canonical_name(soft) in infos else aliases.get(soft)
            if target is not None and target != info.name:
                result.append(target)
        return result

    order: list[ModuleInfo] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise GuestImageError("module dependency cycle: " + " -> ".join((*chain, name)))
        state[name] = 1
        for dep in edges(infos[name]):
            visit(dep, (*chain, name))
        state[name] = 2
        order.append(infos[name])

    for name in roots:
        if name in infos:
            visit(name, ())
    return order


def modules_dep(modules: Iterable[ModuleInfo]) -> str:
    """modules.dep(5) text for these modules (hard dependencies, transitively, nearest first)."""
    by_name = {m.name: m for m in modules}
    lines: list[str] = []
    for module in by_name.values():
        seen: list[str] = []
        pending = list(module.depends)
        while pending:
            dep = pending.pop(0)
            if dep in seen or dep not in by_name:
                continue
            seen.append(dep)
            pending.extend(by_name[dep].depends)
        deps = " ".join(by_name[d].installed_relpath for d in seen)
        lines.append(f"{module.installed_relpath}: {deps}".rstrip())
    return "\n".join(lines) + "\n"
