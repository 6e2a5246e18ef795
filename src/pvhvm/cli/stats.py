"""``pvhvm domstats`` (as ``virsh domstats``) and ``pvhvm top`` (as ``xl top``/xentop): live
figures of running domains, from runtime/stats.py.

``domstats`` prints each domain's counters since its QEMU started; ``top`` samples every
``-d`` seconds and shows rates between two samples, refreshed in place on a terminal, or
``-b`` (batch) one table per sample for ``-n`` samples, as ``xentop -b -i N -d SECS``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import click

from pvhvm.cli.complete import complete_domain
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import resolve_names
from pvhvm.cli.output import console, print_json
from pvhvm.errors import DomainError, NotOnPlatformError, PvhvmError
from pvhvm.platforms import Platforms
from pvhvm.runtime.stats import DomainRates, DomainSample, rates

#: xentop's default delay between samples (seconds)
DEFAULT_DELAY = 3.0
TOP_COLUMNS = ("NAME", "ID", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MAXMEM(k)", "VCPUS",
               "RD(KiB/s)", "WR(KiB/s)", "RD(op/s)", "WR(op/s)", "NETRX(KiB/s)",
               "NETTX(KiB/s)")


def _samples(platforms: Platforms, names: Iterable[str]
             ) -> tuple[list[DomainSample], list[tuple[str, str]]]:
    """Samples of the named domains (every domain when none is named) and, for the unnamed
    ones that have no figures (not running, or on a platform without them), why."""
    named = list(names)
    samples: list[DomainSample] = []
    skipped: list[tuple[str, str]] = []
    if named:
        for name in named:
            samples.append(platforms.locate(name).domain_stats(name))
        return samples, skipped
    for record in platforms.domains():
        try:
            samples.append(platforms.get(record.platform).domain_stats(record.name))
        except (DomainError, NotOnPlatformError) as err:
            skipped.append((record.name, str(err)))
    return samples, skipped


def stats_lines(sample: DomainSample) -> list[str]:
    """``virsh domstats``'s text form: ``Domain: 'NAME'`` then ``  key=value`` lines."""
    lines = [f"Domain: '{sample.name}'", f"  state.state={sample.state}",
             f"  cpu.time={round(sample.cpu_seconds * 1e9)}",
             f"  vcpu.current={len(sample.vcpus)}"]
    for vcpu in sample.vcpus:
        lines.append(f"  vcpu.{vcpu.index}.time={round(vcpu.seconds * 1e9)}")
    if sample.memory_actual_kib is not None:
        lines.append(f"  balloon.current={sample.memory_actual_kib}")
    lines += [f"  balloon.target={sample.memory_target_kib}",
              f"  balloon.maximum={sample.memory_max_kib}",
              f"  block.count={len(sample.disks)}"]
    for index, disk in enumerate(sample.disks):
        lines += [f"  block.{index}.name={disk.vdev}", f"  block.{index}.rd.reqs={disk.rd_ops}",
                  f"  block.{index}.rd.bytes={disk.rd_bytes}",
                  f"  block.{index}.wr.reqs={disk.wr_ops}",
                  f"  block.{index}.wr.bytes={disk.wr_bytes}"]
    lines.append(f"  net.count={len(sample.nics)}")
    for index, nic in enumerate(sample.nics):
        lines.append(f"  net.{index}.name=vif{nic.devid} ({nic.mac}, {nic.backend})")
        if nic.unavailable is not None:
            lines.append(f"  net.{index}.unavailable={nic.unavailable}")
            continue
        lines += [f"  net.{index}.rx.bytes={nic.rx_bytes}", f"  net.{index}.rx.pkts="
                  f"{nic.rx_packets}", f"  net.{index}.tx.bytes={nic.tx_bytes}",
                  f"  net.{index}.tx.pkts={nic.tx_packets}"]
    return lines


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...", callback=resolve_names,
                shell_complete=complete_domain)
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
def domstats(names: tuple[str, ...], as_json: bool) -> None:
    """CPU, memory, block and network counters of running domains (as virsh domstats).

    Counters run from the QEMU's start; 'pvhvm top' shows rates.
    """
    samples, skipped = _samples(current_platforms(), names)
    if as_json:
        print_json({"domains": [s.to_json() for s in samples],
                    "skipped": [{"name": n, "reason": r} for n, r in skipped]})
        return
    blocks = ["\n".join(stats_lines(s)) for s in samples]
    blocks += [f"Domain: '{name}'\n  unavailable={reason}" for name, reason in skipped]
    if blocks:
        click.echo("\n\n".join(blocks))


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def top_row(figures: DomainRates) -> list[str]:
    """One domain's row of TOP_COLUMNS."""
    sample = figures.sample
    return [
        sample.name, str(sample.domid), sample.state, f"{sample.cpu_seconds:.1f}",
        f"{figures.cpu_percent:.1f}",
        "-" if sample.memory_actual_kib is None else str(sample.memory_actual_kib),
        str(sample.memory_max_kib), str(len(sample.vcpus)),
        _kib(figures.rd_bytes_per_s), _kib(figures.wr_bytes_per_s),
        f"{figures.rd_ops_per_s:.1f}", f"{figures.wr_ops_per_s:.1f}",
        _kib(figures.rx_bytes_per_s), _kib(figures.tx_bytes_per_s),
    ]


def format_top(rows: list[list[str]]) -> str:
    """The batch table: columns as wide as their widest cell, names left, figures right."""
    table = [list(TOP_COLUMNS), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(TOP_COLUMNS))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _rates_loop(platforms: Platforms, names: tuple[str, ...], delay: float,
                iterations: int | None) -> Iterator[list[DomainRates]]:
    """Every ``delay`` seconds the rates since the previous sample, domain by domain (a
    domain that went away drops out; one that came meanwhile shows from its second sample)."""
    previous = {(s.name, s.domid): s for s in _samples(platforms, names)[0]}
    done = 0
    while iterations is None or done < iterations:
        time.sleep(delay)
        try:
            current = _samples(platforms, names)[0]
        except PvhvmError:
            if names:
                raise
            current = []
        figures = [rates(previous[key], s) for s in current
                   if (key := (s.name, s.domid)) in previous]
        previous = {(s.name, s.domid): s for s in current}
        done += 1
        yield figures


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...", callback=resolve_names,
                shell_complete=complete_domain)
@click.option("-b", "--batch", is_flag=True, help="Print a table per sample (for scripts).")
@click.option("-n", "--iterations", type=click.IntRange(min=1), default=None,
              help="Stop after N samples (default: until ^C; batch mode: 1).")
@click.option("-d", "--delay", type=click.FloatRange(min=0.1), default=DEFAULT_DELAY,
              show_default=True, help="Seconds between samples.")
def top(names: tuple[str, ...], batch: bool, iterations: int | None, delay: float) -> None:
    """Live CPU, memory, block and network figures of running domains (as xl top)."""
    platforms = current_platforms()
    if batch:
        for figures in _rates_loop(platforms, names, delay, iterations or 1):
            click.echo(format_top([top_row(f) for f in figures]), nl=False)
        return
    from rich.live import Live
    from rich.table import Table

    def render(figures: list[DomainRates]) -> Table:
        table = Table(*TOP_COLUMNS, title=f"pvhvm top (every {delay:g} s, ^C ends)")
        for f in figures:
            table.add_row(*top_row(f))
        return table

    out = console()
    with Live(render([]), console=out, auto_refresh=False) as live:
        try:
            for figures in _rates_loop(platforms, names, delay, iterations):
                live.update(render(figures), refresh=True)
        except KeyboardInterrupt:
            pass
