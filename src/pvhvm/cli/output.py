"""Terminal output: rich consoles with a fixed width when not writing to a terminal."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from pvhvm.plan.plan import Plan

#: width used when stdout/stderr is a pipe or file, so scripted output does not wrap oddly
PIPE_WIDTH = 120


def console(stderr: bool = False) -> Console:
    """A rich Console for stdout (or stderr), sized for pipes as well as terminals."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")


def plan_tables(plan: Plan) -> list[Table]:
    """The readable form of a plan: a summary, the disks and the NICs."""
    summary = Table(title=f"Domain {plan.name}", show_header=False, title_justify="left")
    summary.add_column("key", style="bold")
    summary.add_column("value")
    summary.add_row("platform", plan.platform.value)
    summary.add_row("uuid", plan.uuid)
    summary.add_row("memory", f"{plan.memory_mib} MiB")
    summary.add_row("vcpus", str(plan.vcpus))
    summary.add_row("IDE controller", "yes" if plan.ide_controller else "no (PV disks only)")
    if plan.direct_kernel_boot:
        summary.add_row("boot", f"kernel {plan.kernel}")
        if plan.ramdisk:
            summary.add_row("ramdisk", plan.ramdisk)
        summary.add_row("cmdline", plan.cmdline or "")
    else:
        summary.add_row("boot", f"firmware, order {plan.boot}")

    disks = Table(title="Disks", title_justify="left")
    for column in ("vdev", "devid", "type", "realised as", "target", "format", "mode", "boot"):
        disks.add_column(column)
    for d in plan.disks:
        if d.ide_place is not None:
            channel = "primary" if d.ide_place[0] == 0 else "secondary"
            unit = "master" if d.ide_place[1] == 0 else "slave"
            realised = f"IDE {'cdrom' if d.cdrom else 'disk'} {channel} {unit}"
        else:
            realised = "PV block (xenbus)"
        disks.add_row(
            d.vdev, str(d.devid), d.kind.value, realised, d.target or "(empty)", d.format,
            d.access.value, "" if d.bootindex is None else str(d.bootindex),
        )
    nics = Table(title="NICs", title_justify="left")
    for column in ("devid", "type", "model", "mac", "bridge"):
        nics.add_column(column)
    for v in plan.vifs:
        nics.add_row(str(v.devid), v.kind.value, v.model or "PV net", v.mac, v.bridge)
    return [summary, disks, nics]
