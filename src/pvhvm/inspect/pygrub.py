"""``bootloader = "pygrub"`` on the qemu platform: find the kernel as pygrub does.

Xen's pygrub reads the guest's own GRUB (grub.cfg, menu.lst) or extlinux config from its first
disk, copies the default entry's kernel and initrd out to the host and hands them to the
domain builder with the entry's command line. pvhvm does the same offline (pvhvm.inspect reads
the image without mounting it) before the plan is made, so the plan boots that kernel
directly. The copies live under the user's cache directory, one folder per domain name,
replaced at each create.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from pvhvm.config.domain import DomainConfig
from pvhvm.errors import ConfigError
from pvhvm.hostfs import cache_home
from pvhvm.inspect.errors import InspectError
from pvhvm.inspect.image import find_boot_entry

BOOTLOADERS = ("pygrub",)


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
    except InspectError as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise disk.position.error(f"bootloader = 'pygrub': {err}") from err
    cmdline = " ".join(part for part in (boot.cmdline, config.cmdline or "") if part)
    said = (f"bootloader = 'pygrub': booting entry {boot.entry.title!r} ({boot.entry.kernel}) "
            f"of disk {disk.value.vdev}, as pygrub would")
    return replace(
        config, kernel=str(boot.kernel), ramdisk=None if boot.initrd is None else str(boot.initrd),
        cmdline=cmdline or None, warnings=(*config.warnings, said),
    )
