"""The cpio writer, the MBR/boot disk layout and the package helpers (no network, no QEMU)."""

from __future__ import annotations

import gzip
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from pvhvm.errors import GuestImageError
from pvhvm.guest import bootdisk, debs
from pvhvm.guest.initramfs import CpioEntry, console_nodes, cpio_newc, write_initramfs


def read_newc(archive: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, rdevmajor, rdevminor) per member, checking alignment on the way."""
    members = []
    offset = 0
    while True:
        assert offset % 4 == 0
        header = archive[offset:offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rmajor, rminor, namesize = (
            fields[1], fields[6], fields[9], fields[10], fields[11])
        name = archive[offset + 110:offset + 110 + namesize - 1].decode()
        assert archive[offset + 110 + namesize - 1] == 0
        data_start = offset + 110 + namesize
        data_start += -data_start % 4
        data = archive[data_start:data_start + size]
        offset = data_start + size
        offset += -offset % 4
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return members
        members.append((name, mode, data, rmajor, rminor))


def test_cpio_newc_members() -> None:
    entries = [
        CpioEntry.directory("bin"), CpioEntry.file("bin/x", b"abc", 0o755),
        CpioEntry.symlink("bin/sh", "x"), CpioEntry.char_device("console", 5, 1),
    ]
    members = read_newc(cpio_newc(entries))
    assert [(m[0], stat.S_IFMT(m[1])) for m in members] == [
        ("bin", stat.S_IFDIR), ("bin/x", stat.S_IFREG), ("bin/sh", stat.S_IFLNK),
        ("console", stat.S_IFCHR),
    ]
    assert members[1][2] == b"abc" and stat.S_IMODE(members[1][1]) == 0o755
    assert members[2][2] == b"x"
    assert members[3][3:] == (5, 1)


def test_cpio_rejects_absolute_names() -> None:
    with pytest.raises(GuestImageError):
        cpio_newc([CpioEntry.file("/init", b"")])


def test_write_initramfs_from_a_tree(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "dev").mkdir(parents=True)
    (stage / "init").write_text("#!/bin/sh\n")
    (stage / "init").chmod(0o755)
    (stage / "sh").symlink_to("init")
    output = tmp_path / "initramfs.cpio.gz"
    write_initramfs(stage, output, extra=console_nodes())
    archive = gzip.decompress(output.read_bytes())
    names = [m[0] for m in read_newc(archive)]
    assert names == ["dev", "init", "sh", "dev/console", "dev/null", "dev/ttyS0"]
    first = output.read_bytes()
    write_initramfs(stage, output, extra=console_nodes())
    assert output.read_bytes() == first, "the archive is reproducible"
    if shutil.which("cpio"):
        listing = subprocess.run(["cpio", "-t"], input=archive, capture_output=True, check=True)
        assert listing.stdout.decode().split() == names


def test_chs() -> None:
    assert bootdisk.chs(0) == bytes((0, 1, 0))
    assert bootdisk.chs(2048) == bytes((32, 33, 0))
    assert bootdisk.chs(255 * 63 * 1024) == bytes((254, 0xFF, 0xFF))


def test_mbr_layout() -> None:
    boot, root = bootdisk.layout(64 << 20)
    assert (boot.start, boot.sectors, boot.active) == (2048, 65536, True)
    assert (root.start, root.sectors, root.type_id) == (67584, 131072, 0x83)
    sector = bootdisk.mbr(b"\xeb" * 440, [boot, root], 0x12345678)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440) == (0x12345678,)
    status, ptype, start, count = struct.unpack_from("<B3xB3xII", sector, 446)
    assert (status, ptype, start, count) == (0x80, 0x0E, 2048, 65536)
    status, ptype, start, count = struct.unpack_from("<B3xB3xII", sector, 462)
    assert (status, ptype, start, count) == (0, 0x83, 67584, 131072)
    assert sector[478:510] == bytes(32)


def test_mbr_errors() -> None:
    with pytest.raises(GuestImageError):
        bootdisk.mbr(bytes(441), [], 0)
    part = bootdisk.Partition(2048, 1, 0x83)
    with pytest.raises(GuestImageError):
        bootdisk.mbr(b"", [part] * 5, 0)
    with pytest.raises(GuestImageError):
        bootdisk.layout(1000)


def test_syslinux_cfg() -> None:
    cfg = bootdisk.syslinux_cfg("console=ttyS0 root=LABEL=pvhvm-root")
    assert cfg.startswith("SERIAL 0 115200\n")
    assert "DEFAULT pvhvm\n" in cfg and "PROMPT 0\n" in cfg
    assert "APPEND console=ttyS0 root=LABEL=pvhvm-root\n" in cfg
    assert "APPEND console=ttyS0 root=LABEL=pvhvm-root pvhvm.poweroff=1\n" in cfg


def test_copy_sparse(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"a" * 10 + bytes(3 << 20) + b"b")
    target = tmp_path / "dst"
    target.write_bytes(b"\xff" * 100)
    with open(target, "r+b") as stream:
        stream.truncate(100 + source.stat().st_size)
    bootdisk.copy_sparse(source, target, 100)
    data = target.read_bytes()
    assert data[:100] == b"\xff" * 100 and data[100:] == source.read_bytes()


APT_CACHE_DEPENDS = """\
linux-image-amd64
  Depends: linux-image-6.1.0-56-amd64
 |Recommends: firmware-linux-free
  Suggests: <debian-kernel-handbook>
"""


def test_kernel_package_from_apt_cache() -> None:
    assert debs.parse_depends(APT_CACHE_DEPENDS) == ["linux-image-6.1.0-56-amd64"]
    assert debs.kernel_package_from_depends(APT_CACHE_DEPENDS) == "linux-image-6.1.0-56-amd64"
    with pytest.raises(GuestImageError, match="depends on no"):
        debs.kernel_package_from_depends("linux-image-amd64\n  Depends: foo\n")


def test_run_and_require_tool() -> None:
    assert debs.run(["sh", "-c", "echo hi"]) == "hi\n"
    with pytest.raises(GuestImageError, match=r"exit status 3.*oops"):
        debs.run(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(GuestImageError, match="cannot run"):
        debs.run(["/nonexistent/tool"])
    with pytest.raises(GuestImageError, match="install the nosuch package"):
        debs.require_tool("no-such-tool-pvhvm", "nosuch")
