"""check's three answers on small images built here with the real tools (mke2fs -d, sfdisk,
mkfs.xfs, mkfs.btrfs; an LVM2 physical-volume label as pvcreate writes it), through the CLI:
boots (exit 0), will not boot (exit 1, positive evidence only), cannot tell (exit 2); create
refuses only the second."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.cli.main import main
from pvhvm.inspect import check as checker
from pvhvm.inspect.check import Severity, check_plan
from tests import jsonout
from tests.inspect.conftest import (
    IDE_MODULES,
    MIB,
    PV_MODULES,
    ROOT_UUID,
    installed_image,
    make_ext4,
    partitioned,
    run,
    write_tree,
)
from tests.inspect.test_check import plan_for


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _cfg(tmp_path: Path, disk: str, name: str = "g", extra: str = "") -> Path:
    cfg = tmp_path / f"{name}.cfg"
    if "type=" not in disk:
        disk += ",type=xenbus"  # PV: xl would emulate an untyped xvda (issue 20)
    cfg.write_text(f'name = "{name}"\nbuilder = "hvm"\nmemory = 128\nboot = "c"\n'
                   f'disk = [ "{disk}" ]\nvif = [ "type=xenbus" ]\n{extra}')
    return cfg


def test_initramfs_tools_without_virtio_will_not_boot(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    image = installed_image(tmp_path / "ide", root=f"UUID={ROOT_UUID}", fstab_boot="LABEL=boot")
    code, out, err = cli(capsys, "guest", "check", str(_cfg(tmp_path, f"{image.path},raw,xvda,w")),
                         "--json")
    assert code == 1, err
    document = jsonout.result(out)
    assert document["verdict"] == "will-not-boot"
    assert len(document["reasons"]) == 1
    assert "built by initramfs-tools" in document["reasons"][0]
    assert "lacks virtio_pci and virtio_blk" in document["reasons"][0]


@pytest.mark.parametrize("where", ["lib/modules", "builtin-config", "dracut-xz"])
def test_with_the_driver_it_boots(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  where: str) -> None:
    if where == "lib/modules":
        image = installed_image(tmp_path / "pv", modules=(*IDE_MODULES, *PV_MODULES),
                                root=f"UUID={ROOT_UUID}", fstab_boot="LABEL=boot",
                                extra_fstab="")
    elif where == "builtin-config":  # no virtio module anywhere: built into the kernel
        image = installed_image(tmp_path / "pv", root=f"UUID={ROOT_UUID}",
                                fstab_boot="LABEL=boot", builtin=("VIRTIO_PCI", "VIRTIO_BLK"))
    else:
        image = installed_image(tmp_path / "pv", modules=(*IDE_MODULES, *PV_MODULES),
                                root=f"UUID={ROOT_UUID}", fstab_boot="LABEL=boot",
                                generator="dracut", compression="xz")
    cfg = _cfg(tmp_path, f"{image.path},raw,xvda,w")
    code, out, _ = cli(capsys, "guest", "check", str(cfg), "--json")
    document = jsonout.result(out)
    # the swap line's /dev/sda5 is a note: swap is wanted, not required
    assert code == 0 and document["verdict"] == "boots", document
    assert document["reasons"] == []
    code, out, _err = cli(capsys, "guest", "check", str(cfg))
    assert code == 0 and "g: boots (" in out


def test_dracut_without_virtio_will_not_boot(tmp_path: Path) -> None:
    image = installed_image(tmp_path / "d", generator="dracut", root=f"UUID={ROOT_UUID}",
                            fstab_boot="LABEL=boot")
    result = check_plan(plan_for(tmp_path, [f"{image.path},raw,xvda,w"]))
    assert result.verdict is checker.Verdict.WILL_NOT_BOOT
    assert "built by dracut" in result.reasons[0].message


def test_an_init_of_unknown_ways_is_cannot_tell_not_will_not_boot(tmp_path: Path) -> None:
    """No generator recognised and no virtio module anywhere: its own init may have other
    ways (a kernel with it built in, a module under another name); not a refusal."""
    image = installed_image(tmp_path / "b", generator="busybox", root=f"UUID={ROOT_UUID}",
                            fstab_boot="LABEL=boot")
    result = check_plan(plan_for(tmp_path, [f"{image.path},raw,xvda,w"]))
    assert result.verdict is checker.Verdict.CANNOT_TELL, [p.line() for p in result.problems]
    assert "unknown ways" in result.reasons[0].message


def _busybox_ramdisk(work: Path, layout: dict[str, bytes | str]) -> Path:
    """A direct-boot ramdisk whose own init insmods modules from wherever it keeps them."""
    tree = write_tree(work / "busybox-tree", {
        "init": "#!/bin/sh\nfor m in /modules/*.ko*; do insmod $m; done\nexec switch_root "
                "/newroot /sbin/init\n", "bin/busybox": b"\x7fELF", **layout})
    done = subprocess.run(["sh", "-c", "find . | cpio --quiet -o -H newc | gzip -9n"],
                          cwd=tree, capture_output=True, check=True)
    path = work / "initrd.gz"
    path.write_bytes(done.stdout)
    return path


def test_own_init_with_modules_outside_lib_modules_and_no_root_creates(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The guest the old check refused: modules at /modules/*.ko.xz, no root= at all."""
    rootfs = make_ext4(tmp_path / "root.ext4", write_tree(tmp_path / "rt", {
        "etc/inittab": "::sysinit:/etc/rcS\nttyS0::respawn:/sbin/getty 115200 ttyS0\n",
        "etc/fstab": "/dev/vda / ext4 defaults 0 1\n"}), 8)
    ramdisk = _busybox_ramdisk(tmp_path, {
        "modules/virtio.ko.xz": b"\xfd7zXZ", "modules/virtio_ring.ko.xz": b"\xfd7zXZ",
        "modules/virtio_pci.ko.xz": b"\xfd7zXZ", "modules/virtio_blk.ko.zst": b"(\xb5/\xfd",
    })
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    cfg = _cfg(tmp_path, f"{rootfs},raw,xvda,w", extra=(
        f'kernel = "{kernel}"\nramdisk = "{ramdisk}"\nextra = "console=ttyS0"\n'))
    code, out, _err = cli(capsys, "guest", "check", str(cfg), "--json")
    document = jsonout.result(out)
    assert document["verdict"] == "boots" and code == 0, document
    notes = [p["message"] for p in document["problems"]]
    assert any("no root=" in n for n in notes)  # said, as advice
    # without any virtio module: an init of its own, so cannot tell, never a refusal
    bare = _busybox_ramdisk(tmp_path / "bare", {"modules/e1000.ko": b"\x7fELF"})
    cfg = _cfg(tmp_path, f"{rootfs},raw,xvda,w", "bare", extra=(
        f'kernel = "{kernel}"\nramdisk = "{bare}"\nextra = "console=ttyS0"\n'))
    code, out, _ = cli(capsys, "guest", "check", str(cfg), "--json")
    assert code == 2 and jsonout.result(out)["verdict"] == "cannot-tell"


