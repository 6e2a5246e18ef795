"""Initramfs images made by cpio -H newc and each distribution compressor, read back."""

from __future__ import annotations

import gzip
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.errors import ImageFormatError
from pvhvm.inspect.image import initramfs_report
from tests.inspect.conftest import IDE_MODULES, PV_MODULES, RELEASE, make_initramfs


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "lz4", "bzip2", "none"])
@pytest.mark.parametrize("microcode", [False, True])
def test_each_compression(tmp_path: Path, compression: str, microcode: bool) -> None:
    data = make_initramfs(tmp_path, (*IDE_MODULES, *PV_MODULES), compression, microcode)
    parsed = read_initramfs(data)
    assert parsed.compression == compression
    assert parsed.microcode is microcode
    assert len(parsed.segments) == (2 if microcode else 1)
    if microcode:
        assert parsed.segments[0].compression == "none"
        assert parsed.segments[0].microcode
    modules = parsed.modules()
    assert set(modules) == {RELEASE}
    assert {"ata_piix", "virtio_blk", "virtio_pci", "xen_blkfront", "xen_netfront",
            "sd_mod"} <= modules[RELEASE]
    assert parsed.builtin() == {RELEASE: {"loop"}}
    assert "conf/initramfs.conf" in parsed.files


def test_report_names_missing_drivers(tmp_path: Path) -> None:
    report = initramfs_report("initrd", make_initramfs(tmp_path, IDE_MODULES, "zstd", True))
    assert report.error is None
    assert "ata_piix" in report.modules and "virtio_blk" not in report.modules
    assert report.to_json()["drivers"] == ["ata_generic", "ata_piix", "ext4", "sd_mod"]
    assert report.compression == "zstd" and report.microcode


def test_concatenated_gzip_members_and_padding(tmp_path: Path) -> None:
    first = cpio_newc([CpioEntry.file("a", b"1")])
    second = cpio_newc([CpioEntry.file(f"lib/modules/{RELEASE}/kernel/x/virtio_net.ko", b"")])
    data = gzip.compress(first) + gzip.compress(second) + b"\0" * 512
    parsed = read_initramfs(data)
    assert set(parsed.members) == {"a", f"lib/modules/{RELEASE}/kernel/x/virtio_net.ko"}
    assert parsed.modules() == {RELEASE: {"virtio_net"}}


@pytest.mark.parametrize("data", [
    b"", b"\0" * 64, b"not an initramfs at all", b"070701" + b"zz" * 60,
])
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(ImageFormatError):
        read_initramfs(data)


def test_truncated_archives(tmp_path: Path) -> None:
    archive = cpio_newc([CpioEntry.file("init", b"#!/bin/sh\n" * 100)])
    with pytest.raises(ImageFormatError, match=r"truncated|past the end"):
        read_initramfs(archive[: len(archive) // 2])
    with pytest.raises(ImageFormatError, match="truncated"):
        read_initramfs(gzip.compress(archive)[:-20])
    report = initramfs_report("x", b"junk")
    assert report.error is not None and "not an initramfs" in report.error


_names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=20)
    .filter(lambda n: n not in (".", "..")),
    min_size=1, max_size=12, unique=True,
)


@given(names=_names, payload=st.binary(max_size=300), split=st.integers(0, 12))
def test_round_trip_any_archive(names: list[str], payload: bytes, split: int) -> None:
    """Any archive written by the kit's newc writer reads back whole, also as two segments
    (an uncompressed one, then a gzip'd one)."""
    entries = [CpioEntry.file(name, payload[: len(name) * 7]) for name in names]
    head, tail = entries[:split], entries[split:]
    data = (cpio_newc(head) if head else b"") + gzip.compress(cpio_newc(tail))
    parsed = read_initramfs(data)
    assert set(parsed.members) == set(names)
    for entry in entries:
        member = parsed.members[entry.name]
        assert member.size == len(entry.data) and stat.S_ISREG(member.mode)
