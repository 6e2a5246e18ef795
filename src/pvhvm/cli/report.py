"""``pvhvm report NAME``: the devices a guest made by ``pvhvm image build`` says it sees."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from pvhvm.cli.complete import complete_domain
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import resolve_name
from pvhvm.cli.output import console, data, print_json
from pvhvm.errors import DomainError
from pvhvm.guest.report import END, ERROR, IDE_CLASS, SATA_CLASS, DeviceReport, parse_report
from pvhvm.runtime.logs import current_run

PCI_CLASSES = {
    0x0100: "SCSI / virtio-blk", IDE_CLASS: "IDE controller", SATA_CLASS: "SATA controller",
    0x0200: "Ethernet", 0x0300: "VGA", 0x0600: "host bridge", 0x0601: "ISA bridge",
    0x0680: "bridge", 0x0C05: "SMBus", 0x00FF: "unclassified",
}


def wait_for_report(log: Path, domain_dir: Path, timeout: float) -> DeviceReport:
    """The last report of this QEMU run in ``log`` (the part after its last start marker:
    the log keeps earlier runs, runtime/logs.py); waits up to ``timeout`` seconds while the
    domain exists."""
    deadline = time.monotonic() + timeout
    with console(stderr=True).status("waiting for the guest's device report..."):
        while True:
            text = current_run(log.read_text(errors="replace")) if log.exists() else ""
            if END in text or ERROR in text:
                return parse_report(text)
            if not domain_dir.exists():
                raise DomainError(f"the domain went away before reporting (see {log})")
            if time.monotonic() > deadline:
                raise DomainError(f"no device report within {timeout:.0f}s (see {log})")
            time.sleep(0.2)


def report_tables(name: str, report: DeviceReport) -> list[Table]:
    pci = Table(title=f"{name}: PCI functions", title_justify="left")
    for column in ("slot", "class", "what", "vendor:device", "driver"):
        pci.add_column(column, overflow="fold")
    for fn in report.pci:
        pci.add_row(data(fn.slot), f"0x{fn.pci_class:04x}", PCI_CLASSES.get(fn.pci_class, ""),
                    f"{fn.vendor:04x}:{fn.device:04x}", data(fn.driver or "-"))
    disks = Table(title="Block devices", title_justify="left")
    for column in ("name", "driver", "size"):
        disks.add_column(column, overflow="fold")
    for blk in report.blocks:
        disks.add_row(data(blk.name), data(blk.driver or "-"),
                      f"{blk.sectors * 512 / 2**20:.0f} MiB")
    nics = Table(title="NICs", title_justify="left")
    for column in ("ifname", "driver", "mac"):
        nics.add_column(column, overflow="fold")
    for net in report.nets:
        nics.add_row(data(net.ifname), data(net.driver or "-"), data(net.mac))
    return [pci, disks, nics]


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the guest to report.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def report(name: str, timeout: float, as_json: bool) -> None:
    """Show the devices guest NAME reports on its console (the pvhvm guest image prints them)."""
    source = current_platforms().locate(name).report_source(name)
    found = wait_for_report(source.console_log, source.domain_directory, timeout)
    if as_json:
        print_json(report_document(name, found))
        return
    print_report(name, found)


def report_document(name: str, found: DeviceReport) -> dict[str, object]:
    """``report --json``: the guest's fields as strings (JSON escapes what it must)."""
    return {
        "name": name,
        "ide_controller": found.has_class(IDE_CLASS),
        "sata_controller": found.has_class(SATA_CLASS),
        "root": found.root,
        "pci": [{"slot": f.slot, "class": f"0x{f.pci_class:04x}", "vendor": f.vendor,
                 "device": f.device, "driver": f.driver} for f in found.pci],
        "blocks": [{"name": b.name, "driver": b.driver, "sectors": b.sectors}
                   for b in found.blocks],
        "nets": [{"ifname": n.ifname, "driver": n.driver, "mac": n.mac} for n in found.nets],
    }


def print_report(name: str, found: DeviceReport) -> None:
    """The report as tables. Every field is the guest's own text: shown as data (control
    characters escaped, never markup), whatever a guest prints on its console."""
    out = console()
    for table in report_tables(name, found):
        out.print(table)
    ide = "yes" if found.has_class(IDE_CLASS) else "no"
    root_disk = found.root_disk()
    root_driver = (root_disk.driver if root_disk else None) or "?"
    out.print(Text.assemble("IDE controller: ", (ide, "bold"), "   root: ",
                            data(found.root or "?", "bold"), " (", data(root_driver), ")"))
