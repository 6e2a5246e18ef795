"""Domain lifecycle verbs as xl users know them: list, console, shutdown, pause, unpause,
reboot, block-list, network-list, block-attach, block-detach, network-attach, network-detach,
cd-insert, cd-eject, mem-set, vcpu-set, migrate. Thin: each asks the platform that holds the domain
(pvhvm.platforms), which says in one line when a verb is not on it."""

from __future__ import annotations

import click

from pvhvm.cli.output import print_json
from pvhvm.platforms import Platforms, default_platforms
from pvhvm.platforms.base import DETACH_TIMEOUT, SHUTDOWN_TIMEOUT, DeviceChange, DomainPlatform
from pvhvm.runtime import listing, resize


def current_platforms() -> Platforms:
    """The platforms of this invocation: those given to ``main``, else the built-in ones."""
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Platforms):
        root.obj = default_platforms()
    return root.obj


def _holder(name: str) -> DomainPlatform:
    """The platform that holds domain NAME (DomainError when none does)."""
    return current_platforms().locate(name)


@click.command(name="list")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--long", "long_", is_flag=True, help="Full records as JSON (xl list -l).")
@click.option("--json", "as_json", is_flag=True, help="The rows as one JSON array.")
def list_cmd(names: tuple[str, ...], long_: bool, as_json: bool) -> None:
    """List domains as xl list prints them (Name ID Mem VCPUs State Time(s))."""
    # no names: platform by platform, qemu-platform domains then xen-platform ones
    records = ([_holder(name).find(name) for name in names] if names
               else current_platforms().domains())
    if long_:
        print_json(listing.long_list(records))
        return
    rows = listing.list_rows(records, current_platforms().cpu_seconds)
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    click.echo(listing.format_list(rows), nl=False)


@click.command()
@click.argument("name")
def console(name: str) -> None:
    """Attach to domain NAME's serial console; ^] detaches."""
    _holder(name).console(name)


@click.command()
@click.argument("name")
@click.option("-w", "--wait", is_flag=True, help="Wait until the domain has shut down.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True),
    default=SHUTDOWN_TIMEOUT, show_default=True, help="Seconds -w waits.",
)
def shutdown(name: str, wait: bool, timeout: float) -> None:
    """Ask domain NAME to shut down (the ACPI power button)."""
    _holder(name).shutdown(name, wait=wait, timeout=timeout)


@click.command()
@click.argument("name")
def pause(name: str) -> None:
    """Pause domain NAME (its vCPUs stop)."""
    _holder(name).pause(name)


@click.command()
@click.argument("name")
def unpause(name: str) -> None:
    """Unpause domain NAME."""
    _holder(name).unpause(name)


@click.command()
@click.argument("name")
def reboot(name: str) -> None:
    """Reset domain NAME (a hard system reset; on_reboot=destroy ends it)."""
    _holder(name).reboot(name)


