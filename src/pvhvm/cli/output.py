"""Terminal output: rich consoles with a fixed width when not writing to a terminal.

rich is imported by the functions that print with it, not with this module: it is the largest
import of ``pvhvm create --dry-run`` (about a fifth of its time), which its ``--json`` form and
most verbs never need.

Strings are data (SECURITY.md): every console made here has markup and emoji off, so a str
printed through it is never read as console markup (``[b]`` in a path would vanish, ``[/x]``
raise MarkupError, ``[link=...]`` make a hyperlink); text from users, configs and guests goes
to rich as :class:`rich.text.Text` made by :func:`data`, with control characters (terminal
escape sequences, carriage returns) shown as escapes by :func:`pvhvm.errors.printable`. Style
is given as rich styles on Text, never as markup inside a string.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pvhvm.errors import PvhvmError, printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from pvhvm.plan.plan import Plan

#: width used when stdout/stderr is a pipe or file, so scripted output does not wrap oddly
PIPE_WIDTH = 120


def console(stderr: bool = False) -> Console:
    """A rich Console for stdout (or stderr), sized for pipes as well as terminals."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    # emoji codes off: a path such as /srv/a:cd:b is text, not a picture
    return Console(file=stream, width=width, highlight=False, soft_wrap=False, emoji=False,
                   markup=False)


def data(text: str, style: str = "") -> Text:
    """``text`` (a user's, a config's or a guest's) as rich Text: no markup, control
    characters escaped."""
    from rich.text import Text

    return Text(printable(text), style=style)


def warn(message: str, label: str = "warning", style: str = "yellow") -> None:
    """One message on stderr, one line whatever the width (scripts grep these)."""
    if not sys.stderr.isatty():  # no colour to give: rich would print these very bytes
        _plain(f"{label}: {message}")
        return
    from rich.text import Text

    console(stderr=True).print(Text.assemble((f"{label}:", style), " ", printable(message)),
                               soft_wrap=True)


def say(line: str) -> None:
    """One line of text on stderr (a verb's outcome), never read as markup, never wrapped."""
    if not sys.stderr.isatty():
        _plain(line)
        return
    console(stderr=True).print(data(line), soft_wrap=True)


def _plain(line: str) -> None:
    """A line as rich prints plain text to a pipe, without importing rich: on ``create``'s
    path rich would cost more than the rest of its imports together."""
    sys.stderr.write(printable(line) + "\n")
    sys.stderr.flush()


def _json_text(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(_json_text(document))


def save_json(path: Path, document: Any) -> None:
    """The same JSON document :func:`print_json` prints, written to ``path``."""
    write_output(path, _json_text(document))


class OutputError(PvhvmError):
    """An output file (``-o``, ``--save``, ``--plot``) cannot be written."""


def check_writable(path: Path) -> Path:
    """``path``, once its directory is known to take a new file: checked before long work, so
    a typo in ``--save`` does not cost a whole run. Raises OutputError."""
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: directory {parent} is not writable")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"cannot write {path}: the file is not writable")
    return path


def writable_option(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> Path | None:
    """A click callback: an output-file option is checked as it is parsed."""
    if value is None:
        return None
    try:
        return check_writable(value)
    except OutputError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from err


def write_output(path: Path, text: str) -> None:
    """Write ``text`` to ``path``; a failure is an OutputError naming the file."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def plan_tables(plan: Plan) -> list[Table]:
    """The readable form of a plan: a summary, the disks and the NICs."""
    from rich.table import Table

    summary = Table(title=f"Domain {plan.name}", show_header=False, title_justify="left")
    summary.add_column("key", style="bold")
    summary.add_column("value")
    _row(summary, "platform", plan.platform.value)
    _row(summary, "guest type", f"{plan.guest_type.value} ({plan.guest_type_reason})")
    _row(summary, "dialect", f"{plan.dialect.value} ({plan.dialect_reason})")
    _row(summary, "uuid", plan.uuid)
    _row(summary, "memory", f"{plan.memory_mib} MiB" + (
        f" of maxmem {plan.maxmem_mib} MiB (boots with maxmem; the balloon holds the rest)"
        if plan.maxmem_mib is not None else "") + ", mem-set through a virtio balloon")
    _row(summary, "vcpus", str(plan.vcpus) + (
        f" of maxvcpus {plan.maxvcpus} (vcpu-set hot-plugs the rest)"
        if plan.maxvcpus is not None else ""))
    _row(summary, "IDE controller", "yes" if plan.ide_controller else "no (PV disks only)")
    _row(summary, "hotplug slots", hotplug_slots_text(plan))
    if plan.direct_kernel_boot:
        _row(summary, "boot", f"kernel {plan.kernel}")
        if plan.ramdisk:
            _row(summary, "ramdisk", plan.ramdisk)
        _row(summary, "cmdline", plan.cmdline or "")
    else:
        _row(summary, "boot", f"firmware, order {plan.boot}")

    disks = Table(title="Disks", title_justify="left")
    for column in ("vdev", "devid", "type", "realised as", "target", "format", "mode", "boot"):
        disks.add_column(column)
    for d in plan.disks:
        if d.ide_place is not None:
            channel = "primary" if d.ide_place[0] == 0 else "secondary"
            unit = "master" if d.ide_place[1] == 0 else "slave"
            realised = f"IDE {'cdrom' if d.cdrom else 'disk'} {channel} {unit}"
        elif d.scsi_unit is not None:
            realised = f"SCSI disk ({plan.scsi_model}) id {d.scsi_unit}"
        else:
            realised = "PV block (xenbus)"
        _row(disks, d.vdev, str(d.devid), d.kind.value, realised, d.target or "(empty)",
             d.format, d.access.value, "" if d.bootindex is None else str(d.bootindex))
    nics = Table(title="NICs", title_justify="left")
    for column in ("devid", "type", "model", "mac", "bridge"):
        nics.add_column(column)
    for v in plan.vifs:
        _row(nics, str(v.devid), v.kind.value, v.model or "PV net", v.mac, v.bridge)
    tables = [summary, disks, nics]
    if plan.notes:
        notes = Table(title="How untyped devices were read", title_justify="left",
                      show_header=False)
        notes.add_column("note")
        for note in plan.notes:
            _row(notes, note)
        tables.append(notes)
    return tables


def _row(table: Table, *cells: str) -> None:
    """A row of plain text (paths, bridges and reasons are the user's, never markup)."""
    table.add_row(*(data(cell) for cell in cells))


def hotplug_slots_text(plan: Plan) -> str:
    """How many PV devices block-/network-attach can add on QEMU (``hotplug_slots``)."""
    if plan.ide_controller:
        return "root bus (machine pc hot-plugs there)"
    return f"{plan.hotplug_slots} (empty pcie-root-ports, hotplug_slots)"


def print_findings(findings: list[dict[str, str]]) -> None:
    """A guest check's findings (``Problem.to_json`` form), one line each on stderr."""
    for found in findings:
        severity = str(found.get("severity"))
        fix = f"; fix: {found['fix']}" if found.get("fix") else ""
        warn(f"{found.get('subject')}: {found.get('message')}{fix}", label=severity,
             style="red" if severity == "fatal" else "yellow")
