"""Domain lifecycle verbs as xl users know them: list, console, shutdown, pause, unpause,
reboot, block-list, network-list. Thin: the work is in pvhvm.runtime."""

from __future__ import annotations

import click

from pvhvm.cli.output import print_json
from pvhvm.errors import DomainError
from pvhvm.runtime import console as domain_console
from pvhvm.runtime import lifecycle, listing
from pvhvm.runtime.state import DomainRecord, StateStore, process_cpu_seconds
from pvhvm.xen import domain as xen_domain


def _find(name: str) -> DomainRecord:
    """NAME's record, on the qemu or the xen platform (names are unique across both)."""
    record = xen_domain.xen_store().read(name)
    return record if record is not None else lifecycle.lookup(name)


def _running(name: str, verb: str) -> str:
    """NAME, once it is known not to be a xen-platform domain, which nothing runs here."""
    if xen_domain.xen_store().read(name) is not None:
        raise DomainError(
            f"domain {name!r} is on the xen platform: pvhvm wrote its XenStore entries, but "
            f"no hypervisor runs it on this host for 'pvhvm {verb}' to act on; on a Xen host "
            f"use 'xl {verb} {name}'"
        )
    return name


def _drivers(record: DomainRecord) -> dict[str, str] | None:
    """Backends read from XenStore for a xen-platform domain; None: the QEMU argv says."""
    return xen_domain.device_drivers(record) if record.platform == "xen" else None


@click.command(name="list")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("-l", "--long", "long_", is_flag=True, help="Full records as JSON (xl list -l).")
@click.option("--json", "as_json", is_flag=True, help="The rows as one JSON array.")
def list_cmd(names: tuple[str, ...], long_: bool, as_json: bool) -> None:
    """List domains as xl list prints them (Name ID Mem VCPUs State Time(s))."""
    if names:
        records = [_find(name) for name in names]
    else:  # qemu-platform domains, then those written to XenStore by --platform xen
        records = lifecycle.list_domains() + xen_domain.list_domains()
    if long_:
        print_json(listing.long_list(records))
        return
    rows = listing.list_rows(records, process_cpu_seconds)
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    click.echo(listing.format_list(rows), nl=False)


@click.command()
@click.argument("name")
def console(name: str) -> None:
    """Attach to domain NAME's serial console; ^] detaches."""
    record = lifecycle.lookup(_running(name, "console"))
    domain_console.attach(record, lock=StateStore().paths(name).console_lock)


@click.command()
@click.argument("name")
@click.option("-w", "--wait", is_flag=True, help="Wait until the domain has shut down.")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True),
    default=lifecycle.SHUTDOWN_TIMEOUT, show_default=True, help="Seconds -w waits.",
)
def shutdown(name: str, wait: bool, timeout: float) -> None:
    """Ask domain NAME to shut down (the ACPI power button)."""
    lifecycle.shutdown(_running(name, "shutdown"), wait=wait, timeout=timeout)


@click.command()
@click.argument("name")
def pause(name: str) -> None:
    """Pause domain NAME (its vCPUs stop)."""
    lifecycle.pause(_running(name, "pause"))


@click.command()
@click.argument("name")
def unpause(name: str) -> None:
    """Unpause domain NAME."""
    lifecycle.unpause(_running(name, "unpause"))


@click.command()
@click.argument("name")
def reboot(name: str) -> None:
    """Reset domain NAME (a hard system reset; on_reboot=destroy ends it)."""
    lifecycle.reboot(_running(name, "reboot"))


@click.command(name="block-list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def block_list(name: str, as_json: bool) -> None:
    """List domain NAME's disks: vdev, devid, ioemu|xenbus, QEMU device or xenbus backend,
    target."""
    record = _find(name)
    devices = listing.block_devices(record, _drivers(record))
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
    record = _find(name)
    devices = listing.network_devices(record, _drivers(record))
    if as_json:
        print_json([d.to_json() for d in devices])
        return
    click.echo(listing.format_network_list(devices), nl=False)


COMMANDS = (list_cmd, console, shutdown, pause, unpause, reboot, block_list, network_list)


def register(cli: click.Group) -> None:
    """Add the lifecycle verbs to the ``pvhvm`` group."""
    for command in COMMANDS:
        cli.add_command(command)
