"""Terminal output: rich consoles sized to the terminal, or to ``COLUMNS`` (else a fixed
width) when not writing to one; and the JSON envelope of every ``--json`` (docs/json.md).

rich is imported by the functions that print with it, not with this module: it is the largest
import of ``pvhvm create --dry-run`` (about a fifth of its time), which its ``--json`` form and
most verbs never need.

Strings are data (SECURITY.md): every console made here has markup and emoji off, so a str
printed through it is never read as console markup (``[b]`` in a path would vanish, ``[/x]``
raise MarkupError, ``[link=...]`` make a hyperlink); text from users, configs and guests goes
to rich as :class:`rich.text.Text` made by :func:`data`, with control characters (terminal
escape sequences, carriage returns) shown as escapes by :func:`pvhvm.errors.printable`. Style
is given as rich styles on Text, never as markup inside a string.

Colour follows https://no-color.org: a ``NO_COLOR`` that is present and not empty "prevents
the addition of ANSI color" (rich reads it). The standard is about colour only, so bold and
italic stay, as rich leaves them: they carry no colour and read on any terminal.

Every ``--json`` document is an envelope (schema: cli/schema/, described in docs/json.md)::

    {"pvhvm": 1, "command": "list", "ok": true, "result": ...}
    {"pvhvm": 1, "command": "create", "ok": false,
     "error": {"message": "...", "where": "g.cfg:3:9", "kind": "input"}}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pvhvm.errors import InputError, printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from pvhvm.plan.plan import Plan

#: width used when stdout/stderr is a pipe or file and COLUMNS says none, so scripted output
#: does not wrap oddly
PIPE_WIDTH = 120

#: the version of the JSON envelope and of the schemas in cli/schema/: a field may be added
#: within a version; one renamed, removed or changing its meaning makes the next version
JSON_VERSION = 1


def output_width(stream: Any) -> int | None:
    """Columns for ``stream``: ``COLUMNS`` when it is a positive number (as a shell exports it,
    and as a script sets it for a pipe), else the terminal's own (None: rich asks it), else
    :data:`PIPE_WIDTH`."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if stream.isatty() else PIPE_WIDTH


def console(stderr: bool = False) -> Console:
    """A rich Console for stdout (or stderr), sized for pipes as well as terminals."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = output_width(stream)
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


def command_name(ctx: click.Context | None = None) -> str:
    """The command words of ``ctx`` (default: the current one) without the program's:
    ``"list"``, ``"guest inspect"``; "" outside any command."""
    ctx = ctx if ctx is not None else click.get_current_context(silent=True)
    words: list[str] = []
    while ctx is not None and ctx.parent is not None:
        words.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(words))


def envelope(command: str, result: Any) -> dict[str, Any]:
    """The JSON document of a command that succeeded (schema: cli/schema/envelope.json)."""
    return {"pvhvm": JSON_VERSION, "command": command, "ok": True, "result": result}


def error_envelope(command: str, message: str, where: str | None, kind: str) -> dict[str, Any]:
    """The JSON document of a command that failed: the one line text mode prints, where the
    mistake is (``file:line:col``, an option, or None) and what kind of error it is."""
    return {"pvhvm": JSON_VERSION, "command": command, "ok": False,
            "error": {"message": message, "where": where, "kind": kind}}


#: whether this process has printed its JSON document (one per command: a step that fails
#: after the result was printed, such as ``create -c``'s console, adds none)
_printed = False


def print_json(result: Any) -> None:
    """Exactly one JSON document on stdout: the current command's ``result`` in the envelope."""
    print_json_document(envelope(command_name(), result))


def print_json_document(document: Any) -> None:
    """A whole JSON document (an envelope made elsewhere) on stdout."""
    global _printed
    sys.stdout.write(_json_text(document))
    sys.stdout.flush()
    _printed = True


def new_command() -> None:
    """A command starts (the tests run several in one process): nothing printed yet."""
    global _printed
    _printed = False


def json_printed() -> bool:
    """Whether the command has printed its JSON document already."""
    return _printed


def save_json(path: Path, document: Any) -> None:
    """A result as :func:`print_json` prints it, without the envelope (a figures file, read by
    the benchmarks' plots), written to ``path``."""
    write_output(path, _json_text(document))


class OutputError(InputError):
    """An output file (``-o``, ``--save``, ``--plot``) cannot be written: the user's path,
    so an input error (exit status 1), not a usage error."""


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
    """A click callback: an output-file option is checked as it is parsed (OutputError, not
    click's BadParameter: a path that cannot be written is bad input, exit status 1)."""
    if value is None:
        return None
    try:
        return check_writable(value)
    except OutputError as err:
        name = "/".join(param.opts) if isinstance(param, click.Option) else (
            param.human_readable_name)
        raise OutputError(f"{name}: {err}") from err


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
    summary.add_column("key", style="bold", overflow="fold")
    summary.add_column("value", overflow="fold")
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
        disks.add_column(column, overflow="fold")
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
        nics.add_column(column, overflow="fold")
    for v in plan.vifs:
        _row(nics, str(v.devid), v.kind.value, v.model or "PV net", v.mac, v.bridge)
    tables = [summary, disks, nics]
    if plan.notes:
        notes = Table(title="How untyped devices were read", title_justify="left",
                      show_header=False)
        notes.add_column("note", overflow="fold")
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
