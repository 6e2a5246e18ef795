"""Readable output of the benchmarks: rich tables, and a PNG plot (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from pvhvm.bench import BenchError
from pvhvm.bench.io import IoReport
from pvhvm.bench.jobs import JobResult
from pvhvm.bench.setups import DEFAULT_SETUP, IDE_DIRECT_SETUP, IDE_SETUP


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(row: JobResult | None) -> tuple[str, str, str]:
    if row is None:
        return "-", "-", "-"
    # MB/s to 0.1 below 1000, whole above: the column stays narrow enough for 120 characters
    return _num(row.iops), _num(row.mbps, 1 if row.mbps < 1000 else 0), _num(row.cpu_us_per_io, 1)


def io_table(report: IoReport) -> Table:
    """IOPS, MB/s and CPU µs per I/O for host, IDE and PV (pvhvm's default), with ratios; the
    PV/IDE-direct column (IDE with O_DIRECT, as the PV default) when that guest ran."""
    table = Table(title="pvhvm bench io: fio on the host and in IDE and PV guests "
                  "(PV = pvhvm's default; CPU = usr+sys µs per I/O)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("job", no_wrap=True)
    for device in ("host", "IDE", "PV"):
        table.add_column(f"{device}\nIOPS", justify="right")
        table.add_column(f"{device}\nMB/s", justify="right")
        if device != "host":
            table.add_column(f"{device}\nCPU", justify="right")
    direct = any(s.name == IDE_DIRECT_SETUP for s in report.options.ide_setups)
    table.add_column("PV/IDE", justify="right", style="bold")
    if direct:
        table.add_column("PV/IDE\ndirect", justify="right", style="bold")
    table.add_column("PV/host", justify="right", style="bold")
    ratios = {r["job"]: r for r in report.ratios()}
    for job in report.options.jobs:
        ratio = ratios[job.name]
        cells = [job.name]
        cells += _cell(report.find(job.name, "host"))[:2]
        cells += _cell(report.find(job.name, "ioemu", IDE_SETUP))
        cells += _cell(report.find(job.name, "xenbus", DEFAULT_SETUP))
        cells.append(_ratio(ratio["pv_over_ide"]))
        if direct:
            cells.append(_ratio(ratio["pv_over_ide_direct"]))
        cells.append(_ratio(ratio["pv_over_host"]))
        table.add_row(*cells)
    return table


def setups_table(report: IoReport) -> Table:
    """Each PV setup's IOPS per job relative to pvhvm's default (1.00x), and their geomean."""
    table = Table(title="PV disk setups: IOPS relative to pvhvm's default",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("setup")
    table.add_column("tuning")
    for job in report.options.jobs:
        table.add_column(job.name.replace("-", "\n", 1), justify="right")
    table.add_column("geomean", justify="right", style="bold")
    winner = report.winner()
    for score in report.setup_scores():
        name = score["setup"] + (" *" if score["setup"] == winner else "")
        cells = [name, score["tuning"]]
        cells += [_ratio(score["per_job"].get(job.name)) for job in report.options.jobs]
        cells.append(_ratio(score["relative_iops"]))
        table.add_row(*cells)
    return table


def guests_table(report: IoReport) -> Table:
    table = Table(title="guests", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("device", "setup", "tuning", "boot s", "wall s", "disk"):
        table.add_column(column)
    for guest in report.guests:
        table.add_row(guest.device, guest.setup, guest.tuning, f"{guest.boot_s:.1f}",
                      f"{guest.wall_s:.1f}", guest.disk.removeprefix("PVHVM-BENCH-DISK "))
    return table


def plot_io(document: dict[str, Any], output: Path) -> None:
    """Grouped bars of IOPS per job (log scale): host, IDE and every PV setup."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise BenchError("plotting needs matplotlib: pip install 'pvhvm[bench]'") from err
    jobs = document["params"]["jobs"]
    series: dict[str, dict[str, float]] = {}
    for row in document["results"]:
        if row["device"] == "host":
            label = "host"
        elif row["device"] == "ioemu":
            variant = row["setup"].removeprefix(IDE_SETUP).lstrip("-")
            label = f"IDE {variant}" if variant else "IDE"
        else:
            label = f"PV {row['setup']}"
        series.setdefault(label, {})[row["job"]] = row["iops"]
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(jobs)), 5))
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        xs = [j + index * width for j in range(len(jobs))]
        ax.bar(xs, [values.get(job, 0) for job in jobs], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(jobs))], jobs)
    ax.set_yscale("log")
    ax.set_ylabel("IOPS (log)")
    ax.set_title("pvhvm bench io: fio IOPS, host vs emulated IDE vs PV (virtio-blk), TCG")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=100)
    except OSError as err:
        raise BenchError(f"cannot write {output}: {err.strerror or err}") from err
    finally:
        plt.close(fig)
