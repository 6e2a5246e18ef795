"""``pvhvm bench io``: the same fio jobs on the host, in an IDE guest and in PV guests.

Order of one run (sequential, so runs do not compete for the 2 host cores): host fio on the
data image, the IDE guest, then the PV guest under each setup, pvhvm's default first. Every
guest boots the same kernel and initramfs with the same data image as its only disk.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvhvm.bench import BenchError
from pvhvm.bench.guest import GuestOutcome, GuestSpec, run_guest
from pvhvm.bench.host import make_data_image, run_host
from pvhvm.bench.jobs import JOBS, FioJob, JobParams, JobResult, job_by_name
from pvhvm.bench.setups import (
    DEFAULT_SETUP,
    IDE,
    IDE_DIRECT,
    IDE_DIRECT_SETUP,
    IDE_SETUP,
    RERUN,
    Setup,
    select_setups,
)
from pvhvm.guest.bench import BenchExtra, build_bench_extra
from pvhvm.guest.kit import Kit, build_kit
from pvhvm.hostfs import cache_home
from pvhvm.qemu.argv import Accel

SCHEMA = "pvhvm-bench-io/1"


@dataclass(frozen=True)
class IoOptions:
    """What one ``bench io`` run does."""

    params: JobParams
    jobs: tuple[FioJob, ...] = JOBS
    setups: tuple[Setup, ...] = ()
    #: the IDE guests: pvhvm's IDE tuning, and (but in tiny runs) IDE with O_DIRECT
    ide_setups: tuple[Setup, ...] = (IDE,)
    #: run no guest: host fio only (and the guests' plans)
    dry: bool = False
    accel: Accel = Accel.TCG
    kit_dir: Path = field(default_factory=lambda: cache_home() / "image")
    workdir: Path | None = None


QUICK = JobParams(runtime_s=3, ramp_s=1, size_mib=256)
FULL = JobParams(runtime_s=10, ramp_s=2, size_mib=1024)
TINY = JobParams(runtime_s=1, ramp_s=0, size_mib=16)


def io_options(
    *, quick: bool, tiny: bool, setups: list[str] | None, jobs: list[str] | None, dry: bool,
    kit_dir: Path | None, workdir: Path | None,
) -> IoOptions:
    """Options from the CLI's flags: tiny < quick < full."""
    params = TINY if tiny else QUICK if quick else FULL
    if jobs:
        chosen = tuple(job_by_name(name) for name in jobs)
    elif tiny:
        chosen = (job_by_name("randread-4k-qd32"),)
    else:
        chosen = JOBS
    if tiny and setups is None:
        setups = []
    options = IoOptions(
        params=params, jobs=chosen, setups=tuple(select_setups(setups, quick or tiny)), dry=dry,
        ide_setups=(IDE,) if tiny else (IDE, IDE_DIRECT), workdir=workdir,
    )
    if kit_dir is not None:
        options = IoOptions(**{**options.__dict__, "kit_dir": kit_dir})
    return options


@dataclass
class GuestRecord:
    device: str
    setup: str
    tuning: str
    boot_s: float
    wall_s: float
    disk: str


@dataclass
class IoReport:
    """The whole run: rows, per-guest facts, ratios and the setups' scores."""

    options: IoOptions
    results: list[JobResult] = field(default_factory=list)
    guests: list[GuestRecord] = field(default_factory=list)
    host: dict[str, str] = field(default_factory=dict)

    def find(self, job: str, device: str, setup: str | None = None) -> JobResult | None:
        for row in self.results:
            if row.job == job and row.device == device and (setup is None or row.setup == setup):
                return row
        return None

    def ratios(self) -> list[dict[str, Any]]:
        """PV (pvhvm's default setup) over IDE (pvhvm's IDE tuning, and IDE with O_DIRECT like
        the PV default) and over the host, per job, IOPS based."""
        out = []
        for job in self.options.jobs:
            pv = self.find(job.name, "xenbus", DEFAULT_SETUP)
            out.append({
                "job": job.name,
                "pv_over_ide": _ratio(pv, self.find(job.name, "ioemu", IDE_SETUP)),
                "pv_over_ide_direct": _ratio(pv, self.find(job.name, "ioemu", IDE_DIRECT_SETUP)),
                "pv_over_host": _ratio(pv, self.find(job.name, "host")),
            })
        return out

    def setup_scores(self) -> list[dict[str, Any]]:
        """Each PV setup's geometric-mean IOPS relative to the default, over all jobs."""
        scores = []
        for setup in self.options.setups:
            logs = []
            per_job = {}
            for job in self.options.jobs:
                ratio = _ratio(
                    self.find(job.name, "xenbus", setup.name),
                    self.find(job.name, "xenbus", DEFAULT_SETUP),
                )
                per_job[job.name] = ratio
                if ratio:
                    logs.append(math.log(ratio))
            score = math.exp(sum(logs) / len(logs)) if logs else None
            scores.append({
                "setup": setup.name, "tuning": setup.describe(), "relative_iops": score,
                "per_job": per_job,
            })
        return scores

    def winner(self) -> str | None:
        scored = [
            s for s in self.setup_scores()
            if s["relative_iops"] is not None and s["setup"] != RERUN.name
        ]
        return max(scored, key=lambda s: s["relative_iops"])["setup"] if scored else None

    def to_json(self) -> dict[str, Any]:
        params = self.options.params
        return {
            "schema": SCHEMA,
            "params": {
                "runtime_s": params.runtime_s, "ramp_s": params.ramp_s,
                "size_mib": params.size_mib, "ioengine": params.ioengine,
                "jobs": [job.name for job in self.options.jobs],
                "accel": self.options.accel.value, "dry": self.options.dry,
            },
            "host": self.host,
            "results": [row.to_json() for row in self.results],
            "guests": [g.__dict__ for g in self.guests],
            "ratios": self.ratios(),
            "setups": self.setup_scores(),
            "winner": self.winner(),
        }


