"""Time ``pvhvm guest prepare`` on the installed Debian guest, two implementations side by side.

Each run copies the cached ide guest (``pvhvm image build-installed --variant ide``) to a fresh
sparse file twice and prepares one copy with each implementation, alternating which goes first:
``--old-src`` names the ``src`` directory of a pvhvm checkout to compare with (e.g. the
host-chroot prepare from before issue 17), the other is this checkout. Both are the real CLI
(``python -m pvhvm guest prepare CFG --json``; ``--new-src`` runs another checkout's ``src``
in place of this one); the table gives the wall clock of the process
and the steps each reports. Usage::

    .venv/bin/python benchmarks/installed-guest/bench_prepare.py --old-src ../old/src --runs 2
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

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pvhvm" / "installed"


def prepare_once(src: Path | None, disk: Path, workdir: Path) -> tuple[float, dict[str, float]]:
    image = workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(image)], check=True)
    cfg = workdir / "g.cfg"
    cfg.write_text(f'name = "bench"\nbuilder = "hvm"\nmemory = 1024\n'
                   f'disk = [ "file:{image},hda,w,type=xenbus" ]\n')
    env = dict(os.environ, PVHVM_STATE_DIR=str(workdir / "state"))
    if src is not None:
        env["PYTHONPATH"] = str(src)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pvhvm", "guest", "prepare", str(cfg), "--json"],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"prepare failed ({src or 'this checkout'}): {done.stderr}")
    document = json.loads(done.stdout)
    # the --json envelope (docs/json.md); a checkout from before it printed the result bare
    seconds: dict[str, float] = document.get("result", document)["seconds"]
    image.unlink()
    return wall, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-src", type=Path, required=True)
    parser.add_argument("--new-src", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--disk", type=Path, default=CACHE / "ide" / "disk.img")
    args = parser.parse_args()
    rows: list[str] = []
    for run in range(args.runs):
        order = [("old", args.old_src.resolve()),
                 ("new", args.new_src.resolve() if args.new_src else None)]
        if run % 2:
            order.reverse()
        for name, src in order:
            with tempfile.TemporaryDirectory(prefix="bench-prepare-") as scratch:
                wall, steps = prepare_once(src, args.disk, Path(scratch))
            detail = ", ".join(f"{k} {v:.1f}" for k, v in steps.items() if k != "total")
            rows.append(f"| {run + 1} | {name} | {wall:.1f} | {detail} |")
            print(rows[-1], flush=True)
    print("\n| run | prepare | wall clock (s) | steps (s) |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
