"""Many domains at once: N paused PV-only guests created together, then listed and destroyed.

For N in --counts (default 1 10 50): start N `pvhvm create --paused` at the same moment (one
process each, as N users would), wait for all, and report the wall time, how many failed,
the time of one `pvhvm list`, and the resident and private memory of the toolstack (the host
supervisor, one process for all domains)
beside that of the QEMUs, so growth per domain is visible. Every domain is then destroyed
and the state directory must be empty of domains and QEMUs.

    .venv/bin/python benchmarks/scale/bench.py [--counts 1 10 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pvhvm.guest.kit import build_kit

ROOT = Path(__file__).resolve().parents[2]


def pvhvm(state: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PVHVM_STATE_DIR": str(state)}
    return subprocess.Popen([sys.executable, "-m", "pvhvm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _summed_kib(program: bytes, marker: bytes, source: str,
                fields: tuple[str, ...]) -> tuple[int, int]:
    """(processes, total KiB) of ``fields`` in /proc/PID/``source`` over the processes of
    ``program`` whose command line holds ``marker``."""
    count = total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if program not in cmdline or marker not in cmdline:
                continue
            text = (entry / source).read_text()
        except OSError:
            continue
        values = [int(line.split()[1]) for line in text.splitlines() if line.startswith(fields)]
        if values:
            count += 1
            total += sum(values)
    return count, total


def rss_kib(program: bytes, marker: bytes) -> tuple[int, int]:
    """(processes, total VmRSS in KiB) of ``program`` whose command line holds ``marker``."""
    return _summed_kib(program, marker, "status", ("VmRSS:",))


def private_kib(program: bytes, marker: bytes) -> int:
    """Total private memory (Private_Clean + Private_Dirty, /proc/PID/smaps_rollup) in KiB."""
    return _summed_kib(program, marker, "smaps_rollup", ("Private_Clean:", "Private_Dirty:"))[1]


def one_round(count: int, kit_dir: Path, work: Path) -> dict[str, object]:
    state = work / f"s{count}"
    config = work / "scale.cfg"
    config.write_text(
        'builder = "hvm"\nmemory = 64\nvcpus = 1\n'
        f'kernel = "{kit_dir}/vmlinuz"\nramdisk = "{kit_dir}/initramfs.cpio.gz"\n'
        'extra = "console=ttyS0 root=/dev/vda"\n'
        'disk = [ "format=raw, vdev=xvda, access=r, type=xenbus, target=%s/rootfs.ext4" ]\n'
        % kit_dir
    )
    names = [f"scale{count}-{i}" for i in range(count)]
    started = time.perf_counter()
    procs = [pvhvm(state, "create", str(config), f"name={n}", "--paused", "--accel", "tcg",
                   "--no-check") for n in names]
    failures = [p.communicate()[1].strip().splitlines()[-1:] for p in procs]
    wall = time.perf_counter() - started
    failed = [f for p, f in zip(procs, failures, strict=True) if p.returncode != 0]
    listed = time.perf_counter()
    listing = pvhvm(state, "list", "--json")
    out, _ = listing.communicate()
    list_s = time.perf_counter() - listed
    running = len(json.loads(out)["result"]) if listing.returncode == 0 else -1
    marker = str(state).encode()
    supervisors = rss_kib(b"pvhvm.runtime.hostd", marker)
    toolstack_private = private_kib(b"pvhvm.runtime.hostd", marker)
    qemus = rss_kib(b"qemu-system", marker)
    for proc in [pvhvm(state, "destroy", n) for n in names]:
        proc.communicate()
    left = len(list((state / "domains").glob("*"))) if (state / "domains").exists() else 0
    left_qemu = rss_kib(b"qemu-system", marker)[0]
    return {
        "domains": count, "create_wall_s": round(wall, 2), "failed": len(failed),
        "first_failure": failed[0] if failed else None, "listed": running,
        "list_s": round(list_s, 3),
        "supervisors": supervisors[0], "supervisor_rss_mib": round(supervisors[1] / 1024, 1),
        "qemus": qemus[0], "qemu_rss_mib": round(qemus[1] / 1024, 1),
        "toolstack_mib_per_domain": round(supervisors[1] / 1024 / max(count, 1), 1),
        "toolstack_private_mib": round(toolstack_private / 1024, 1),
        "left_after_destroy": left + left_qemu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--kit", type=Path, default=Path.home() / ".cache" / "pvhvm" / "image")
    args = parser.parse_args()
    kit = build_kit(args.kit)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pvsc-", dir="/tmp") as tmp:
        for count in args.counts:
            rows.append(one_round(count, kit.directory, Path(tmp)))
            if not args.json:
                print(rows[-1], flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
