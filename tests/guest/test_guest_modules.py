"""Kernel module .modinfo reading and dependency resolution (pvhvm.guest.modules)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from pvhvm.errors import GuestImageError
from pvhvm.guest.modules import (
    ModuleInfo,
    ModuleSource,
    canonical_name,
    modinfo_section,
    modules_dep,
    parse_modinfo,
    resolve,
)


def make_elf(modinfo: bytes) -> bytes:
    """A minimal little-endian ELF64 object: sections null, .modinfo, .shstrtab."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_offset = 64
    strtab_offset = data_offset + len(modinfo)
    shoff = strtab_offset + len(shstrtab)
    header = b"\x7fELF" + bytes((2, 1, 1)) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)

    def section(name: int, kind: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, 0, 0, 1, 0)

    sections = section(0, 0, 0, 0) + section(1, 1, data_offset, len(modinfo))
    sections += section(10, 3, strtab_offset, len(shstrtab))
    return header + modinfo + shstrtab + sections


EXT4_MODINFO = (
    b"softdep=pre: crypto-crc32c\0license=GPL\0alias=fs-ext4\0depends=jbd2,mbcache,crc16\0"
    b"intree=Y\0name=ext4\0vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions \0"
)


def test_modinfo_from_elf() -> None:
    info = parse_modinfo(modinfo_section(make_elf(EXT4_MODINFO)), relpath="kernel/fs/ext4.ko")
    assert info == ModuleInfo("ext4", "kernel/fs/ext4.ko", ("jbd2", "mbcache", "crc16"),
                              ("crypto-crc32c",))
    assert info.aliases == ("fs-ext4",)


def test_modinfo_edge_cases() -> None:
    info = parse_modinfo(
        b"depends=\0softdep=pre: a b post: c\0\0garbage\0", relpath="kernel/x/ne2k-pci.ko.xz",
    )
    assert info.name == "ne2k_pci"
    assert info.depends == ()
    assert info.softdep_pre == ("a", "b")
    assert info.installed_relpath == "kernel/x/ne2k-pci.ko"


@pytest.mark.parametrize("elf", [b"not an elf", b"\x7fELF" + bytes(60), make_elf(b"")[:80]])
def test_bad_elf(elf: bytes) -> None:
    with pytest.raises(GuestImageError):
        modinfo_section(elf)


def test_canonical_name() -> None:
    assert canonical_name("ne2k-pci") == "ne2k_pci"
    assert canonical_name("crc32c-intel.ko.xz") == "crc32c_intel"


def mod(name: str, *depends: str, soft: tuple[str, ...] = (),
        aliases: tuple[str, ...] = ()) -> ModuleInfo:
    return ModuleInfo(name, f"kernel/{name}.ko", depends, soft, aliases)


TABLE = {m.name: m for m in [
    mod("ext4", "jbd2", "mbcache", "crc16", soft=("crypto-crc32c",)),
    mod("jbd2"), mod("mbcache"), mod("crc16"),
    mod("crc32c_generic", aliases=("crypto-crc32c", "crc32c")),
    mod("ata_piix", "libata"), mod("libata", "scsi_mod"), mod("scsi_mod", "scsi_common"),
    mod("scsi_common"), mod("sd_mod", "scsi_mod", "t10_pi"), mod("t10_pi"),
    mod("ne2k_pci", "8390"), mod("8390"),
]}


def names(modules: list[ModuleInfo]) -> list[str]:
    return [m.name for m in modules]


def test_resolve_orders_dependencies_first() -> None:
    order = names(resolve(["ata_piix", "sd_mod", "ext4"], TABLE))
    assert order == [
        "scsi_common", "scsi_mod", "libata", "ata_piix", "t10_pi", "sd_mod",
        "jbd2", "mbcache", "crc16", "ext4",
    ]


def test_softdep_orders_only_modules_already_wanted() -> None:
    order = names(resolve(["ext4", "crc32c_generic"], TABLE))
    assert order.index("crc32c_generic") < order.index("ext4")
    assert "crc32c_generic" not in names(resolve(["ext4"], TABLE))


def test_dash_and_underscore_names_and_builtins() -> None:
    assert names(resolve(["ne2k-pci", "af_packet"], TABLE, builtin=["kernel/af_packet.ko"])) == [
        "8390", "ne2k_pci",
    ]


def test_resolve_errors() -> None:
    with pytest.raises(GuestImageError, match="nosuch"):
        resolve(["nosuch"], TABLE)
    with pytest.raises(GuestImageError, match="broken"):
        resolve(["needs"], {"needs": mod("needs", "broken")})
    cyclic = {"a": mod("a", "b"), "b": mod("b", "a")}
    with pytest.raises(GuestImageError, match="cycle"):
        resolve(["a"], cyclic)


def test_modules_dep_is_transitive() -> None:
    text = modules_dep(resolve(["ata_piix", "crc16"], TABLE))
    assert text.splitlines() == [
        "kernel/scsi_common.ko:",
        "kernel/scsi_mod.ko: kernel/scsi_common.ko",
        "kernel/libata.ko: kernel/scsi_mod.ko kernel/scsi_common.ko",
        "kernel/ata_piix.ko: kernel/libata.ko kernel/scsi_mod.ko kernel/scsi_common.ko",
        "kernel/crc16.ko:",
    ]


def test_module_source_reads_a_tree(tmp_path: Path) -> None:
    (tmp_path / "kernel" / "fs").mkdir(parents=True)
    (tmp_path / "kernel" / "lib").mkdir(parents=True)
    (tmp_path / "kernel" / "fs" / "ext4.ko").write_bytes(make_elf(EXT4_MODINFO))
    for name in ("jbd2", "mbcache"):
        (tmp_path / "kernel" / "fs" / f"{name}.ko").write_bytes(make_elf(b"name=" + name.encode()))
    (tmp_path / "kernel" / "lib" / "crc16.ko.xz").write_bytes(
        lzma.compress(make_elf(b"depends=\0name=crc16\0"), format=lzma.FORMAT_XZ))
    source = ModuleSource(tmp_path)
    assert "crc16" in source and "nosuch" not in source
    order = resolve(["ext4"], source)
    assert names(order) == ["jbd2", "mbcache", "crc16", "ext4"]
    assert order[2].relpath == "kernel/lib/crc16.ko.xz"
    assert order[2].installed_relpath == "kernel/lib/crc16.ko"


def test_module_source_of_an_empty_tree(tmp_path: Path) -> None:
    with pytest.raises(GuestImageError, match="no kernel modules"):
        ModuleSource(tmp_path)
