"""``pvhvm image``: build the guest image kit."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console

from pvhvm.errors import PvhvmError
from pvhvm.guest.installed import VARIANTS, build_installed
from pvhvm.guest.kit import OUTPUTS, build_kit
from pvhvm.guest.shapes import SHAPE_VARIANTS, build_shape, shape_of
from pvhvm.guest.xenhost import build_xenhost


@contextlib.contextmanager
def _building(console: Console, what: str) -> Iterator[Callable[[str], None]]:
    """A spinner saying ``what``; the build's progress function updates it and logs each
    step."""
    with console.status(what) as status:

        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        yield progress


def _console() -> Console:
    if sys.stdout.isatty():
        return Console(log_path=False)
    return Console(width=100, log_path=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def image() -> None:
    """The guest image kit (kernel, initramfs, rootfs, bootable disk)."""


@image.command("build")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Rebuild even when the kit is up to date.")
def build(directory: Path, force: bool) -> None:
    """Build the kit into DIRECTORY (a no-op when it is already built)."""
    if directory.exists() and not directory.is_dir():
        raise click.ClickException(f"{directory} exists and is not a directory")
    console = _console()
    try:
        with _building(console, "building the guest image kit") as progress:
            kit = build_kit(directory, force=force, progress=progress)
    except PvhvmError as err:
        raise click.ClickException(str(err)) from err
    for name in OUTPUTS:
        path = kit.directory / name
        console.print(f"{path}  {path.stat().st_size // 1024} KiB")


@image.command("build-installed")
@click.argument("directory", type=click.Path(path_type=Path), required=False)
@click.option("--variant", type=click.Choice((*VARIANTS, *SHAPE_VARIANTS)), default="ide",
              show_default=True,
              help="ide: initramfs without virtio (installed on IDE); full: MODULES=most; "
                   "shape-lvm|xfs|btrfs|xenpv: the shapes of pvhvm.guest.shapes.")
@click.option("--force", is_flag=True, help="Rebuild even when the disk is up to date.")
def build_installed_command(directory: Path | None, variant: str, force: bool) -> None:
    """Build an installed Debian 12 guest disk into DIRECTORY (default
    ~/.cache/pvhvm/installed/VARIANT); needs root (debootstrap, chroot)."""
    if directory is not None and directory.exists() and not directory.is_dir():
        raise click.ClickException(f"{directory} exists and is not a directory")
    console = _console()
    try:
        with _building(console, f"building the installed guest ({variant})") as progress:
            shape = shape_of(variant)
            if shape is not None:
                guest = build_shape(shape, directory, force=force, progress=progress)
            else:
                guest = build_installed(directory, variant, force=force, progress=progress)
        manifest = guest.manifest()
    except PvhvmError as err:
        raise click.ClickException(str(err)) from err
    root = manifest.get("root_device") or manifest.get("summary")
    console.print(f"{guest.disk}  {guest.disk.stat().st_size // (1 << 20)} MiB "
                  f"(kernel {manifest['kernel_release']}, root {root}, "
                  f"UUID {manifest['root_uuid']})")


@image.command("build-xenhost")
@click.option("--force", is_flag=True, help="Rebuild the image even when it is up to date.")
def build_xenhost_command(force: bool) -> None:
    """Build a Xen 4.17 host to run in QEMU: Debian's hypervisor, a dom0 derived from the
    installed guest's debootstrap with Xen's toolstack and this pvhvm, under
    ~/.cache/pvhvm/xenhost; needs root (chroot). dev/xenhost boots it."""
    console = _console()
    try:
        with _building(console, "building the Xen host") as progress:
            host = build_xenhost(force=force, progress=progress)
        manifest = host.manifest()
    except PvhvmError as err:
        raise click.ClickException(str(err)) from err
    console.print(f"{host.directory}  (Xen {manifest['hypervisor']}, dom0 kernel "
                  f"{manifest['kernel_release']})")
