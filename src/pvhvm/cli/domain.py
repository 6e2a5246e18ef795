"""Domain lifecycle verbs as xl users know them: list, console, shutdown, pause, unpause,
reboot, reset, vncdisplay, vncviewer, block-list, network-list, block-attach, block-detach,
network-attach, network-detach, cd-insert, cd-eject, mem-set, vcpu-set, migrate, save,
restore. Thin: each asks the platform that holds the domain (pvhvm.platforms), which says in
one line when a verb is not on it.

Each verb is loaded when named (main.LazyGroup, main.DOMAIN_VERBS): ``create`` needs none."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pvhvm.cli import output
from pvhvm.cli.complete import complete_domain
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import definitions, resolve_name, resolve_names
from pvhvm.cli.output import print_json
from pvhvm.errors import InputError
from pvhvm.platforms.base import DETACH_TIMEOUT, SHUTDOWN_TIMEOUT, DeviceChange, DomainPlatform

if TYPE_CHECKING:
    from pvhvm.runtime.save import MigrationProgress
    from pvhvm.runtime.savefile import DomainImage


def _holder(name: str) -> DomainPlatform:
    """The platform that holds domain NAME (DomainError when none does)."""
    return current_platforms().locate(name)


@click.command(name="list")
@click.argument("names", nargs=-1, metavar="[NAME]...", callback=resolve_names,
                shell_complete=complete_domain)
@click.option("-l", "--long", "long_", is_flag=True, help="Full records as JSON (xl list -l).")
@click.option("--json", "as_json", is_flag=True, help="The rows as one JSON array.")
@click.option("-a", "--all", "all_", is_flag=True,
              help="Defined domains that are not running too, shut off (virsh list --all).")
def list_cmd(names: tuple[str, ...], long_: bool, as_json: bool, all_: bool) -> None:
    """List domains as xl list prints them (Name ID Mem VCPUs State Time(s))."""
    from pvhvm.runtime import listing  # with the listings: create does not need it

    # no names: platform by platform, qemu-platform domains then xen-platform ones
    running = [name for name in names if current_platforms().holder(name) is not None]
    records = ([_holder(name).find(name) for name in running] if names
               else current_platforms().domains())
    # named, or --all: defined domains that are not running, shut off
    shown = {record.name for record in records}
    inactive = [d for d in definitions().definitions()
                if d.name not in shown and (d.name in names if names else all_)]
    if long_:
        print_json(listing.long_list(records) + listing.long_defined(inactive))
        return
    rows = listing.list_rows(records, current_platforms().cpu_seconds)
    if inactive:
        from pvhvm.runtime import hostsvc  # reads their configs (the parsers)

        rows += listing.defined_rows(inactive, hostsvc.config_size)
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    click.echo(listing.format_list(rows), nl=False)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def console(name: str) -> None:
    """Attach to domain NAME's serial console; ^] detaches."""
    _holder(name).console(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("-w", "--wait", is_flag=True, help="Wait until the domain has shut down.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True),
    default=SHUTDOWN_TIMEOUT, show_default=True, help="Seconds -w waits.",
)
def shutdown(name: str, wait: bool, timeout: float) -> None:
    """Ask domain NAME to shut down (the ACPI power button)."""
    _holder(name).shutdown(name, wait=wait, timeout=timeout)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def pause(name: str) -> None:
    """Pause domain NAME (its vCPUs stop)."""
    _holder(name).pause(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def unpause(name: str) -> None:
    """Unpause domain NAME."""
    _holder(name).unpause(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def reboot(name: str) -> None:
    """Ask domain NAME to reboot (the ACPI power button; its guest's power-off becomes a
    reboot, as virsh reboot). A paused domain is refused."""
    _holder(name).reboot(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def reset(name: str) -> None:
    """Reset domain NAME at once, as virsh reset (the guest is not asked; on_reboot=destroy
    ends it)."""
    _holder(name).reset(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def vncdisplay(name: str) -> None:
    """Print HOST:DISPLAY of domain NAME's VNC server (the port QEMU chose), as virsh
    vncdisplay."""
    click.echo(_holder(name).vnc_display(name))


#: VNC viewers that take HOST:DISPLAY, first found on PATH is run (Debian: tigervnc-viewer,
#: xtightvncviewer, ssvnc)
VNC_VIEWERS = ("vncviewer", "xtightvncviewer", "xvnc4viewer")


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def vncviewer(name: str) -> None:
    """Run a VNC viewer on domain NAME's display, as xl vncviewer (HOST:DISPLAY from
    vncdisplay; the viewer asks for the password, if the config set one)."""
    display = _holder(name).vnc_display(name)
    viewer = next((found for tool in VNC_VIEWERS if (found := shutil.which(tool))), None)
    if viewer is None:
        raise InputError(f"no VNC viewer on PATH ({', '.join(VNC_VIEWERS)}; Debian: "
                         f"apt install tigervnc-viewer); domain {name}'s display is {display}")
    os.execv(viewer, [viewer, display])


@click.command(name="block-list")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def block_list(name: str, as_json: bool) -> None:
    """List domain NAME's disks: vdev, devid, ioemu|xenbus, QEMU device or xenbus backend,
    target."""
    from pvhvm.runtime import listing

    devices = _holder(name).block_devices(name)
    if as_json:
        print_json([d.to_json() for d in devices])
        return
    click.echo(listing.format_block_list(devices), nl=False)


@click.command(name="network-list")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def network_list(name: str, as_json: bool) -> None:
    """List domain NAME's NICs: index, ioemu|xenbus, QEMU device or xenbus backend, MAC,
    bridge."""
    from pvhvm.runtime import listing

    devices = _holder(name).network_devices(name)
    if as_json:
        print_json([d.to_json() for d in devices])
        return
    click.echo(listing.format_network_list(devices), nl=False)


@contextmanager
def stream_progress(description: str) -> Iterator[Callable[[MigrationProgress], None]]:
    """A rich progress bar of guest memory moving (QMP query-migrate's ram figures), shown
    from the first reading on (checks that fail before any memory moves show none)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeElapsedColumn(),
                        console=output.console(stderr=True), transient=False)
    task = progress.add_task(description, total=None, start=False)

    def update(reading: MigrationProgress) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        # pre-copy sends pages again as the guest dirties them: the bar's total is what has
        # gone plus what is left
        total = reading.transferred + reading.remaining
        progress.update(task, completed=reading.transferred, total=total or None)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


def _said(change: DeviceChange) -> None:
    for warning in change.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(change.summary, err=True)


_detach_timeout = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=DETACH_TIMEOUT,
    show_default=True, help="Seconds to wait for the guest to release the device.")
_force = click.option("--force", is_flag=True,
                      help="Remove it from the domain even if the guest does not release it.")


@click.command(name="block-attach")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("spec")
def block_attach(name: str, spec: str) -> None:
    """Add a PV disk to running domain NAME (SPEC as in a disk= entry; PV only, as xl)."""
    _said(_holder(name).block_attach(name, spec))


@click.command(name="block-detach")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("disk", metavar="VDEV|DEVID")
@_force
@_detach_timeout
def block_detach(name: str, disk: str, force: bool, timeout: float) -> None:
    """Remove a hot-plugged disk from domain NAME (the guest is asked to release it)."""
    _said(_holder(name).block_detach(name, disk, force=force, timeout=timeout))


@click.command(name="network-attach")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("spec", default="", metavar="[VIFSPEC]")
def network_attach(name: str, spec: str) -> None:
    """Add a PV NIC to running domain NAME (VIFSPEC as in a vif= entry; PV only, as xl)."""
    _said(_holder(name).network_attach(name, spec))


@click.command(name="network-detach")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("nic", metavar="DEVID|MAC")
@_force
@_detach_timeout
def network_detach(name: str, nic: str, force: bool, timeout: float) -> None:
    """Remove a hot-plugged NIC from domain NAME."""
    _said(_holder(name).network_detach(name, nic, force=force, timeout=timeout))


@click.command(name="cd-insert")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("vdev")
@click.argument("target")
def cd_insert(name: str, vdev: str, target: str) -> None:
    """Insert medium TARGET (an ISO image) into emulated CD drive VDEV of domain NAME."""
    _said(_holder(name).cd_insert(name, vdev, target))


@click.command(name="cd-eject")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("vdev")
def cd_eject(name: str, vdev: str) -> None:
    """Eject the medium of emulated CD drive VDEV of domain NAME."""
    _said(_holder(name).cd_eject(name, vdev))


@click.command(name="mem-set")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("memory", metavar="MEM")
def mem_set(name: str, memory: str) -> None:
    """Set running domain NAME's memory to MEM (MiB, or with a suffix b k m g t, as xl;
    at most the maxmem it was created with)."""
    from pvhvm.runtime import resize  # with its verbs: it brings asyncio and qemu.qmp

    kib = resize.parse_memory_kib(memory)
    _said(_holder(name).mem_set(name, kib))


@click.command(name="vcpu-set")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("vcpus", metavar="VCPUS")
@click.option("-i", "--ignore-host", is_flag=True,
              help="Allow more vCPUs than this host has CPUs (as xl vcpu-set -i).")
def vcpu_set(name: str, vcpus: str, ignore_host: bool) -> None:
    """Give running domain NAME VCPUS vCPUs (1 up to the maxvcpus it was created with)."""
    from pvhvm.runtime import resize

    count = resize.parse_vcpus(vcpus)
    _said(_holder(name).vcpu_set(name, count, ignore_host=ignore_host))


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("host", required=False)
@click.option("--to", "destination", metavar="URI", default=None,
              help="libvirt: the destination daemon's URI (instead of HOST).")
@click.option("--migrate-uri", metavar="URI", default=None,
              help="With --to: where the destination takes the migration stream "
                   "(tcp://ADDR, unix://PATH).")
@click.option("--unsafe", is_flag=True,
              help="With --to: disks are shared though not on a file system libvirt knows "
                   "as shared.")
@click.option("-s", "ssh_command", metavar="SSHCOMMAND", default=None,
              help="With HOST: run SSHCOMMAND instead of ssh (through sh, as xl); empty: run "
                   "HOST itself instead of 'ssh HOST pvhvm migrate-receive'.")
@click.option("-p", "paused", is_flag=True, help="With HOST: leave the domain paused there.")
@click.option("--json", "as_json", is_flag=True, help="With HOST: the outcome as JSON.")
def migrate(name: str, host: str | None, destination: str | None, migrate_uri: str | None,
            unsafe: bool, ssh_command: str | None, paused: bool, as_json: bool) -> None:
    """Move running domain NAME to another host, live (as xl migrate; disks are shared).

    HOST: over ssh to 'pvhvm migrate-receive' there (xl migrate [-s SSHCOMMAND] [-p]);
    --to URI: a libvirt domain to another libvirt daemon."""
    if (host is None) == (destination is None):
        raise click.UsageError("give HOST (xl migrate, over ssh) or --to URI (libvirt)")
    if destination is not None:
        if ssh_command is not None or paused or as_json:
            raise click.UsageError("-s, -p and --json go with HOST, not --to")
        record = _holder(name).migrate(name, destination, migrate_uri=migrate_uri,
                                       unsafe=unsafe)
        click.echo(f"domain {name} migrated to {destination} ({record.state})", err=True)
        return
    assert host is not None
    if migrate_uri is not None or unsafe:
        raise click.UsageError("--migrate-uri and --unsafe go with --to, not HOST")
    platform = _holder(name)
    with stream_progress(f"migrating {name} to {host}") as progress:
        outcome = platform.migrate_to_host(name, host, ssh_command, paused, progress)
    if as_json:
        print_json(asdict(outcome))
        return
    click.echo(f"domain {name} migrated to {host} ({outcome.state}): total "
               f"{outcome.total_ms} ms, downtime {outcome.downtime_ms} ms, "
               f"{outcome.transferred / 2**20:.1f} MiB sent", err=True)


@click.command(name="migrate-receive")
def migrate_receive() -> None:
    """The receiving end of 'pvhvm migrate NAME HOST', run on HOST over ssh (stdin/stdout
    are the channel)."""
    from pvhvm.runtime.migrate import ReceiverChannel, serve

    channel = ReceiverChannel()

    def receive(image: DomainImage) -> object:
        return current_platforms().get(image.platform).migrate_receive(image, channel)

    serve(channel, receive)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path),
                callback=output.writable_option)
@click.option("-c", "leave_running", is_flag=True,
              help="Leave the domain running after saving it (a checkpoint).")
@click.option("-p", "leave_paused", is_flag=True,
              help="Leave the domain paused after saving it.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as JSON.")
def save(name: str, file: Path, leave_running: bool, leave_paused: bool,
         as_json: bool) -> None:
    """Save domain NAME's state to FILE (as xl save); then the domain is gone, unless -c or
    -p."""
    if leave_running and leave_paused:
        raise click.UsageError("-c and -p exclude each other")
    leave = "running" if leave_running else "paused" if leave_paused else "destroyed"
    platform = _holder(name)
    with stream_progress(f"saving {name}") as progress:
        outcome = platform.save(name, file, leave, progress)
    if as_json:
        print_json({**asdict(outcome), "path": str(outcome.path)})
        return
    click.echo(f"domain {name} saved to {file} ({outcome.size / 2**20:.1f} MiB in "
               f"{outcome.seconds:.1f}s); domain {outcome.domain}", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-p", "paused", is_flag=True, help="Do not unpause the domain after restoring it.")
@click.option("-c", "attach_console", is_flag=True,
              help="Attach to the console once restored (^] detaches).")
@click.option("--connect", metavar="URI", default=None,
              help="The libvirt daemon to restore a libvirt save image on (default "
                   "qemu:///system; never taken from the file).")
@click.option("--json", "as_json", is_flag=True, help="The restored domain's record as JSON.")
def restore(file: Path, paused: bool, attach_console: bool, connect: str | None,
            as_json: bool) -> None:
    """Restore the domain saved in FILE (as xl restore): same devices, MACs and disks,
    planned again from the config FILE carries (a file of yours or root's only)."""
    from pvhvm.runtime.save import peek

    image = peek(file)
    platforms = current_platforms()
    platform = platforms.get(image.platform)
    platforms.check_free(image.name, platform)
    with stream_progress(f"restoring {image.name}") as progress:
        record = platform.restore(file, image, paused, progress, connect)
    if as_json:
        print_json(record.to_json())
    else:
        click.echo(f"domain {record.name} (id {record.domid}) restored from {file} "
                   f"({record.state})", err=True)
    if attach_console:
        platform.console(record.name)


COMMANDS = (list_cmd, console, shutdown, pause, unpause, reboot, reset, vncdisplay, vncviewer,
            block_list, network_list,
            block_attach, block_detach, network_attach, network_detach, cd_insert, cd_eject,
            mem_set, vcpu_set, migrate, migrate_receive, save, restore)
