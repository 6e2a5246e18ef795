"""The host tools that parse guest images run confined: the image as a descriptor, as
nobody, in namespaces of their own, with a timeout that kills their process group."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pvhvm.inspect.errors import ImageUnreadableError
from pvhvm.inspect.extfs import ExtFilesystem
from pvhvm.inspect.sandbox import LANDLOCK_ABI, NOBODY, ImageHandle, run_tool, stream_tool
from tests.inspect.conftest import make_ext4, write_tree

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


@pytest.fixture
def private_image(tmp_path: Path) -> Path:
    """A root-owned 0600 ext4 image in a 0700 directory: only root can open it by path."""
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    tree = write_tree(tmp_path / "tree", {"etc/hostname": "guest\n", "etc/fstab": "\n"})
    image = make_ext4(directory / "disk.img", tree, 8)
    image.chmod(0o600)
    return image


@needs_root
def test_debugfs_reads_a_private_image_as_nobody(private_image: Path, tmp_path: Path) -> None:
    handle = ImageHandle(private_image)
    assert not handle.privileged, handle.confinement
    assert "nobody" in handle.confinement
    fs = ExtFilesystem(private_image, handle=handle)
    assert fs.read_text("/etc/hostname") == "guest\n"
    # the same tool, asked what it is: nobody, no groups, no new privileges, other namespaces
    host_dir = Path(tempfile.mkdtemp(prefix="pvhvm-sandbox-", dir="/tmp"))
    host_dir.chmod(0o755)  # root may write here, nobody may not
    script = (
        "id -u; id -G; grep NoNewPrivs /proc/self/status | tr -d '\\t'\n"
        "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts\n"
        f"head -c 4 {handle.child_path} >/dev/null && echo read-ok\n"
        f"(echo x >> {handle.child_path}) 2>/dev/null || echo write-refused\n"
        f"cat {private_image} >/dev/null 2>&1 || echo path-refused\n"
        f"touch {host_dir}/written 2>/dev/null || echo host-write-refused\n"
    )
    try:
        out, err, status = run_tool(["sh", "-c", script], what="probe", image=handle)
        assert not (host_dir / "written").exists()
    finally:
        shutil.rmtree(host_dir)
    assert status == 0, err
    lines = out.decode().split()
    assert lines[0] == lines[1] == str(NOBODY)
    assert "NoNewPrivs:1" in lines
    mine = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("net", "ipc", "uts")]
    assert not set(mine) & set(lines), (mine, lines)
    assert {"read-ok", "write-refused", "path-refused", "host-write-refused"} <= set(lines)
    assert stat.S_IMODE(private_image.stat().st_mode) == 0o600  # the image is untouched
    handle.close()


def test_a_tool_that_hangs_is_killed_with_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pidfile}; sleep 300"
    started = time.monotonic()
    with pytest.raises(ImageUnreadableError, match="took over 1 s; killed"):
        run_tool(["sh", "-c", script], what="hang", timeout=1)
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed; reaped by init a moment later
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().split(")")[1].split()[0] == "Z"


def test_dump_is_written_by_pvhvm_never_through_a_planted_link(private_image: Path,
                                                             tmp_path: Path) -> None:
    fs = ExtFilesystem(private_image)
    target = tmp_path / "host-file"
    target.write_text("host\n")
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(ImageUnreadableError, match="cannot write"):
        fs.dump("/etc/hostname", link)
    assert target.read_text() == "host\n"
    assert fs.dump("/etc/hostname", tmp_path / "copy")
    assert (tmp_path / "copy").read_text() == "guest\n"
    assert not fs.dump("/etc/missing", tmp_path / "none") and not (tmp_path / "none").exists()


@needs_root
def test_where_no_unprivileged_handover_works_root_keeps_no_capability() -> None:
    """A character device (devtmpfs has no idmapped mounts): the fallback runs as uid 0 with
    every capability gone, no new privileges, and says so."""
    handle = ImageHandle(Path("/dev/zero"))
    assert handle.privileged
    assert "as root without capabilities" in handle.confinement
    assert "mount_setattr" in handle.confinement
    out, err, status = run_tool(
        ["sh", "-c", "id -u; grep -E 'Cap(Eff|Prm|Bnd)|NoNewPrivs' /proc/self/status; "
         f"head -c 3 {handle.child_path} | od -An -tx1"], what="probe", image=handle)
    assert status == 0, err
    lines = [" ".join(line.split()) for line in out.decode().splitlines()]
    assert lines[0] == "0"
    assert {"CapPrm: 0000000000000000", "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000", "NoNewPrivs: 1", "00 00 00"} <= set(lines), lines
    handle.close()


def test_output_is_capped_on_a_pipe_and_in_a_file(tmp_path: Path) -> None:
    with pytest.raises(ImageUnreadableError, match="printed over 1 MiB; killed"):
        run_tool(["head", "-c", "8M", "/dev/zero"], what="flood", max_output=1 << 20)
    image = tmp_path / "img"
    image.write_bytes(b"\0" * 4096)
    handle = ImageHandle(image)
    out = tmp_path / "out"
    with open(out, "wb") as stream, pytest.raises(ImageUnreadableError,
                                                  match="wrote over 1 MiB; killed"):
        run_tool(["head", "-c", "8M", "/dev/zero"], what="flood", image=handle,
                 stdout=stream.fileno(), max_output=1 << 20)
    assert out.stat().st_size <= 1 << 20
    handle.close()


@needs_root
@pytest.mark.skipif(LANDLOCK_ABI < 6, reason="this kernel has no Landlock ABI 6 (Linux 6.12)")
def test_a_landlocked_tool_writes_nothing_and_signals_no_one_outside(
        private_image: Path, tmp_path: Path) -> None:
    """What nobody could still do without Landlock: write in a world-writable directory, make
    a FIFO there, signal another process of nobody's; with it, only reading (and /dev/null)."""
    handle = ImageHandle(private_image)
    assert f"Landlocked (ABI {LANDLOCK_ABI})" in handle.confinement
    shared = Path(tempfile.mkdtemp(prefix="pvhvm-landlock-", dir="/tmp"))
    shared.chmod(0o1777)
    outside = subprocess.Popen(["sleep", "60"], user=NOBODY, group=NOBODY, extra_groups=[])
    script = (
        f"head -c 4 {handle.child_path} >/dev/null && echo read-ok\n"
        f"(echo x > {shared}/written) 2>/dev/null || echo write-refused\n"
        f"mkfifo {shared}/fifo 2>/dev/null || echo fifo-refused\n"
        f"kill -0 {outside.pid} 2>/dev/null || echo signal-refused\n"
        "sleep 0 & wait $! && kill -0 $$ && echo own-signal-ok\n"
    )
    try:
        out, err, status = run_tool(["sh", "-c", script], what="probe", image=handle)
        assert not list(shared.iterdir())
    finally:
        outside.kill()
        outside.wait()
        shutil.rmtree(shared)
        handle.close()
    assert status == 0, err
    assert set(out.decode().split()) == {"read-ok", "write-refused", "fifo-refused",
                                         "signal-refused", "own-signal-ok"}


@pytest.mark.skipif(LANDLOCK_ABI < 1, reason="this kernel has no Landlock")
def test_a_decompressor_is_landlocked_too(tmp_path: Path) -> None:
    target = tmp_path / "written"
    script = f"cat >/dev/null; (echo x > {target}) 2>/dev/null || printf refused"
    assert b"".join(stream_tool(["sh", "-c", script], memoryview(b"data"),
                                what="probe")) == b"refused"
    assert not target.exists()
