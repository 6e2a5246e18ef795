"""``pvhvm create --dry-run``, wall time with Python's start, one commit against another.

Both trees (``git archive REF src`` of ``--base`` and of ``--new``, default HEAD, each unpacked
in a temporary directory) run through the same console script (``.venv/bin/pvhvm``, as a user
runs it) with ``PYTHONPATH=<tree>/src``, alternating base and new run by run (the order flips
every round, so neither side always runs just after the other), on the same config, image
directory and empty state directory. Before timing, each tree runs once with bytecode writing
on, so both start from compiled ``.pyc`` files as an installed pvhvm does; ``--cold`` instead
runs with ``PYTHONDONTWRITEBYTECODE=1`` and no ``.pyc`` of pvhvm, so every run compiles it (a
source checkout in an environment that sets that variable). Per variant it prints the median
and min wall time, the median CPU time (user + sys of the child, from wait4: what load on the
other core changes least), and whether stdout, stderr and the exit status were byte-identical.

Usage::

    .venv/bin/python benchmarks/toolstack/dry_run.py --base eba78f2 [--new HEAD] [--rounds 41]
        [--cold] [--config examples/pv-only.cfg] [--save results-dry-run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / ".venv" / "bin" / "pvhvm"
IMAGES = ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img", "disk.img")

Run = tuple[float, float]  # wall seconds, CPU seconds


def commit_of(ref: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def unpack(ref: str, into: Path) -> Path:
    """``src/`` of commit ``ref`` under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_once(argv: list[str], env: dict[str, str]) -> Run:
    start = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(argv, env=env, stdout=devnull, stderr=devnull)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare with")
    parser.add_argument("--new", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--cold", action="store_true",
                        help="no .pyc files of pvhvm: every run compiles it")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--config", default=str(REPO / "examples" / "pv-only.cfg"))
    parser.add_argument("--save", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    args.base, args.new = commit_of(args.base), commit_of(args.new)

    with tempfile.TemporaryDirectory(prefix="pvhvm-dry-bench-") as tmp_name:
        tmp = Path(tmp_name)
        images = tmp / "images"
        images.mkdir()
        for name in IMAGES:  # a dry run checks that images exist, never reads them
            (images / name).write_bytes(b"\0" * 4096)
        trees = {"base": unpack(args.base, tmp / "base"), "new": unpack(args.new, tmp / "new")}
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        if args.cold:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PVHVM_STATE_DIR"] = str(tmp / "state")
        variants = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import pvhvm.cli.main": [sys.executable, "-c", "import pvhvm.cli.main"],
            "create --dry-run": [str(ENTRY), "create", args.config, f"imagedir={images}",
                                 "--dry-run"],
            "create --dry-run --json": [str(ENTRY), "create", args.config,
                                        f"imagedir={images}", "--dry-run", "--json"],
        }
        same: dict[str, bool] = {}
        for label, argv in variants.items():
            outputs = [subprocess.run(argv, env=dict(env, PYTHONPATH=f"{tree}/src"),
                                      capture_output=True) for tree in trees.values()]
            same[label] = all((o.stdout, o.stderr, o.returncode)
                              == (outputs[0].stdout, outputs[0].stderr, outputs[0].returncode)
                              for o in outputs)
            if outputs[0].returncode != 0:
                sys.exit(f"{label} failed: {outputs[0].stderr.decode(errors='replace')}")
        runs: dict[str, dict[str, list[Run]]] = {
            label: {side: [] for side in trees} for label in variants}
        for round_ in range(args.rounds):
            for label, argv in variants.items():
                sides = list(trees) if round_ % 2 == 0 else list(trees)[::-1]
                for side in sides:
                    runs[label][side].append(
                        run_once(argv, dict(env, PYTHONPATH=f"{trees[side]}/src")))

    load = os.getloadavg()
    print(f"median of {args.rounds} alternated runs per side; base {args.base}, new {args.new}"
          f"{' (cold: no .pyc)' if args.cold else ''}; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'command':<26} {'base wall':>10} {'new wall':>10} {'base min':>9} {'new min':>8}"
          f" {'base cpu':>9} {'new cpu':>8} {'new/base':>9}  identical output")
    figures = []
    for label, sides in runs.items():
        row = {"command": label, "identical_output": same[label]}
        for side, samples in sides.items():
            row[f"{side}_wall_ms"] = round(statistics.median(w for w, _ in samples) * 1000, 1)
            row[f"{side}_min_ms"] = round(min(w for w, _ in samples) * 1000, 1)
            row[f"{side}_cpu_ms"] = round(statistics.median(c for _, c in samples) * 1000, 1)
        ratio = row["new_wall_ms"] / row["base_wall_ms"]
        figures.append(row)
        print(f"{label:<26} {row['base_wall_ms']:>8.1f}ms {row['new_wall_ms']:>8.1f}ms "
              f"{row['base_min_ms']:>7.1f}ms {row['new_min_ms']:>6.1f}ms "
              f"{row['base_cpu_ms']:>7.1f}ms {row['new_cpu_ms']:>6.1f}ms {ratio:>8.2f}x  "
              f"{'yes' if same[label] else 'NO'}")
    if args.save:
        args.save.write_text(json.dumps({
            "schema": "pvhvm-bench-dry-run/1", "base": args.base, "new": args.new,
            "cold": args.cold, "rounds": args.rounds,
            "config": args.config, "load_average": load, "python": sys.version.split()[0],
            "results": figures,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
