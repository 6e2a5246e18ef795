"""The benchmarks run and their output parses. They are not measured here (see benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pvhvm.bench import BenchError
from pvhvm.bench.guest import GuestSpec, parse_console, run_archive
from pvhvm.bench.io import IoReport, io_options
from pvhvm.bench.jobs import (
    JOB_NAMES,
    JOBS,
    JobParams,
    JobResult,
    job_by_name,
    job_file,
    parse_fio_json,
)
from pvhvm.bench.setups import DEFAULT, DEFAULT_SETUP, IDE, IDE_DIRECT, select_setups
from pvhvm.bench.toolstack import vdev_name
from pvhvm.guest.bench import parse_dpkg_search, parse_needed
from pvhvm.qemu.argv import PV_DISK_TUNING
from tests import jsonout

FIO_JSON = {
    "fio version": "fio-3.33",
    "jobs": [{
        "jobname": "randread-4k-qd32", "job_runtime": 1000, "usr_cpu": 10.0, "sys_cpu": 30.0,
        "read": {"iops": 2000.0, "bw_bytes": 8192000, "total_ios": 2000,
                 "clat_ns": {"mean": 16000.0}},
        "write": {"iops": 0.0, "bw_bytes": 0, "total_ios": 0, "clat_ns": {"mean": 0.0}},
    }],
}
EXPECTED_JOBS = {"randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32", "read-1m", "write-1m"}


def test_job_names_are_the_issue_s() -> None:
    assert set(JOB_NAMES) == EXPECTED_JOBS


def test_job_file_is_direct_and_time_based() -> None:
    text = job_file(job_by_name("randread-4k-qd32"), JobParams(runtime_s=3, ramp_s=1, size_mib=8))
    for line in ("[randread-4k-qd32]", "rw=randread", "bs=4k", "iodepth=32", "direct=1",
                 "ioengine=libaio", "runtime=3", "size=8m", "time_based=1"):
        assert line in text.splitlines()
    with pytest.raises(BenchError, match="unknown fio job"):
        job_by_name("nope")


def test_parse_fio_json_computes_cpu_per_io() -> None:
    row = parse_fio_json("noise before\n" + json.dumps(FIO_JSON), "randread-4k-qd32", "xenbus",
                         DEFAULT_SETUP)
    assert row.iops == 2000.0
    assert row.mbps == pytest.approx(8.192)
    assert row.lat_us == pytest.approx(16.0)
    # 40 % of 1 s over 2000 I/Os = 200 µs each
    assert row.cpu_us_per_io == pytest.approx(200.0)
    with pytest.raises(BenchError):
        parse_fio_json("not json", "x", "host", "s")


def test_parse_console_reads_jobs_between_markers() -> None:
    spec = GuestSpec("xenbus", DEFAULT, JOBS[:1], JobParams())
    text = "\r\n".join([
        "[    1.0] kernel noise", "PVHVM-BENCH-BOOTED 1.5",
        "PVHVM-BENCH-DISK /dev/vda driver=virtio_blk",
        "PVHVM-BENCH-JOB-BEGIN randread-4k-qd32", *json.dumps(FIO_JSON, indent=1).splitlines(),
        "PVHVM-BENCH-JOB-END randread-4k-qd32 rc=0", "PVHVM-BENCH-DONE",
    ])
    results, disk = parse_console(text, spec)
    assert [r.job for r in results] == ["randread-4k-qd32"]
    assert disk.endswith("driver=virtio_blk")
    failed = text.replace("rc=0", "rc=1")
    with pytest.raises(BenchError, match="rc=1"):
        parse_console(failed, spec)


def test_run_archive_holds_the_job_files() -> None:
    archive = run_archive(GuestSpec("ioemu", IDE, JOBS, JobParams()))
    assert archive.startswith(b"070701")
    for job in JOBS:
        assert f"bench/jobs/{job.name}.fio".encode() in archive


def test_setups_put_the_default_first_and_drop_reruns() -> None:
    setups = select_setups(None, quick=True)
    assert setups[0] is DEFAULT and setups[0].tuning == PV_DISK_TUNING
    assert setups[-1].name == "pvhvm-default-rerun"
    assert len({s.tuning for s in setups[:-1]}) == len(setups) - 1
    assert select_setups([], quick=True) == [DEFAULT]
    with pytest.raises(BenchError, match="unknown setup"):
        select_setups(["fastest"], quick=True)


def test_ide_guests_and_ratios() -> None:
    """Quick and full runs boot IDE twice (pvhvm's tuning, and O_DIRECT like the PV default);
    the ratios divide PV by each, from rows the report finds by setup."""
    quick = io_options(quick=True, tiny=False, setups=[], jobs=["read-1m"], dry=False,
                       kit_dir=None, workdir=None)
    assert quick.ide_setups == (IDE, IDE_DIRECT)
    assert IDE_DIRECT.tuning.cache == "none" and IDE_DIRECT.describe() == "cache=none,aio=native"
    tiny = io_options(quick=False, tiny=True, setups=None, jobs=None, dry=False, kit_dir=None,
                      workdir=None)
    assert tiny.ide_setups == (IDE,)

    def row(device: str, setup: str, iops: float) -> JobResult:
        return JobResult("read-1m", device, setup, iops, iops, 1.0, None)

    report = IoReport(options=quick, results=[
        row("host", "host", 800.0), row("ioemu", "ide", 400.0),
        row("ioemu", "ide-direct", 200.0), row("xenbus", DEFAULT_SETUP, 1000.0),
    ])
    assert report.ratios() == [{
        "job": "read-1m", "pv_over_ide": 2.5, "pv_over_ide_direct": 5.0, "pv_over_host": 1.25,
    }]


def test_library_resolution_parsers() -> None:
    readelf = (
        " 0x0000000000000001 (NEEDED)             Shared library: [libaio.so.1]\n"
        " 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n"
        " 0x000000000000001d (RUNPATH)            Library runpath: [/usr/lib/x/ceph:/opt]\n"
    )
    assert parse_needed(readelf) == (["libaio.so.1", "libc.so.6"], ["/usr/lib/x/ceph", "/opt"])
    dpkg = "libaio1:amd64: /usr/lib/x86_64-linux-gnu/libaio.so.1\n"
    assert parse_dpkg_search(dpkg) == ["libaio1"]


def test_vdev_names() -> None:
    assert [vdev_name(i) for i in (0, 1, 25, 26, 63)] == [
        "xvda", "xvdb", "xvdz", "xvdaa", "xvdbl"
    ]


# --- the commands themselves --------------------------------------------------------------


def pvhvm(*args: str, tmp: Path, timeout: float = 240) -> dict[str, Any]:
    env = {**os.environ, "PVHVM_STATE_DIR": str(tmp / "state")}
    done = subprocess.run([sys.executable, "-m", "pvhvm", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    document = jsonout.result(done.stdout)
    assert isinstance(document, dict)
    return document


def check_io_document(document: dict[str, Any], devices: set[str]) -> None:
    assert document["schema"] == "pvhvm-bench-io/1"
    assert document["results"], document
    seen = set()
    for row in document["results"]:
        assert row["job"] in EXPECTED_JOBS
        assert row["device"] in {"ioemu", "xenbus", "host"}
        assert isinstance(row["setup"], str)
        assert isinstance(row["iops"], float) and row["iops"] > 0
        assert isinstance(row["mbps"], float) and row["mbps"] > 0
        seen.add(row["device"])
    assert seen == devices
    for ratio in document["ratios"]:
        assert ratio["job"] in EXPECTED_JOBS


def test_bench_io_dry_runs_host_fio(tmp_path: Path) -> None:
    document = pvhvm("bench", "io", "--tiny", "--dry", "--json", "--workdir", str(tmp_path),
                     tmp=tmp_path)
    check_io_document(document, {"host"})


@pytest.mark.e2e
def test_bench_io_tiny_boots_ide_and_pv_guests(tmp_path: Path) -> None:
    plot = tmp_path / "io.png"
    document = pvhvm("bench", "io", "--tiny", "--json", "--workdir", str(tmp_path),
                     "--plot", str(plot), tmp=tmp_path)
    check_io_document(document, {"host", "ioemu", "xenbus"})
    disks = {g["device"]: g["disk"] for g in document["guests"]}
    assert "driver=virtio_blk" in disks["xenbus"]
    assert "/dev/sda" in disks["ioemu"]
    assert document["winner"] == DEFAULT_SETUP
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bench_toolstack_tiny(tmp_path: Path) -> None:
    document = pvhvm("bench", "toolstack", "--tiny", "--json", tmp=tmp_path)
    assert document["schema"] == "pvhvm-bench-toolstack/1"
    assert document["import"]["import_cli_s"] > 0
    assert [row["disks"] for row in document["scaling"]] == [1, 4]
    for row in document["scaling"]:
        assert row["plan_argv_s"] > 0 and row["dry_run_cli_s"] > 0
        assert row["create_s"] > 0 and row["qemu_by_hand_s"] > 0
    assert document["create_vs_qemu"]["overhead_s"] is not None
