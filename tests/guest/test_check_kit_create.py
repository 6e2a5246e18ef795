"""The kit's own busybox guest is created with the guest check on (no --no-check) and boots:
with its usual root=/dev/vda, and with no root= at all (its init then finds the filesystem
labelled pvhvm-root). A private cache directory proves the check ran: create keeps the
findings of a check that let the guest be created, and only then."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.guest.kit import Kit
from tests.e2e.conftest import EXAMPLES, Pvhvm, _qemu_processes, _supervisors

pytestmark = pytest.mark.e2e


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Pvhvm, Path]]:
    """A private state directory (its supervisor gone at the end) and cache directory."""
    state = Path(tempfile.mkdtemp(prefix="pvs-", dir="/tmp"))
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "1")
    yield Pvhvm(state), tmp_path / "cache"
    deadline = time.monotonic() + 15
    while (_supervisors(state) or _qemu_processes(state)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _supervisors(state) + _qemu_processes(state)
    shutil.rmtree(state, ignore_errors=True)
    assert not left, f"left running: {left}"


@pytest.mark.parametrize("extra", ["console=ttyS0 root=/dev/vda", "console=ttyS0"])
def test_kit_guest_creates_with_the_check_and_boots(
        kit: Kit, tmp_path: Path, private: tuple[Pvhvm, Path], extra: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pvhvm, cache = private
    images = tmp_path / "images"
    images.mkdir()
    for source in (kit.vmlinuz, kit.initramfs):
        os.symlink(source, images / source.name)
    subprocess.run(["cp", "--sparse=always", str(kit.rootfs), str(images / kit.rootfs.name)],
                   check=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # Pvhvm.env() passes os.environ on
    name = "kitcheck" + ("" if "root=" in extra else "noroot")
    proc = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={images}",
                     f"name={name}", f"extra={extra}", "--accel", "tcg", check=False)
    try:
        assert proc.returncode == 0, proc.stderr
        assert "fatal:" not in proc.stderr and "cannot-tell:" not in proc.stderr
        kept = list((cache / "pvhvm" / "check").glob("*.json"))
        assert len(kept) == 1, "the check did not run"
        report = pvhvm.wait_report(name)
        assert report.root == "/dev/vda"
    finally:
        pvhvm.run("destroy", name, check=False)
        assert not pvhvm.leftovers(name)
