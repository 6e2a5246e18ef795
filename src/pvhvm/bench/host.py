"""fio on the host against the data disk image: the physical limit the guests are held to."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from pvhvm.bench import BenchError
from pvhvm.bench.jobs import FioJob, JobParams, JobResult, job_file, parse_fio_json

HOST_SETUP = "file,direct=1"


def fio_binary() -> str:
    path = shutil.which("fio")
    if path is None:
        raise BenchError("fio is not installed on the host (dev/setup installs it)")
    return path


def run_host_job(
    job: FioJob, params: JobParams, image: Path, workdir: Path, timeout: float = 600,
) -> JobResult:
    """Run one job with the host's fio on ``image``."""
    jobfile = workdir / f"{job.name}.fio"
    jobfile.write_text(job_file(job, params))
    argv = [fio_binary(), "--output-format=json", f"--filename={image}", str(jobfile)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"host fio {job.name} did not finish in {timeout:.0f} s") from err
    if done.returncode != 0:
        raise BenchError(f"host fio {job.name} failed: {done.stderr.strip()[-500:]}")
    return parse_fio_json(done.stdout, job.name, "host", f"{HOST_SETUP},{params.ioengine}")


def run_host(
    jobs: list[FioJob], params: JobParams, image: Path, workdir: Path,
    step: Callable[[str], None] = lambda _: None,
) -> list[JobResult]:
    results = []
    for job in jobs:
        step(f"host: {job.name}")
        results.append(run_host_job(job, params, image, workdir))
    return results


def make_data_image(path: Path, size_mib: int) -> None:
    """A raw image filled with pseudo-random bytes, so reads hit real blocks (no holes)."""
    if path.exists() and path.stat().st_size == size_mib << 20:
        return
    chunk = bytes(range(256)) * 4096  # 1 MiB
    block = bytearray()
    with open(path, "wb") as out:
        for index in range(size_mib):
            block[:] = chunk
            block[:8] = index.to_bytes(8, "little")
            out.write(block)
        out.flush()
        # On disk before the first job: the host's jobs run next and must not share the disk
        # with the write-back of a freshly written GiB.
        os.fsync(out.fileno())
