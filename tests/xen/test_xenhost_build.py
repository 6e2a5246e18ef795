"""The Xen host builder's own pieces (pvhvm.guest.xenhost) and the QEMU command that boots it
(tests/xen/host.py), without building or booting: test_real_xen.py does that."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pvhvm.errors import GuestImageError
from pvhvm.guest.xenhost import (
    DOM0_MEM_MIB,
    XenHostImage,
    package_version,
    prune,
    required_distributions,
    source_digest,
)
from tests.xen.host import XenHostError, qemu_argv

STATUS = """\
Package: xen-utils-4.17
Status: install ok installed
Version: 4.17.7+13-g2445b30a44-0+deb12u1
Description: XEN administrative tools
 Version: 0.0 (a continuation line is no field)

Package: seabios
Status: deinstall ok config-files
Version: 1.16.2-1
"""


def test_package_version_reads_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(STATUS)
    assert package_version(tmp_path, "xen-utils-4.17") == "4.17.7+13-g2445b30a44-0+deb12u1"
    with pytest.raises(GuestImageError, match="seabios is not installed"):
        package_version(tmp_path, "seabios")


def test_required_distributions_are_pvhvms_runtime_requirements() -> None:
    names = {dist.metadata["Name"].lower() for dist in required_distributions()}
    assert {"click", "rich", "qemu.qmp", "pygments", "markdown-it-py", "mdurl"} <= names
    assert not names & {"pytest", "mypy", "ruff", "hypothesis"}  # extras stay out of dom0


def test_source_digest_follows_sources_not_bytecode(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    first = source_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(tmp_path) == first
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path) != first


def test_qemu_argv_boots_xen_by_multiboot(tmp_path: Path) -> None:
    image = XenHostImage(tmp_path)
    argv = qemu_argv(image, 2222, tmp_path / "serial.log")
    assert argv[argv.index("-kernel") + 1] == str(tmp_path / "xen")
    assert argv[argv.index("-cpu") + 1] == "qemu64,+svm,+npt"
    assert f"dom0_mem={DOM0_MEM_MIB}M,max:{DOM0_MEM_MIB}M" in argv[argv.index("-append") + 1]
    kernel, initrd = argv[argv.index("-initrd") + 1].split(",")
    assert kernel.split()[0] == str(tmp_path / "vmlinuz") and "root=/dev/vda" in kernel
    assert initrd == str(tmp_path / "initrd.img")
    assert "snapshot=on" in argv[argv.index("-drive") + 1]
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in argv[argv.index("-netdev") + 1]


def test_qemu_argv_refuses_a_path_multiboot_would_split(tmp_path: Path) -> None:
    with pytest.raises(XenHostError, match="cannot take a path"):
        qemu_argv(XenHostImage(tmp_path / "a,b"), 2222, tmp_path / "serial.log")


def test_prune_keeps_fresh_and_unfinished_images(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVHVM_XENHOST_DIR", str(tmp_path))
    for name in ("image-keep", "image-old", "image-fresh", "image-building"):
        (tmp_path / name).mkdir()
    for name in ("image-keep", "image-old", "image-fresh"):
        (tmp_path / name / "manifest.json").write_text("{}\n")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(tmp_path / "image-old" / "manifest.json", (two_days_ago, two_days_ago))
    removed = prune(XenHostImage(tmp_path / "image-keep"))
    assert removed == [tmp_path / "image-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "image-building", "image-fresh", "image-keep"]
