"""The drivers appended to an initramfs (pvhvm.guest.initrd_append): modules.dep's closure,
where the modules live in the archive, and the appended newc archive as the kernel and
check's reader (pvhvm.inspect.cpio) see it, after each compression the generators use."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.guest.initrd_append import (
    ModuleDepError,
    appended_archive,
    builtin_names,
    closure,
    module_name,
    modules_in_archive,
    parse_modules_dep,
)
from pvhvm.inspect.cpio import read_initramfs, zstd_frame_end
from pvhvm.inspect.image import initramfs_report
from tests.inspect.conftest import COMPRESSORS, IDE_MODULES, RELEASE, make_initramfs

#: Debian 12's kernel (6.1.0-50-amd64), as its modules.dep says it
MODULES_DEP = """\
kernel/drivers/ata/ata_piix.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""


def test_closure_of_root_on_virtio() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    paths = closure(("virtio_pci", "virtio_blk"), deps)
    assert {module_name(p) for p in paths} == {
        "virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
        "virtio_pci", "virtio_blk"}
    assert paths.index("kernel/drivers/virtio/virtio.ko") < paths.index(
        "kernel/drivers/virtio/virtio_pci.ko")
    assert "net_failover" not in {module_name(p) for p in paths}


def test_builtin_modules_need_nothing_and_a_missing_one_is_an_error() -> None:
    deps = parse_modules_dep("kernel/drivers/block/virtio_blk.ko:\n")
    built = builtin_names("kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio.ko\n")
    assert closure(("virtio_pci", "virtio_blk"), deps, built) == [
        "kernel/drivers/block/virtio_blk.ko"]
    with pytest.raises(ModuleDepError, match="no virtio_pci"):
        closure(("virtio_pci",), deps)


def test_modules_dep_paths_that_leave_the_tree_are_ignored() -> None:
    deps = parse_modules_dep("/etc/shadow.ko:\n../../x/virtio_blk.ko:\n"
                             "kernel/virtio_pci.ko.xz: ../../../etc/passwd.ko kernel/a-b.ko\n"
                             "not a module line\n")
    assert set(deps) == {"virtio_pci"}
    assert deps["virtio_pci"].depends == ("kernel/a-b.ko",)
    assert module_name("kernel/a-b.ko.zst") == "a_b"


@pytest.mark.parametrize("generator", ["initramfs-tools", "dracut"])
def test_modules_found_where_the_archive_really_keeps_them(tmp_path: Path,
                                                           generator: str) -> None:
    data = make_initramfs(tmp_path, IDE_MODULES, "gzip", generator=generator)
    held = modules_in_archive(read_initramfs(data), RELEASE)
    assert held.directory == f"usr/lib/modules/{RELEASE}"  # lib is a link to usr/lib
    assert {module_name(m) for m in held.modules} == {p.rsplit("/", 1)[1] for p in IDE_MODULES}


