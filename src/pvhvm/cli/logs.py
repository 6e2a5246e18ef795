"""``pvhvm dmesg``: the toolstack's own logs, as ``xl dmesg`` shows the hypervisor's.

Without NAME: the host supervisor's log (``logs/hostd.log``); with NAME: that domain's
supervisor log, or with ``--qemu`` its QEMU log (``qemu-dm-NAME.log``). ``--all`` includes the
rotated files, oldest first (runtime/logs.py keeps LOG.1 … LOG.KEEP). Lines are shown with
control characters escaped: a log may quote what a guest or a file said.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import click

from pvhvm.cli.complete import complete_domain
from pvhvm.errors import InputError, printable
from pvhvm.runtime import logs
from pvhvm.runtime.hostd import HOSTD_LOG
from pvhvm.runtime.state import StateStore


def log_files(path: Path, rotated: bool) -> list[Path]:
    """``path`` and, when ``rotated``, its rotated files: oldest first, only those that exist."""
    older = [logs.rotated(path, index) for index in range(logs.KEEP, 0, -1)] if rotated else []
    return [p for p in [*older, path] if p.exists()]


def tail(paths: list[Path], lines: int | None) -> list[str]:
    """The last ``lines`` lines of ``paths`` read in order (all of them when None)."""
    kept: deque[str] = deque(maxlen=lines)
    for path in paths:
        with path.open(errors="replace") as stream:
            kept.extend(line.rstrip("\n") for line in stream)
    return list(kept)


@click.command()
@click.argument("name", required=False, shell_complete=complete_domain)
@click.option("--qemu", is_flag=True, help="Domain NAME's QEMU log instead of its supervisor's.")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=None,
              help="Only the last LINES lines.")
@click.option("--all", "rotated", is_flag=True, help="Include the rotated (older) files.")
def dmesg(name: str | None, qemu: bool, lines: int | None, rotated: bool) -> None:
    """Show the host supervisor's log, or domain NAME's (supervisor or --qemu), as xl dmesg
    shows the hypervisor's."""
    store = StateStore()
    if name is None:
        if qemu:
            raise click.UsageError("--qemu needs a domain NAME")
        path = store.root / "logs" / HOSTD_LOG
    else:
        paths = store.paths(name)
        path = paths.qemu_log if qemu else paths.supervisor_log
    files = log_files(path, rotated)
    if not files:
        raise InputError(f"{path}: no such log (nothing has run here yet"
                         + (f" as domain {name!r})" if name else ")"))
    for line in tail(files, lines):
        click.echo(printable(line))
