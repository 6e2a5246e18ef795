"""Time ``pvhvm guest prepare`` on each installed-guest shape, both initramfs methods side by side.

Each shape's cached disk (``pvhvm image build-installed --variant shape-NAME``; ``ide`` is the
installed ide variant) is copied to a fresh sparse file per method and prepared with the real
CLI (``python -m pvhvm guest prepare CFG --json``) for its PV plan: ``append`` is the default
(the drivers appended to the initramfs, no guest program run), ``regenerate`` adds
``--regenerate-initramfs`` (the guest's own update-initramfs or dracut in the appliance). The
two methods of one shape run one after the other, alternating which goes first per shape; the
table gives the wall clock and the steps prepare reports (launch, read, edit, initramfs, ...).
A shape whose image is not cached is skipped unless ``--build`` (10-40 min each under TCG).
``--parallel N`` benchmarks N shapes at once. Usage::

    .venv/bin/python benchmarks/installed-guest/bench_shapes.py [--shapes ide,xenpv] \
        [--methods append,regenerate] [--parallel 1] [--build]
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

from pvhvm.guest import installed
from pvhvm.guest.shapes import RECIPES, SHAPES, build_shape, is_built

HVM = ('name = "bench-{name}"\nbuilder = "hvm"\nmemory = 1024\n'
       'disk = [ "file:{image},hda,w,type=xenbus" ]\n')
PV = ('name = "bench-{name}"\nmemory = 1024\nbootloader = "pygrub"\n'
      'disk = [ "file:{image},xvda,w" ]\n')
METHODS = {"append": (), "regenerate": ("--regenerate-initramfs",)}


def prepare_once(name: str, disk: Path, workdir: Path,
                 method: str) -> tuple[float, dict[str, float], str]:
    image = workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(image)], check=True)
    cfg = workdir / "g.cfg"
    cfg.write_text((PV if name == "xenpv" else HVM).format(name=name, image=image))
    env = dict(os.environ, PVHVM_STATE_DIR=str(workdir / "state"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pvhvm", "guest", "prepare", str(cfg), "--json",
                           *METHODS[method]],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    image.unlink()
    if done.returncode != 0:
        raise SystemExit(f"prepare {name} ({method}) failed: {done.stderr}")
    document = json.loads(done.stdout)
    result = document.get("result", document)
    seconds: dict[str, float] = result["seconds"]
    return wall, seconds, str(result.get("initramfs", method))


def disk_of(name: str, build: bool) -> Path | None:
    if name == "ide":
        guest = installed.InstalledGuest(installed.cache_root() / "ide")
        return guest.disk if guest.disk.is_file() else None
    shape = RECIPES[name]
    guest = installed.InstalledGuest(installed.cache_root() / shape.variant)
    if is_built(guest, shape):
        return guest.disk
    return build_shape(shape).disk if build else None


def bench(name: str, methods: list[str], build: bool, turn: int) -> list[str]:
    disk = disk_of(name, build)
    if disk is None:
        return [f"| {name} | - | not cached (--build builds it) | |"]
    rows = []
    for method in (methods if turn % 2 == 0 else methods[::-1]):
        with tempfile.TemporaryDirectory(prefix=f"bench-shape-{name}-",
                                         dir=disk.parent) as scratch:
            wall, steps, ran = prepare_once(name, disk, Path(scratch), method)
        detail = ", ".join(f"{k} {v:.1f}" for k, v in steps.items() if k != "total")
        rows.append(f"| {name} | {ran} | {wall:.1f} | {detail} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(("ide", *SHAPES)))
    parser.add_argument("--methods", default="append,regenerate")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--build", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.shapes.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    print("| shape | initramfs | prepare wall clock (s) | steps (s) |\n|---|---|---|---|",
          flush=True)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        # each shape's rows as soon as they are measured (a long regenerate does not hide
        # the rows before it)
        for group in pool.map(lambda item: bench(item[1], methods, args.build, item[0]),
                              enumerate(names)):
            print("\n".join(group), flush=True)


if __name__ == "__main__":
    main()
