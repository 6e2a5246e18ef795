"""Partition tables made by sfdisk and filesystems made by mke2fs/mkswap, read back."""

from __future__ import annotations

from pathlib import Path

from pvhvm.inspect.partitions import probe_signature, read_table
from tests.inspect.conftest import MIB, make_ext4, partitioned, run, write_tree


def _table(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as stream:
        return read_table(stream, path.stat().st_size)


def test_mbr_with_logical_partitions(ide_install) -> None:  # type: ignore[no-untyped-def]
    table = _table(ide_install.path)
    assert table.scheme == "mbr"
    assert table.disk_id == "1234abcd"
    assert [(p.number, p.start // 512, p.size // 512, p.type) for p in table.partitions] == [
        (1, 2048, 49152, "linux"), (2, 51200, 32768, "linux"), (5, 86016, 8192, "linux-swap"),
    ]
    assert table.partitions[0].bootable and not table.partitions[1].bootable
    # blkid's PTUUID; a partition's PARTUUID is PTUUID-NN (util-linux)
    ptuuid = run("blkid", "-p", "-o", "value", "-s", "PTUUID", str(ide_install.path))
    assert ptuuid.decode().strip() == table.disk_id
    assert [p.partuuid for p in table.partitions] == [
        "1234abcd-01", "1234abcd-02", "1234abcd-05",
    ]


def test_gpt_matches_sfdisk(tmp_path: Path) -> None:
    fs = make_ext4(tmp_path / "root.ext4", write_tree(tmp_path / "t", {"etc/hostname": "g\n"}),
                   8, label="gptroot")
    image = partitioned(tmp_path / "gpt.img", "gpt", [
        (None, 1, "21686148-6449-6E6F-744E-656564454649"), (fs, 8, "linux"),
    ])
    table = _table(image)
    assert table.scheme == "gpt"
    assert [p.number for p in table.partitions] == [1, 2]
    assert table.partitions[0].type == "bios-boot"
    assert table.partitions[1].type == "linux"
    assert table.partitions[1].start == 2 * MIB
    for part in table.partitions:
        expected = run("sfdisk", "--part-uuid", str(image), str(part.number)).decode().strip()
        assert part.partuuid == expected.lower()
    disk_id = run("sfdisk", "--disk-id", str(image)).decode().strip()
    assert table.disk_id == disk_id.lower()
    with open(image, "rb") as stream:
        signature = probe_signature(stream, table.partitions[1].start)
    assert signature is not None and signature.label == "gptroot"


def test_bare_filesystem_and_signatures(tmp_path: Path) -> None:
    fs = make_ext4(tmp_path / "fs.ext4", write_tree(tmp_path / "t", {"x": "y"}), 8,
                   label="bare", uuid="01234567-89ab-4def-8123-456789abcdef")
    assert _table(fs).scheme == "none"
    with open(fs, "rb") as stream:
        signature = probe_signature(stream, 0)
    assert signature is not None
    assert (signature.type, signature.uuid, signature.label) == (
        "ext4", "01234567-89ab-4def-8123-456789abcdef", "bare")
    swap = tmp_path / "swap"
    with open(swap, "wb") as stream:
        stream.truncate(4 * MIB)
    run("mkswap", "-q", "-L", "sw", "-U", "11111111-2222-4333-8444-555555555555", str(swap))
    with open(swap, "rb") as stream:
        signature = probe_signature(stream, 0)
    assert signature is not None
    assert (signature.type, signature.uuid, signature.label) == (
        "swap", "11111111-2222-4333-8444-555555555555", "sw")
    fat = tmp_path / "fat"
    with open(fat, "wb") as stream:
        stream.truncate(8 * MIB)
    run("mformat", "-i", str(fat), "-N", "1a2b3c4d", "-v", "BOOTFAT", "::")
    with open(fat, "rb") as stream:
        signature = probe_signature(stream, 0)
    assert signature is not None
    assert (signature.type, signature.uuid, signature.label) == ("vfat", "1A2B-3C4D", "BOOTFAT")


def test_empty_and_tiny_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert _table(empty).scheme == "none"
    zeros = tmp_path / "zeros"
    zeros.write_bytes(b"\0" * 8192)
    assert _table(zeros).scheme == "none"
    with open(zeros, "rb") as stream:
        assert probe_signature(stream, 0) is None
