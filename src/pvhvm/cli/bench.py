"""``pvhvm bench io``, ``bench net`` and ``bench toolstack`` (issue 6). Logic: pvhvm.bench."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pvhvm.bench.io import io_options, run_io, total_steps
from pvhvm.bench.jobs import JOB_NAMES
from pvhvm.bench.net import JOB_NAMES as NET_JOB_NAMES
from pvhvm.bench.net import SETUP_NAMES as NIC_SETUP_NAMES
from pvhvm.bench.net import guests_table as net_guests_table
from pvhvm.bench.net import net_options, net_table, run_net
from pvhvm.bench.net import total_steps as net_total_steps
from pvhvm.bench.report import guests_table, io_table, plot_io, setups_table
from pvhvm.bench.setups import ALTERNATIVES, DEFAULT_SETUP
from pvhvm.bench.toolstack import DISK_COUNTS, ToolstackOptions, run_toolstack
from pvhvm.cli.output import console, print_json, save_json, writable_option

SETUP_NAMES = [DEFAULT_SETUP, *(s.name for s in ALTERNATIVES)]


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=console(stderr=True), transient=False,
    )


#: ``--save FILE``: every bench also writes its JSON document there (checked before the run)
SAVE_OPTION = click.option(
    "--save", type=click.Path(dir_okay=False, path_type=Path), callback=writable_option,
    help="Also write the JSON document to this file.",
)

R = TypeVar("R")
Step = Callable[[str, int], None]


def _with_progress(total: int, run: Callable[[Step], R]) -> R:
    """Run a bench with a progress bar; ``run`` reports steps as (message, advance)."""
    with _progress() as progress:
        task = progress.add_task("starting", total=total)

        def step(message: str, advance: int) -> None:
            progress.update(task, description=message, advance=advance)

        return run(step)


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmarks: the PV benefit in real guests, pvhvm's own overhead (TCG guests)."""


