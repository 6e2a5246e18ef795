"""Benchmark guests: the kit's kernel + initramfs + fio extra, one data disk, fio inside.

A guest is planned through the normal stages (a generated xl-style config → load_config →
make_plan → qemu_argv), so its disk options are exactly pvhvm's; only the PV disk tuning varies
per setup. QEMU runs unsupervised (no ``-no-shutdown``): the guest's ``poweroff -f`` ends it.
The console protocol (files/bench-init)::

    PVHVM-BENCH-BOOTED <uptime>
    PVHVM-BENCH-DISK /dev/vda driver=virtio_blk
    PVHVM-BENCH-JOB-BEGIN <job>
    { fio JSON }
    PVHVM-BENCH-JOB-END <job> rc=<n>
    PVHVM-BENCH-DONE
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pvhvm.bench import BenchError
from pvhvm.bench.jobs import FioJob, JobParams, JobResult, job_file, parse_fio_json
from pvhvm.bench.setups import Setup
from pvhvm.config.domain import config_from_text
from pvhvm.guest import initramfs
from pvhvm.guest.bench import BenchExtra
from pvhvm.guest.kit import Kit
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.qemu.argv import Accel, ArgvOptions, RunPaths, qemu_argv

BOOTED = "PVHVM-BENCH-BOOTED"
DISK = "PVHVM-BENCH-DISK"
JOB_BEGIN = "PVHVM-BENCH-JOB-BEGIN"
JOB_END = "PVHVM-BENCH-JOB-END"
DONE = "PVHVM-BENCH-DONE"
ERROR = "PVHVM-ERROR"
GUEST_MEMORY_MIB = 768
GUEST_VCPUS = 2
CMDLINE = "console=ttyS0,115200 quiet rdinit=/bench/init"
_END_RE = re.compile(rf"{JOB_END} (\S+) rc=(\d+)")


@dataclass(frozen=True)
class GuestSpec:
    """What one benchmark boot runs: the data disk as ``device`` under ``setup``."""

    device: str  # "ioemu" | "xenbus"
    setup: Setup
    jobs: tuple[FioJob, ...]
    params: JobParams

    @property
    def setup_label(self) -> str:
        return self.setup.name


@dataclass
class GuestOutcome:
    """What one benchmark boot produced."""

    results: list[JobResult] = field(default_factory=list)
    #: seconds from starting QEMU to the guest's first line from its init
    boot_s: float = 0.0
    wall_s: float = 0.0
    disk_line: str = ""
    argv: list[str] = field(default_factory=list)


def guest_config(spec: GuestSpec, kit: Kit, initrd: Path, image: Path, name: str) -> str:
    """The xl-style config of a benchmark guest (the data disk is its only disk)."""
    vdev = "hda" if spec.device == "ioemu" else "xvda"
    return "\n".join([
        f'name = "{name}"', 'builder = "hvm"',
        f"memory = {GUEST_MEMORY_MIB}",
        f"vcpus = {GUEST_VCPUS}",
        f'kernel = "{kit.vmlinuz}"',
        f'ramdisk = "{initrd}"',
        f'extra = "{CMDLINE}"',
        f'disk = [ "format=raw, vdev={vdev}, access=rw, type={spec.device}, target={image}" ]',
        'on_poweroff = "destroy"',
        'on_reboot = "destroy"',
        'on_crash = "destroy"',
        "",
    ])


def run_archive(spec: GuestSpec) -> bytes:
    """The per-run newc archive: ``bench/run.env`` and ``bench/jobs/<job>.fio``."""
    names = " ".join(job.name for job in spec.jobs)
    entries = [
        initramfs.CpioEntry.directory("bench"),
        initramfs.CpioEntry.directory("bench/jobs"),
        initramfs.CpioEntry.file("bench/run.env", f'BENCH_JOBS="{names}"\n'.encode()),
    ]
    entries += [
        initramfs.CpioEntry.file(f"bench/jobs/{job.name}.fio", job_file(job, spec.params).encode())
        for job in spec.jobs
    ]
    return initramfs.cpio_newc(entries)


def write_initrd(kit: Kit, extra: BenchExtra, spec: GuestSpec, output: Path) -> None:
    """kit initramfs (gzip) + fio extra + run archive, each padded to 512 bytes with zeros."""
    with open(output, "wb") as out:
        for part in (kit.initramfs, extra.archive):
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            out.write(b"\0" * (-out.tell() % 512))
        out.write(run_archive(spec))


@dataclass(frozen=True)
class JobOutput:
    """What one job printed between its markers on a benchmark guest's console."""

    job: str
    returncode: int
    #: the job's output lines, kernel messages (``[ ...``) left out
    body: list[str]

    def failure(self) -> str:
        stderr = [b for b in self.body if b.startswith("PVHVM-BENCH-STDERR")]
        return " | ".join(stderr[-3:]) or " ".join(self.body)[-300:]