def test_an_archive_without_modules_gets_them_beside_its_lib() -> None:
    plain = read_initramfs(cpio_newc([CpioEntry.directory("lib"),
                                      CpioEntry.file("init", b"#!/bin/sh\n")]))
    assert modules_in_archive(plain, RELEASE).directory == f"lib/modules/{RELEASE}"
    merged = read_initramfs(cpio_newc([CpioEntry.symlink("lib", "usr/lib")]))
    assert modules_in_archive(merged, RELEASE).directory == f"usr/lib/modules/{RELEASE}"
    assert modules_in_archive(merged, RELEASE).modules == frozenset()


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
@pytest.mark.parametrize("microcode", [False, True])
def test_appended_drivers_are_seen_after_each_compression(tmp_path: Path, compression: str,
                                                          microcode: bool) -> None:
    """check's reader (the kernel's rules: archives in order, later entries replace
    earlier ones) sees the appended modules and the new index; the old ones stay."""
    original = make_initramfs(tmp_path, IDE_MODULES, compression, microcode)
    before = read_initramfs(original)
    held = modules_in_archive(before, RELEASE)
    assert "virtio_blk" not in initramfs_report("initrd", original).modules
    new = {"kernel/drivers/block/virtio_blk.ko": b"\x7fELF blk",
           "kernel/drivers/virtio/virtio_pci.ko": b"\x7fELF pci"}
    index = {"modules.dep": b"kernel/drivers/block/virtio_blk.ko:\n",
             "modules.dep.bin": b"\xb0\x07\xf4\x57 new index"}
    tail = appended_archive(before, held.directory, new, index, len(original))
    padding = len(tail) - len(tail.lstrip(b"\0"))
    assert padding < 4 and (len(original) + padding) % 4 == 0
    after = read_initramfs(original + tail)
    assert len(after.segments) == len(before.segments) + 1
    assert after.segments[-1].compression == "none"
    modules = after.modules()[RELEASE]
    assert {"virtio_blk", "virtio_pci", "ata_piix", "sd_mod"} <= modules
    assert after.files[f"{held.directory}/modules.dep"] == index["modules.dep"]
    assert after.members[f"{held.directory}/modules.dep.bin"].size == len(
        index["modules.dep.bin"])
    # the directories it lacked were made, the ones it had (and the lib link) left alone
    assert stat.S_ISDIR(after.members[f"{held.directory}/kernel/drivers/virtio"].mode)
    assert stat.S_ISLNK(after.members["lib"].mode)
    appended = read_initramfs(tail.lstrip(b"\0"))
    assert f"{held.directory}/kernel" not in appended.members
    assert f"{held.directory}/kernel/drivers/block" in appended.members
    report = initramfs_report("initrd", original + tail)
    assert {"virtio_blk", "virtio_pci"} <= report.modules


def test_index_names_are_checked() -> None:
    empty = read_initramfs(cpio_newc([CpioEntry.file("init", b"x")]))
    with pytest.raises(ModuleDepError, match="not an index file"):
        appended_archive(empty, "lib/modules/x", {}, {"../etc/passwd": b""}, 0)


def test_zstd_frame_end_finds_the_frame_in_front_of_appended_data() -> None:
    for size in (0, 1, 1000, 300_000):
        frame = COMPRESSORS["zstd"](bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        assert zstd_frame_end(frame) == len(frame)
        assert zstd_frame_end(frame + b"\0\0\0070701 more") == len(frame)
        assert zstd_frame_end(frame[:-5]) is None
    assert zstd_frame_end(b"not zstd") is None


_NAMES = st.lists(st.text(st.sampled_from("abcxyz_-.0"), min_size=1, max_size=12), min_size=1,
                  max_size=4).map("/".join).filter(
    lambda n: all(p not in (".", "..") for p in n.split("/")))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_NAMES, st.binary(max_size=300), min_size=1, max_size=12),
       st.binary(max_size=300))
def test_cpio_writer_round_trip(files: dict[str, bytes], index: bytes) -> None:
    """What the writer writes the reader reads back, name by name, with each file's mode and
    size, and the bytes of the files it keeps (modules.dep)."""
    files = {**files, "lib/modules/v/modules.dep": index}
    names = sorted(files)
    dirs = sorted({"/".join(n.split("/")[:i]) for n in names
                   for i in range(1, n.count("/") + 1)} - set(names))
    files = {n: d for n, d in files.items() if n not in dirs}
    entries = [CpioEntry.directory(d) for d in dirs]
    entries += [CpioEntry.file(n, d) for n, d in sorted(files.items())]
    parsed = read_initramfs(cpio_newc(entries))
    assert set(parsed.members) == set(files) | set(dirs)
    for name, content in files.items():
        member = parsed.members[name]
        assert member.is_file and member.size == len(content)
    for name in dirs:
        assert stat.S_ISDIR(parsed.members[name].mode)
    kept = {n: d for n, d in files.items() if n.endswith("/modules.dep")}
    for name, content in kept.items():
        assert parsed.files[name] == content
