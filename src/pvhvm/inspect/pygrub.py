"""``bootloader = "pygrub"`` on the qemu platform: find the kernel as pygrub does.

Xen's pygrub reads the guest's own GRUB (grub.cfg, menu.lst) or extlinux config from its first
disk, copies the default entry's kernel and initrd out to the host and hands them to the
domain builder with the entry's command line. pvhvm does the same offline (pvhvm.inspect reads
the image without mounting it) before the plan is made, so the plan boots that kernel
directly. The copies live under the user's cache directory, one folder per domain name,
replaced at each create.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from pvhvm.config.domain import DomainConfig
from pvhvm.errors import ConfigError, printable
from pvhvm.hostfs import cache_home
from pvhvm.inspect.errors import ImageFormatError, InspectError
from pvhvm.inspect.image import find_boot_entry

BOOTLOADERS = ("pygrub",)
#: the names the extracted kernel and initrd get in the domain's cache folder
KERNEL_NAME = "kernel"
INITRD_NAME = "initrd"


def pygrub_cache() -> Path:
    return cache_home() / "pygrub"


def run_bootloader(config: DomainConfig, cache: Path | None = None) -> DomainConfig:
    """``config`` with kernel, ramdisk and cmdline taken from its boot disk's default entry,
    when it names a bootloader and no kernel; unchanged otherwise. Raises ConfigError."""
    if config.bootloader is None or config.kernel is not None:
        return config
    name = Path(config.bootloader).name
    if name not in BOOTLOADERS:
        raise ConfigError(
            f"bootloader = {config.bootloader!r}: pvhvm reads the guest's boot loader config "
            "as pygrub does (bootloader = \"pygrub\"); set kernel= and ramdisk= for another",
            file=config.file,
        )
    disks = [d for d in config.disks if not d.value.cdrom and d.value.target]
    if not disks:
        raise ConfigError("bootloader = 'pygrub': the guest has no disk to boot from",
                          file=config.file)
    disk = disks[0]
    target = Path(disk.value.target)
    if disk.value.is_script_backed or not target.exists():
        raise disk.position.error(
            f"bootloader = 'pygrub': disk {disk.value.vdev!r} ({disk.value.target}) is not a "
            "file or block device pvhvm can read the boot loader config from"
        )
    folder = (cache or pygrub_cache()) / config.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        boot = find_boot_entry(target, folder)
        # find_boot_entry made one temporary directory (a name of its own) in the new folder
        kernel, initrd = _own_names(boot.kernel, boot.initrd, next(folder.iterdir()))
    except InspectError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise disk.position.error(f"bootloader = 'pygrub': {err}") from err
    cmdline = " ".join(part for part in (boot.cmdline, config.cmdline or "") if part)
    said = (f"bootloader = 'pygrub': booting entry {printable(boot.entry.title)!r} "
            f"({printable(boot.entry.kernel)}) of disk {disk.value.vdev}, as pygrub would")
    return replace(
        config, kernel=str(kernel), ramdisk=None if initrd is None else str(initrd),
        cmdline=cmdline or None, warnings=(*config.warnings, said),
    )


def _own_names(kernel: Path, initrd: Path | None, folder: Path) -> tuple[Path, Path | None]:
    """The extracted kernel and initrd renamed to names pvhvm chooses (``kernel``,
    ``initrd``) in ``folder``, so no file name the guest chose reaches QEMU's command line
    (issue 18: a comma in an initrd name split ``-initrd`` and loaded a host file)."""
    own_kernel = folder / KERNEL_NAME
    own_initrd = None if initrd is None else folder / INITRD_NAME
    try:
        for found, own in ((kernel, own_kernel), (initrd, own_initrd)):
            if found is not None and own is not None:
                if found.is_symlink() or not found.is_file():
                    raise ImageFormatError(f"{printable(found.name)!r} is not a regular file")
                os.replace(found, own)
    except OSError as err:
        raise ImageFormatError(f"cannot keep the extracted kernel: {err}") from err
    for leftover in folder.iterdir():
        if leftover not in (own_kernel, own_initrd):
            shutil.rmtree(leftover, ignore_errors=True)
    return own_kernel, own_initrd