def split_console(text: str, header: str) -> tuple[list[JobOutput], str]:
    """The jobs a benchmark guest printed, and its first line starting with ``header``."""
    lines = [line.replace("\r", "") for line in text.split("\n")]
    header_line = next((line.strip() for line in lines if line.startswith(header)), "")
    jobs: list[JobOutput] = []
    current: str | None = None
    body: list[str] = []
    for line in lines:
        if line.startswith(JOB_BEGIN):
            current, body = line.split()[1], []
            continue
        match = _END_RE.search(line)
        if match and current is not None:
            kept = [b for b in body if not b.startswith("[")]
            jobs.append(JobOutput(current, int(match.group(2)), kept))
            current = None
            continue
        if current is not None:
            body.append(line)
    return jobs, header_line


R = TypeVar("R")


def job_results(
    jobs: list[JobOutput], guest: str, parse: Callable[[str, str], R], program: str = ""
) -> list[R]:
    """``parse(output, job)`` for each job; BenchError naming the first job that failed."""
    results: list[R] = []
    for job in jobs:
        if job.returncode != 0:
            raise BenchError(
                f"{program}{job.job} failed in the {guest} guest (rc={job.returncode}): "
                f"{job.failure()}"
            )
        results.append(parse("\n".join(job.body), job.job))
    return results


def parse_console(text: str, spec: GuestSpec) -> tuple[list[JobResult], str]:
    """Job results and the disk line from a benchmark guest's console log."""
    jobs, disk_line = split_console(text, DISK)
    results = job_results(
        jobs, spec.device,
        lambda output, job: parse_fio_json(output, job, spec.device, spec.setup_label),
        program="fio ",
    )
    return results, disk_line


def run_guest(
    spec: GuestSpec, kit: Kit, extra: BenchExtra, image: Path, workdir: Path, *,
    accel: Accel = Accel.TCG, timeout: float = 900,
    on_progress: Callable[[int], None] | None = None,
) -> GuestOutcome:
    """Boot one benchmark guest, wait for it to power off, and parse its console log."""
    name = f"bench-{spec.device}-{re.sub(r'[^a-z0-9]+', '-', spec.setup.name)}"
    rundir = workdir / name
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    initrd = rundir / "initrd"
    write_initrd(kit, extra, spec, initrd)
    config = config_from_text(guest_config(spec, kit, initrd, image, name), f"{rundir}/cfg")
    plan = make_plan(config, Platform.QEMU)
    # Unix socket paths must stay under 108 bytes: sockets go to a short directory in /tmp
    sockets = Path(tempfile.mkdtemp(prefix="pvq-", dir="/tmp"))
    paths = RunPaths(
        qmp_socket=sockets / "qmp", control_socket=sockets / "ctl",
        console_socket=sockets / "con", console_log=rundir / "console.log",
    )
    try:
        return _boot(spec, name, rundir, initrd, plan, paths, accel, timeout, on_progress)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _boot(
    spec: GuestSpec, name: str, rundir: Path, initrd: Path, plan: Plan, paths: RunPaths,
    accel: Accel, timeout: float, on_progress: Callable[[int], None] | None,
) -> GuestOutcome:
    tuning = spec.setup.tuning
    options = ArgvOptions(
        accel=accel, supervised=False,
        pv_tuning=tuning if spec.device == "xenbus" else ArgvOptions().pv_tuning,
        ide_tuning=tuning if spec.device == "ioemu" else ArgvOptions().ide_tuning,
    )
    argv = qemu_argv(plan, paths, options)
    outcome = GuestOutcome(argv=argv)
    qemu_log = rundir / "qemu.log"
    start = time.monotonic()
    with open(qemu_log, "wb") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        seen = 0
        try:
            while proc.poll() is None:
                if time.monotonic() - start > timeout:
                    raise BenchError(
                        f"{name} did not finish in {timeout:.0f} s: " + _tail(paths.console_log)
                    )
                text = _read(paths.console_log)
                if not outcome.boot_s and BOOTED in text:
                    outcome.boot_s = time.monotonic() - start
                if on_progress is not None:
                    done = text.count(JOB_END)
                    if done != seen:
                        seen = done
                        on_progress(done)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcome.wall_s = time.monotonic() - start
    text = _read(paths.console_log)
    if DONE not in text:
        qemu_out = _read(qemu_log).strip()[-500:]
        raise BenchError(
            f"{name} stopped before finishing (QEMU exit {proc.returncode}; {qemu_out}): "
            + _tail(paths.console_log)
        )
    outcome.results, outcome.disk_line = parse_console(text, spec)
    os.unlink(initrd)
    return outcome


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path) -> str:
    return _read(path)[-1500:] or "(empty console log)"