def _ratio(a: JobResult | None, b: JobResult | None) -> float | None:
    if a is None or b is None or b.iops <= 0:
        return None
    return a.iops / b.iops


def host_facts() -> dict[str, str]:
    facts = {"kernel": platform.release(), "cpus": str(_cpu_count())}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for key, argv in (("qemu", ["qemu-system-x86_64", "--version"]), ("fio", ["fio", "--version"])):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            facts[key] = done.stdout.splitlines()[0].strip() if done.stdout else "?"
        except (OSError, subprocess.TimeoutExpired):
            facts[key] = "?"
    return facts


def _cpu_count() -> int:
    return os.cpu_count() or 0


Step = Callable[[str, int], None]


def guest_plan(options: IoOptions) -> list[GuestSpec]:
    """The guests one run boots, in order."""
    specs = []
    specs += [GuestSpec("ioemu", s, options.jobs, options.params) for s in options.ide_setups]
    specs += [GuestSpec("xenbus", s, options.jobs, options.params) for s in options.setups]
    return specs


def total_steps(options: IoOptions) -> int:
    guests = 0 if options.dry else len(guest_plan(options))
    return len(options.jobs) * (1 + guests) + guests


def run_io(options: IoOptions, step: Step = lambda _m, _n: None) -> IoReport:
    """Run the benchmark; ``step(message, advance)`` reports progress."""
    report = IoReport(options=options, host=host_facts())
    with tempfile.TemporaryDirectory(prefix="pvb-", dir=options.workdir) as tmp:
        work = Path(tmp)
        image = work / "data.img"
        step(f"writing the {options.params.size_mib} MiB data image", 0)
        make_data_image(image, options.params.size_mib)
        report.results += run_host(
            list(options.jobs), options.params, image, work,
            step=lambda message: step(message, 1),
        )
        specs = guest_plan(options)
        if options.dry:
            return report
        step("building the guest kit and its fio extra", 0)
        kit = build_kit(options.kit_dir)
        extra = build_bench_extra(options.kit_dir)
        for spec in specs:
            outcome = _run_one(spec, kit, extra, image, work, options, step)
            report.results += outcome.results
            report.guests.append(GuestRecord(
                device=spec.device, setup=spec.setup.name, tuning=spec.setup.describe(),
                boot_s=round(outcome.boot_s, 2), wall_s=round(outcome.wall_s, 2),
                disk=outcome.disk_line,
            ))
    return report


def _run_one(
    spec: GuestSpec, kit: Kit, extra: BenchExtra, image: Path, work: Path, options: IoOptions,
    step: Step,
) -> GuestOutcome:
    label = f"{spec.device} {spec.setup.name}"
    step(f"{label}: booting", 0)
    reported = [0]

    def on_progress(done: int) -> None:
        step(f"{label}: {done}/{len(spec.jobs)} jobs", done - reported[0])
        reported[0] = done

    outcome = run_guest(spec, kit, extra, image, work, accel=options.accel,
                        on_progress=on_progress)
    if len(outcome.results) != len(spec.jobs):
        raise BenchError(f"{label}: {len(outcome.results)} of {len(spec.jobs)} jobs reported")
    step(f"{label}: done", len(spec.jobs) - reported[0] + 1)
    return outcome
