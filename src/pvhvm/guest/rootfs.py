"""Staging trees for the guest (busybox, kernel modules, scripts) and the ext4 root image.

The root image is made with ``mke2fs -t ext4 -d <staging>`` (e2fsprogs >= 1.43): no mount, no
loop device, no root. The guest mounts it read-only; /tmp and /run are tmpfs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pvhvm.errors import GuestImageError
from pvhvm.guest.debs import require_tool, run
from pvhvm.guest.modules import ModuleInfo, modules_dep, read_module_bytes

ROOT_LABEL = "pvhvm-root"
ROOTFS_SIZE_MIB = 64


def guest_file(name: str) -> bytes:
    """A file shipped as package data under ``pvhvm/guest/files``."""
    try:
        return resources.files("pvhvm.guest").joinpath("files", name).read_bytes()
    except OSError as err:
        raise GuestImageError(f"package data file {name!r} missing: {err}") from err


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def busybox_applets(busybox: Path) -> list[str]:
    """Applet paths (``bin/sh``, ``sbin/init``, ...) from ``busybox --list-full``.

    busybox-static is a static x86-64 binary, so the host can run it to list itself.
    """
    out = run([str(busybox), "--list-full"])
    applets = [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]
    if "bin/sh" not in applets:
        raise GuestImageError(f"{busybox} --list-full lists no bin/sh")
    return applets


def stage_busybox(staging: Path, busybox: Path, applets: Iterable[str]) -> None:
    """``/bin/busybox`` and a symlink for every applet."""
    write(staging / "bin" / "busybox", busybox.read_bytes(), 0o755)
    for applet in applets:
        link = staging / applet
        if link.exists() or link.is_symlink() or applet == "bin/busybox":
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(staging / "bin" / "busybox", link.parent))


def stage_modules(
    staging: Path, module_dir: Path, release: str, modules: list[ModuleInfo],
    load_lists: dict[str, list[ModuleInfo]],
) -> None:
    """Copy modules (decompressed) to ``/lib/modules/<release>``, with modules.dep and the
    ordered ``pvhvm-<name>.load`` lists (relative paths) that the guest's scripts insmod."""
    target = staging / "lib" / "modules" / release
    for module in modules:
        write(target / module.installed_relpath, read_module_bytes(module_dir / module.relpath))
    (target / "modules.dep").write_text(modules_dep(modules))
    for extra in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (module_dir / extra).exists():
            shutil.copyfile(module_dir / extra, target / extra)
    for name, ordered in load_lists.items():
        text = "".join(m.installed_relpath + "\n" for m in ordered)
        (target / f"pvhvm-{name}.load").write_text(text)


def stage_rootfs_files(staging: Path) -> None:
    """The directories and scripts of the root filesystem (busybox init, rcS, report)."""
    for name in ("dev", "proc", "sys", "tmp", "run", "root", "mnt", "var/log", "etc/pvhvm"):
        (staging / name).mkdir(parents=True, exist_ok=True)
    (staging / "tmp").chmod(0o1777)
    write(staging / "etc" / "inittab", guest_file("inittab"))
    write(staging / "etc" / "pvhvm" / "rcS", guest_file("rcS"), 0o755)
    write(staging / "etc" / "pvhvm" / "report.sh", guest_file("report.sh"), 0o755)
    write(staging / "etc" / "acpi" / "PWRF" / "00000080", guest_file("acpi-power"), 0o755)
    write(staging / "etc" / "pvhvm" / "uevent", guest_file("uevent"), 0o755)
    write(staging / "etc" / "passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    write(staging / "etc" / "group", b"root:x:0:\n")
    write(staging / "etc" / "hostname", b"pvhvm-guest\n")
    write(staging / "etc" / "profile", b"export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1='# '\n")


def make_ext4(staging: Path, output: Path, *, size_mib: int = ROOTFS_SIZE_MIB,
              label: str = ROOT_LABEL) -> None:
    """An ext4 image of ``size_mib`` MiB, labelled ``label``, filled from ``staging``."""
    mke2fs = require_tool("mke2fs", "e2fsprogs")
    if output.exists():
        output.unlink()
    run([
        mke2fs, "-q", "-F", "-t", "ext4", "-L", label, "-d", str(staging),
        "-E", "root_owner=0:0", "-m", "0", str(output), f"{size_mib}M",
    ])
