"""A real guest whose root disk is a network target: served by the real qemu-nbd, opened by
QEMU's own nbd driver (pvhvm.qemu.netdisk), seen by the guest as a virtio-blk disk."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Pvhvm, _cmdline, _qemu_processes, json_of

pytestmark = pytest.mark.e2e


@pytest.fixture
def nbd_root(imagedir: Path) -> Iterator[Path]:
    """The guest's private root image exported by qemu-nbd on a unix socket. A test asks for
    it before ``domain``, so the guest is destroyed before the server stops."""
    directory = Path(tempfile.mkdtemp(prefix="pvnbd-", dir="/tmp"))  # short socket path
    sock = directory / "root.sock"
    server = subprocess.Popen(
        ["qemu-nbd", "--persistent", "--shared=2", "-f", "raw", "-x", "root",
         f"--socket={sock}", str(imagedir / "rootfs.ext4")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), server.stderr.read() if server.stderr else "qemu-nbd failed"
        yield sock
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def test_root_disk_over_nbd(pvhvm: Pvhvm, nbd_root: Path, domain: list[str], imagedir: Path,
                            tmp_path: Path) -> None:
    cfg = tmp_path / "nbd-root.cfg"
    cfg.write_text(
        'name = "nbd-root"\nmemory = 512\n'
        f'kernel = "{imagedir}/vmlinuz"\nramdisk = "{imagedir}/initramfs.cpio.gz"\n'
        'extra = "console=ttyS0 root=/dev/vda"\n'
        f'disk = [ "vdev=xvda,access=rw,type=xenbus,target=nbd+unix:///root?socket={nbd_root}" ]\n'
    )
    url = f"nbd+unix:///root?socket={nbd_root}"
    planned = json_of(pvhvm.run("create", str(cfg), "--dry-run", "--json"))
    assert planned["disks"][0]["target"] == url  # type: ignore[index]  # not made a path
    domain.append("nbd-root")
    pvhvm.run("create", str(cfg), "--accel", "tcg")
    argv = [arg for pid in _qemu_processes(pvhvm.state) for arg in _cmdline(pid)
            if "guest=nbd-root," in " ".join(_cmdline(pid))]
    drive = next(arg for arg in argv if arg.startswith("id=disk-xvda,"))
    assert "file.driver=nbd" in drive and f"file.server.path={nbd_root}" in drive
    report = pvhvm.wait_report("nbd-root")
    assert report.root == "/dev/vda"
    assert {b.name: b.driver for b in report.blocks} == {"vda": "virtio_blk"}
