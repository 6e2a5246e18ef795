"""The fio jobs of ``pvhvm bench io`` and the parsing of fio's JSON output (fio 3.x).

One job file per job, identical on the host and in the guests; only ``filename`` differs
(``--filename`` on the command line). 4 KiB jobs are random with libaio and ``direct=1``;
1 MiB jobs are sequential. fio's JSON gives, per job: ``read``/``write`` -> ``iops``,
``bw_bytes``, ``total_ios``, ``clat_ns.mean``; ``usr_cpu``/``sys_cpu`` in percent of one CPU
over ``job_runtime`` (ms). CPU per I/O = (usr_cpu + sys_cpu) / 100 * job_runtime / ios.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from pvhvm.bench import BenchError


@dataclass(frozen=True)
class FioJob:
    """One workload: ``rw`` (randread, randwrite, read, write), block size, queue depth."""

    name: str
    rw: str
    block_size: str
    iodepth: int


JOBS = (
    FioJob("randread-4k-qd1", "randread", "4k", 1),
    FioJob("randread-4k-qd32", "randread", "4k", 32),
    FioJob("randwrite-4k-qd32", "randwrite", "4k", 32),
    FioJob("read-1m", "read", "1m", 8),
    FioJob("write-1m", "write", "1m", 8),
)
JOB_NAMES = tuple(job.name for job in JOBS)


@dataclass(frozen=True)
class JobParams:
    """How long and over how much of the disk each job runs."""

    runtime_s: int = 10
    ramp_s: int = 2
    size_mib: int = 1024
    ioengine: str = "libaio"


def job_by_name(name: str) -> FioJob:
    for job in JOBS:
        if job.name == name:
            return job
    raise BenchError(f"unknown fio job {name!r} (known: {', '.join(JOB_NAMES)})")


def job_file(job: FioJob, params: JobParams) -> str:
    """The fio job file text (no filename: given with ``--filename``)."""
    lines = [
        f"[{job.name}]",
        f"rw={job.rw}",
        f"bs={job.block_size}",
        f"iodepth={job.iodepth}",
        f"ioengine={params.ioengine}",
        "direct=1",
        f"size={params.size_mib}m",
        "time_based=1",
        f"runtime={params.runtime_s}",
        f"ramp_time={params.ramp_s}",
        "randrepeat=0",
        "norandommap=1",
        "group_reporting=1",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class JobResult:
    """One job on one device under one setup (the ``--json`` row)."""

    job: str
    device: str  # "ioemu" | "xenbus" | "host"
    setup: str
    iops: float
    mbps: float
    #: mean completion latency
    lat_us: float
    #: usr+sys CPU time per I/O in microseconds (the guest's CPU in a guest)
    cpu_us_per_io: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any, what: str) -> float:
    if not isinstance(value, int | float):
        raise BenchError(f"fio JSON: {what} is not a number: {value!r}")
    return float(value)


def parse_fio_json(text: str, job: str, device: str, setup: str) -> JobResult:
    """One :class:`JobResult` from fio's ``--output-format=json`` output of one job."""
    start = text.find("{")
    try:
        document = json.loads(text[start:]) if start >= 0 else None
    except ValueError as err:
        raise BenchError(f"fio output of {job} on {device} is not JSON: {err}") from err
    if not isinstance(document, dict) or not document.get("jobs"):
        raise BenchError(f"fio output of {job} on {device} has no jobs")
    entry = document["jobs"][0]
    iops = mbps = lat_weighted = 0.0
    ios = 0.0
    for direction in ("read", "write"):
        side = entry.get(direction) or {}
        side_ios = _number(side.get("total_ios", 0), f"{direction}.total_ios")
        iops += _number(side.get("iops", 0), f"{direction}.iops")
        mbps += _number(side.get("bw_bytes", 0), f"{direction}.bw_bytes") / 1e6
        lat_weighted += side_ios * _number(
            (side.get("clat_ns") or {}).get("mean", 0), f"{direction}.clat_ns.mean"
        )
        ios += side_ios
    cpu: float | None = None
    runtime_ms = entry.get("job_runtime")
    if ios > 0 and isinstance(runtime_ms, int | float) and runtime_ms > 0:
        busy = _number(entry.get("usr_cpu", 0), "usr_cpu") + _number(
            entry.get("sys_cpu", 0), "sys_cpu"
        )
        cpu = busy / 100 * runtime_ms * 1000 / ios
    return JobResult(
        job=job, device=device, setup=setup, iops=iops, mbps=mbps,
        lat_us=(lat_weighted / ios / 1000) if ios else 0.0, cpu_us_per_io=cpu,
    )