def _lvm_image(path: Path) -> Path:
    """An MBR disk whose one partition (type 8e) is an LVM2 physical volume: the label
    pvcreate writes in sector 1 ("LABELONE", then "LVM2 001" at byte 24)."""
    pv = path.with_suffix(".pv")
    label = bytearray(1024)
    label[512:520] = b"LABELONE"
    label[512 + 24:512 + 32] = b"LVM2 001"
    with open(pv, "wb") as stream:
        stream.write(bytes(label))
        stream.truncate(8 * MIB)
    return partitioned(path, "dos", [(pv, 8, "8e")])


def _mkfs_image(path: Path, kind: str) -> Path:
    with open(path, "wb") as stream:
        stream.truncate((320 if kind == "xfs" else 128) * MIB)
    run(f"mkfs.{kind}", "-q", "-f", str(path)) if kind == "xfs" else run(
        "mkfs.btrfs", "-q", "-f", str(path))
    return path


@pytest.mark.parametrize("kind", ["lvm", "xfs", "btrfs"])
def test_unreadable_root_is_cannot_tell(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        kind: str) -> None:
    image = (_lvm_image(tmp_path / "lvm.img") if kind == "lvm"
             else _mkfs_image(tmp_path / f"{kind}.img", kind))
    cfg = _cfg(tmp_path, f"{image},raw,xvda,w")
    code, out, err = cli(capsys, "guest", "check", str(cfg))
    assert code == 2, (out, err)
    assert "g: cannot tell (nothing readable" in out
    said = {"lvm": "LVM2_member is not read", "xfs": "xfs is not read",
            "btrfs": "btrfs is not read"}[kind]
    assert any(line.startswith("cannot-tell: disk xvda: no readable Linux root filesystem")
               and said in line for line in err.splitlines()), err
    code, out, _ = cli(capsys, "guest", "check", str(cfg), "--json")
    document = jsonout.result(out)
    assert code == 2 and document["verdict"] == "cannot-tell" and document["boots"] is False
    assert said in document["reasons"][0]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short private state directory; no QEMU or supervisor is left when it goes."""
    root = Path(tempfile.mkdtemp(prefix="pvs-", dir="/tmp"))
    yield root
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _running_under(root):
        time.sleep(0.2)
    left = _running_under(root)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes left behind: {left}"


def _running_under(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(root) in (entry / "cmdline").read_bytes().decode(errors="replace") or \
                        str(root) in (entry / "environ").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return [p for p in found if p != os.getpid()]


def test_create_goes_ahead_on_cannot_tell_with_a_note(tmp_path: Path, state_dir: Path) -> None:
    image = _lvm_image(tmp_path / "lvm.img")
    cfg = _cfg(tmp_path, f"{image},raw,xvda,w", "lvmguest")
    env = {**os.environ, "PVHVM_STATE_DIR": str(state_dir), "PVHVM_HOSTD_LINGER": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pvhvm", "create", str(cfg), "--paused",
                           "--accel", "tcg"], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    try:
        assert done.returncode == 0, done.stderr
        assert any(line.startswith("cannot-tell: disk xvda: no readable Linux root filesystem")
                   for line in done.stderr.splitlines()), done.stderr
        assert "domain lvmguest" in done.stderr
    finally:
        subprocess.run([sys.executable, "-m", "pvhvm", "destroy", "lvmguest"],
                       capture_output=True, env=env, timeout=60, check=False)


def test_fatal_stays_fatal_and_notes_stay_notes(tmp_path: Path) -> None:
    """The device-name findings are unchanged: a kernel name that will not exist is fatal."""
    image = installed_image(tmp_path / "n", modules=(*IDE_MODULES, *PV_MODULES))
    result = check_plan(plan_for(tmp_path, [f"{image.path},raw,xvda,w"]))
    assert result.verdict is checker.Verdict.WILL_NOT_BOOT
    assert {p.subject for p in result.reasons} == {"root=/dev/sda2", "fstab line 3 (/boot)"}
    assert all(p.severity is Severity.FATAL for p in result.reasons)
