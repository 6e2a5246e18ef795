"""Time ``pvhvm guest prepare`` on each installed-guest shape (pvhvm.guest.shapes).

Each shape's cached disk (``pvhvm image build-installed --variant shape-NAME``, built first
when missing or stale) is copied to a fresh sparse file and prepared with the real CLI
(``python -m pvhvm guest prepare CFG --json``) for its PV plan; the table gives the wall clock
and the steps prepare reports (launch, read, edit, initramfs, ...). ``--parallel N`` prepares
N shapes at once. Usage::

    .venv/bin/python benchmarks/installed-guest/bench_shapes.py [--shapes lvm,xenpv] [--parallel 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pvhvm.guest.shapes import RECIPES, SHAPES, build_shape

HVM = ('name = "bench-{name}"\nbuilder = "hvm"\nmemory = 1024\n'
       'disk = [ "file:{image},hda,w,type=xenbus" ]\n')
PV = ('name = "bench-{name}"\nmemory = 1024\nbootloader = "pygrub"\n'
      'disk = [ "file:{image},xvda,w" ]\n')


def prepare_once(name: str, disk: Path, workdir: Path) -> tuple[float, dict[str, float]]:
    image = workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(image)], check=True)
    cfg = workdir / "g.cfg"
    cfg.write_text((PV if name == "xenpv" else HVM).format(name=name, image=image))
    env = dict(os.environ, PVHVM_STATE_DIR=str(workdir / "state"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pvhvm", "guest", "prepare", str(cfg), "--json"],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"prepare {name} failed: {done.stderr}")
    seconds: dict[str, float] = json.loads(done.stdout)["seconds"]
    return wall, seconds


def bench(name: str) -> str:
    guest = build_shape(RECIPES[name])
    with tempfile.TemporaryDirectory(prefix=f"bench-shape-{name}-") as scratch:
        wall, steps = prepare_once(name, guest.disk, Path(scratch))
    detail = ", ".join(f"{k} {v:.1f}" for k, v in steps.items() if k != "total")
    return f"| {name} | {wall:.1f} | {detail} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    names = [n for n in args.shapes.split(",") if n]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        rows = list(pool.map(bench, names))
    print("| shape | prepare wall clock (s) | steps (s) |\n|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