@click.command(name="block-list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def block_list(name: str, as_json: bool) -> None:
    """List domain NAME's disks: vdev, devid, ioemu|xenbus, QEMU device or xenbus backend,
    target."""
    devices = _holder(name).block_devices(name)
    if as_json:
        print_json([d.to_json() for d in devices])
        return
    click.echo(listing.format_block_list(devices), nl=False)


@click.command(name="network-list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def network_list(name: str, as_json: bool) -> None:
    """List domain NAME's NICs: index, ioemu|xenbus, QEMU device or xenbus backend, MAC,
    bridge."""
    devices = _holder(name).network_devices(name)
    if as_json:
        print_json([d.to_json() for d in devices])
        return
    click.echo(listing.format_network_list(devices), nl=False)


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
@click.argument("name")
@click.argument("spec")
def block_attach(name: str, spec: str) -> None:
    """Add a PV disk to running domain NAME (SPEC as in a disk= entry; PV only, as xl)."""
    _said(_holder(name).block_attach(name, spec))


@click.command(name="block-detach")
@click.argument("name")
@click.argument("disk", metavar="VDEV|DEVID")
@_force
@_detach_timeout
def block_detach(name: str, disk: str, force: bool, timeout: float) -> None:
    """Remove a hot-plugged disk from domain NAME (the guest is asked to release it)."""
    _said(_holder(name).block_detach(name, disk, force=force, timeout=timeout))


@click.command(name="network-attach")
@click.argument("name")
@click.argument("spec", default="", metavar="[VIFSPEC]")
def network_attach(name: str, spec: str) -> None:
    """Add a PV NIC to running domain NAME (VIFSPEC as in a vif= entry; PV only, as xl)."""
    _said(_holder(name).network_attach(name, spec))


@click.command(name="network-detach")
@click.argument("name")
@click.argument("nic", metavar="DEVID|MAC")
@_force
@_detach_timeout
def network_detach(name: str, nic: str, force: bool, timeout: float) -> None:
    """Remove a hot-plugged NIC from domain NAME."""
    _said(_holder(name).network_detach(name, nic, force=force, timeout=timeout))


@click.command(name="cd-insert")
@click.argument("name")
@click.argument("vdev")
@click.argument("target")
def cd_insert(name: str, vdev: str, target: str) -> None:
    """Insert medium TARGET (an ISO image) into emulated CD drive VDEV of domain NAME."""
    _said(_holder(name).cd_insert(name, vdev, target))


@click.command(name="cd-eject")
@click.argument("name")
@click.argument("vdev")
def cd_eject(name: str, vdev: str) -> None:
    """Eject the medium of emulated CD drive VDEV of domain NAME."""
    _said(_holder(name).cd_eject(name, vdev))


@click.command(name="mem-set")
@click.argument("name")
@click.argument("memory", metavar="MEM")
def mem_set(name: str, memory: str) -> None:
    """Set running domain NAME's memory to MEM (MiB, or with a suffix b k m g t, as xl;
    at most the maxmem it was created with)."""
    kib = resize.parse_memory_kib(memory)
    _said(_holder(name).mem_set(name, kib))


@click.command(name="vcpu-set")
@click.argument("name")
@click.argument("vcpus", metavar="VCPUS")
@click.option("-i", "--ignore-host", is_flag=True,
              help="Allow more vCPUs than this host has CPUs (as xl vcpu-set -i).")
def vcpu_set(name: str, vcpus: str, ignore_host: bool) -> None:
    """Give running domain NAME VCPUS vCPUs (1 up to the maxvcpus it was created with)."""
    count = resize.parse_vcpus(vcpus)
    _said(_holder(name).vcpu_set(name, count, ignore_host=ignore_host))


@click.command()
@click.argument("name")
@click.option("--to", "destination", required=True, metavar="URI",
              help="Where the domain goes (libvirt: the destination daemon's URI).")
@click.option("--migrate-uri", metavar="URI", default=None,
              help="Where the destination takes the migration stream (tcp://ADDR, unix://PATH).")
@click.option("--unsafe", is_flag=True,
              help="Disks are shared though not on a file system libvirt knows as shared.")
def migrate(name: str, destination: str, migrate_uri: str | None, unsafe: bool) -> None:
    """Move running domain NAME to another host, live (as xl migrate; disks are shared)."""
    record = _holder(name).migrate(name, destination, migrate_uri=migrate_uri, unsafe=unsafe)
    click.echo(f"domain {name} migrated to {destination} ({record.state})", err=True)


COMMANDS = (list_cmd, console, shutdown, pause, unpause, reboot, block_list, network_list,
            block_attach, block_detach, network_attach, network_detach, cd_insert, cd_eject,
            mem_set, vcpu_set, migrate)


def register(cli: click.Group) -> None:
    """Add the lifecycle verbs to the ``pvhvm`` group."""
    for command in COMMANDS:
        cli.add_command(command)