def _plot_option(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """--plot: a writable path, and matplotlib present, known before the run starts."""
    path = writable_option(ctx, param, value)
    if path is not None and importlib.util.find_spec("matplotlib") is None:
        raise click.BadParameter("plotting needs matplotlib: pip install 'pvhvm[bench]'",
                                 ctx=ctx, param=param)
    return path


@bench.command("io")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--quick", is_flag=True, help="3 s jobs on 256 MiB, 5 setups (< 10 min).")
@click.option("--tiny", is_flag=True, help="One 1 s job on 16 MiB, default setup (a smoke test).")
@click.option("--dry", is_flag=True, help="Host fio only; boot no guest.")
@click.option("--setups", help=f"Comma-separated PV setups besides the default: "
              f"{', '.join(SETUP_NAMES)} ('' for none).")
@click.option("--jobs", "jobs", help=f"Comma-separated jobs: {', '.join(JOB_NAMES)}.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              callback=_plot_option,
              help="Write a PNG bar chart of IOPS (needs matplotlib: pvhvm[bench]).")
@SAVE_OPTION
@click.option("--kit", "kit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Guest image kit directory (default ~/.cache/pvhvm/image; built if needed).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the data image and run files go (a directory on a disk, not tmpfs).")
def io(
    as_json: bool, quick: bool, tiny: bool, dry: bool, setups: str | None, jobs: str | None,
    plot: Path | None, save: Path | None, kit_dir: Path | None, workdir: Path | None,
) -> None:
    """fio on the host, in an IDE guest and in PV guests on the same data image."""
    options = io_options(
        quick=quick, tiny=tiny, setups=_split(setups), jobs=_split(jobs), dry=dry,
        kit_dir=kit_dir, workdir=workdir,
    )
    report = _with_progress(total_steps(options), lambda step: run_io(options, step))
    document = report.to_json()
    if save is not None:
        save_json(save, document)
    if plot is not None:
        plot_io(document, plot)
    if as_json:
        print_json(document)
        return
    out = console()
    out.print(io_table(report))
    if report.guests:
        out.print(setups_table(report))
        out.print(guests_table(report))
        winner = report.winner()
        verdict = "is" if winner == DEFAULT_SETUP else "is NOT"
        out.print(f"fastest PV setup: {winner} (pvhvm's default {verdict} the fastest)")


@bench.command("net")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--quick", is_flag=True, help="5 s iperf3 runs, 200 pings (about 2 min).")
@click.option("--tiny", is_flag=True, help="One 2 s tcp-tx job, virtio-net only (smoke test).")
@click.option("--setups", help=f"Comma-separated NICs: {', '.join(NIC_SETUP_NAMES)}.")
@click.option("--jobs", "jobs", help=f"Comma-separated jobs: {', '.join(NET_JOB_NAMES)}.")
@click.option("--no-host", is_flag=True, help="Skip the host-to-itself upper bound.")
@SAVE_OPTION
@click.option("--kit", "kit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Guest image kit directory (default ~/.cache/pvhvm/image; built if needed).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the run files go.")
def net(
    as_json: bool, quick: bool, tiny: bool, setups: str | None, jobs: str | None,
    no_host: bool, save: Path | None, kit_dir: Path | None, workdir: Path | None,
) -> None:
    """TCP throughput and ping latency: virtio-net vs e1000 vs rtl8139 (needs root).

    Creates a private bridge (pvbench0, 10.213.0.1/24) with the host's iperf3 server on it and
    an 'allow pvbench0' line in /etc/qemu/bridge.conf; each guest's NIC is a tap on it
    (-netdev bridge). All of it is removed when the run ends, also on failure or Ctrl-C.
    """
    options = net_options(
        quick=quick, tiny=tiny, setups=_split(setups), jobs=_split(jobs), no_host=no_host,
        kit_dir=kit_dir, workdir=workdir,
    )
    report = _with_progress(net_total_steps(options), lambda step: run_net(options, step))
    document = report.to_json()
    if save is not None:
        save_json(save, document)
    if as_json:
        print_json(document)
        return
    out = console()
    out.print(net_table(report))
    out.print(net_guests_table(report))


@bench.command("toolstack")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--quick", is_flag=True, help="3 repetitions instead of 5.")
@click.option("--tiny", is_flag=True, help="1 repetition, 1 and 4 disks, no boot (smoke test).")
@click.option("--no-boot", is_flag=True, help="Skip the boot-to-report times.")
@SAVE_OPTION
@click.option("--kit", "kit_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Guest image kit directory (default ~/.cache/pvhvm/image).")
def toolstack(
    as_json: bool, quick: bool, tiny: bool, no_boot: bool, save: Path | None,
    kit_dir: Path | None,
) -> None:
    """create vs QEMU by hand, dry-run and import time, 1-64 disks, boot time IDE vs PV."""
    options = ToolstackOptions(
        repeat=1 if tiny else 3 if quick else 5,
        disk_counts=(1, 4) if tiny else DISK_COUNTS,
        boot=not (tiny or no_boot),
    )
    if kit_dir is not None:
        options = ToolstackOptions(**{**options.__dict__, "kit_dir": kit_dir})
    with _progress() as progress:
        task = progress.add_task("starting", total=None)
        document = run_toolstack(
            options, lambda message: progress.update(task, description=message),
        )
    if save is not None:
        save_json(save, document)
    if as_json:
        print_json(document)
        return
    _print_toolstack(document)


def _print_toolstack(document: dict[str, object]) -> None:
    out = console()
    summary = Table(title="pvhvm bench toolstack (medians)", title_justify="left",
                    show_header=False)
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    imports = document["import"]
    assert isinstance(imports, dict)
    summary.add_row("python -c pass", f"{imports['python_start_s'] * 1000:.0f} ms")
    summary.add_row("python -c 'import pvhvm.cli.main'", f"{imports['import_cli_s'] * 1000:.0f} ms")
    summary.add_row("pvhvm create --dry-run --json (1 disk)",
                    f"{float(str(document['dry_run_s'])) * 1000:.0f} ms")
    versus = document["create_vs_qemu"]
    assert isinstance(versus, dict)
    if versus.get("create_s") is not None:
        summary.add_row("pvhvm create until QMP answers", f"{versus['create_s'] * 1000:.0f} ms")
        summary.add_row("same QEMU argv by hand until QMP answers",
                        f"{versus['qemu_by_hand_s'] * 1000:.0f} ms")
        summary.add_row("pvhvm's overhead", f"{versus['overhead_s'] * 1000:.0f} ms")
    boot = document.get("boot")
    if isinstance(boot, dict):
        for device, label in (("ioemu", "IDE"), ("xenbus", "PV")):
            summary.add_row(f"create → device report, root on {label}",
                            f"{boot[device]['to_report_s']:.1f} s")
    out.print(summary)
    scaling = Table(title="cost vs number of PV disks (medians)", title_justify="left")
    for column in ("disks", "plan+argv", "create --dry-run (CLI)", "create", "QEMU by hand",
                   "overhead"):
        scaling.add_column(column, justify="right")
    rows = document["scaling"]
    assert isinstance(rows, list)

    def ms(value: object) -> str:
        return "-" if value is None else f"{float(str(value)) * 1000:.1f} ms"

    for row in rows:
        create = ms(row.get("create_s")) if "create_error" not in row else "failed"
        scaling.add_row(str(row["disks"]), ms(row["plan_argv_s"]), ms(row["dry_run_cli_s"]),
                        create, ms(row.get("qemu_by_hand_s")), ms(row.get("overhead_s")))
    out.print(scaling)
    for row in rows:
        if "create_error" in row:
            out.print(f"{row['disks']} disks: create failed: {row['create_error']}")
