"""Time to inspect and to check an installed guest, and which part dominates (not a test).

For each variant of the installed Debian 12 guest (pvhvm.guest.installed; built if missing)
and for the kit's boot.img, it times, ``--repeat`` times each (median, min, max):

* ``inspect``: :func:`inspect_image` whole, and the debugfs invocations it made;
* its parts: reading the initramfs out of the ext4 image (debugfs ``cat``), unpacking and
  parsing it (decompress + cpio), and everything else (partition table, superblocks, the
  small files: fstab, grub.cfg, os-release, modules.dep, config-*);
* ``check``: :func:`check_plan` for the guest's root disk made ``type=xenbus`` (one more
  inspection plus the checks);
* ``cli``: ``pvhvm guest check CONFIG`` as a process (Python start-up and imports included).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/installed-guest/bench_inspect.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pvhvm.config.domain import load_config
from pvhvm.guest.installed import build_installed
from pvhvm.guest.kit import build_kit
from pvhvm.inspect.check import check_plan
from pvhvm.inspect.cpio import Initramfs, read_initramfs
from pvhvm.inspect.extfs import ExtFilesystem
from pvhvm.inspect.image import ImageReport, inspect_image
from pvhvm.plan.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]


def timed(function: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    times = []
    result: object = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def fmt(times: list[float]) -> str:
    return (f"{statistics.median(times) * 1000:8.1f} ms  "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")


def bench_image(name: str, disk: Path, repeat: int, work: Path) -> None:
    print(f"== {name}: {disk} ({disk.stat().st_size >> 20} MiB)")
    times, report = timed(lambda: inspect_image(disk), repeat)
    assert isinstance(report, ImageReport)
    print(f"  inspect (whole)        {fmt(times)}  debugfs calls: {report.debugfs_calls}")
    total = statistics.median(times)
    entry = report.default_entry
    kernel = report.kernel_for(entry)
    root = report.root
    on_root = not any(f.role == "boot" for f in report.filesystems)
    initrd = kernel.initrd if kernel is not None else None
    if initrd is not None and root is not None and on_root:
        fs = ExtFilesystem(disk, root.offset)
        read_times, data = timed(lambda: fs.read(initrd.path, limit=1 << 30), repeat)
        assert isinstance(data, bytes)
        parse_times, parsed = timed(lambda: read_initramfs(data), repeat)
        assert isinstance(parsed, Initramfs)
        rest = total - statistics.median(read_times) - statistics.median(parse_times)
        print(f"  - read initramfs       {fmt(read_times)}  "
              f"({len(data) >> 20} MiB, {initrd.compression})")
        print(f"  - unpack + parse       {fmt(parse_times)}  ({len(parsed.members)} members)")
        print(f"  - everything else      {rest * 1000:8.1f} ms")
    cfg = work / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = 512\nboot = "c"\n'
                   f'disk = [ "file:{disk},hda,w,type=xenbus" ]\nvif = [ "" ]\n')
    plan = make_plan(load_config(cfg, {}))
    check_times, result = timed(lambda: check_plan(plan), repeat)
    problems = getattr(result, "problems", [])
    fatal = sum(1 for p in problems if p.severity.value == "fatal")
    print(f"  check (xenbus root)    {fmt(check_times)}  {len(problems)} findings, "
          f"{fatal} fatal")
    pvhvm = Path(sys.executable).parent / "pvhvm"
    cli_times, _ = timed(lambda: subprocess.run([str(pvhvm), "guest", "check", str(cfg)],
                                                capture_output=True, check=False), repeat)
    print(f"  pvhvm guest check      {fmt(cli_times)}  (a process, imports included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for variant in ("ide", "full"):
            guest = build_installed(variant=variant)
            bench_image(f"installed-{variant}", guest.disk, args.repeat, work)
        kit = build_kit(Path.home() / ".cache" / "pvhvm" / "image")
        bench_image("kit-boot.img", kit.bootdisk, args.repeat, work)


if __name__ == "__main__":
    main()
