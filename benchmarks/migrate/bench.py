"""save / restore and live migration against guest memory size: pvhvm and QEMU alone, side by
side in one run (not a timed test).

For each size (``--sizes``, MiB) one PV-only guest (examples/pv-only.cfg on the image kit,
TCG) is created with pvhvm and booted to its device report; then, in turn:

* pvhvm: ``pvhvm save`` (wall time, file size), ``pvhvm restore`` (wall time until it runs),
  ``pvhvm migrate -s '' NAME "env PVHVM_STATE_DIR=OTHER pvhvm migrate-receive"`` (wall time,
  and QEMU's total-time and downtime from ``--json``): the receiver is a second state
  directory on this host, the channel a pipe (no ssh, so the figures are pvhvm's and QEMU's,
  not the cipher's);
* QEMU alone, on the same argv (the domain's record, its sockets moved to a scratch
  directory), booted the same way: ``stop`` + ``migrate exec:cat>FILE`` (save),
  ``-incoming exec:cat FILE`` until it runs (restore), and a live migration to a second QEMU
  on the same argv with ``-incoming tcp:127.0.0.1:PORT`` (total-time, downtime). pvhvm lifts
  QEMU 7.2's 128 MiB/s cap on a migration; the bare runs lift it too.

A TCG guest that has just booted touches little of its memory, and QEMU sends untouched
pages as zero-page markers: the stream (and the time) grows far less than the memory size.
Prints one table; ``--save FILE`` writes the figures as JSON. Usage::

    .venv/bin/python benchmarks/migrate/bench.py [--sizes 256,1024] [--save FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pvhvm.guest.kit import build_kit  # noqa: E402
from pvhvm.guest.report import END  # noqa: E402
from pvhvm.qemu import qmp  # noqa: E402
from pvhvm.qemu.argv import RunPaths  # noqa: E402
from pvhvm.runtime.incoming import relocate  # noqa: E402

CONFIG = ROOT / "examples" / "pv-only.cfg"
BOOT_TIMEOUT = 300.0


def pvhvm(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pvhvm", *args], capture_output=True,
                          text=True, env={**os.environ, "PVHVM_STATE_DIR": str(state)},
                          check=False, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"pvhvm {' '.join(args)}: {done.stderr.strip()}")
    return done


def timed(work: Any) -> tuple[float, Any]:
    start = time.monotonic()
    result = work()
    return time.monotonic() - start, result


def wait_text(path: Path, text: str, timeout: float = BOOT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"{text!r} never appeared in {path}")


def wait_qmp(socket: Path, command: str = "query-status", timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return qmp.execute(socket, command)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def until_migrated(socket: Path) -> dict[str, Any]:
    while True:
        info = qmp.execute(socket, "query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            if info["status"] != "completed":
                raise SystemExit(f"bare migration {info['status']}: {info}")
            return dict(info)
        time.sleep(0.05)


def until_running(socket: Path) -> None:
    """Until the restored QEMU runs: the stream of a stopped guest loads paused (QEMU
    carries the source's run state), so it is continued once loaded, as pvhvm does."""
    while wait_qmp(socket).get("status") == "inmigrate":
        time.sleep(0.02)
    qmp.execute(socket, "cont")


def run_pvhvm(work: Path, images: Path, size: int) -> tuple[dict[str, Any], list[str]]:
    state, other = work / "a", work / "b"
    name = f"mig{size}"
    pvhvm(state, "create", str(CONFIG), f"imagedir={images}", f"name={name}",
          f"memory={size}", "--accel", "tcg")
    wait_text(state / "logs" / f"{name}.console.log", END)
    record = json.loads((state / "domains" / name / "record.json").read_text())
    saved = work / f"{name}.save"
    save_s, _ = timed(lambda: pvhvm(state, "save", name, str(saved)))
    restore_s, _ = timed(lambda: pvhvm(state, "restore", str(saved)))
    receiver = f"env PVHVM_STATE_DIR={other} {sys.executable} -m pvhvm migrate-receive"
    migrate_s, done = timed(lambda: pvhvm(state, "migrate", "-s", "", name, receiver,
                                          "--json"))
    outcome = json.loads(done.stdout)["result"]  # the --json envelope, docs/json.md
    pvhvm(other, "destroy", name)
    figures = {"save_s": save_s, "save_mib": saved.stat().st_size / 2**20,
               "restore_s": restore_s, "migrate_s": migrate_s,
               "migrate_total_ms": outcome["total_ms"],
               "migrate_downtime_ms": outcome["downtime_ms"]}
    saved.unlink()
    return figures, list(record["argv"])


def scratch_argv(argv: list[str], record_paths: dict[str, str], where: Path) -> tuple[
        list[str], RunPaths]:
    where.mkdir()
    paths = RunPaths(where / "qmp.sock", where / "ctl.sock", where / "console.sock",
                     where / "console.log")
    return [a for a in relocate(argv, record_paths, paths) if a != "-S"], paths


def run_bare(work: Path, argv: list[str], state_root: Path, name: str) -> dict[str, Any]:
    old = {"qmp_socket": str(state_root / "domains" / name / "qmp.sock"),
           "control_socket": str(state_root / "domains" / name / "ctl.sock"),
           "console_socket": str(state_root / "domains" / name / "console.sock"),
           "console_log": str(state_root / "logs" / f"{name}.console.log")}
    first, paths = scratch_argv(argv, old, work / "bare1")
    log = open(work / "bare.log", "ab")  # noqa: SIM115
    procs = []
    try:
        procs.append(subprocess.Popen(first, stdout=log, stderr=log))
        wait_text(paths.console_log, END)
        stream = work / "bare.stream"
        qmp.execute(paths.qmp_socket, "migrate-set-parameters", {"max-bandwidth": 1 << 40})
        start = time.monotonic()
        qmp.execute(paths.qmp_socket, "stop")
        qmp.execute(paths.qmp_socket, "migrate", {"uri": f"exec:cat > {stream}"})
        until_migrated(paths.qmp_socket)
        save_s = time.monotonic() - start
        qmp.execute(paths.qmp_socket, "quit")
        procs[-1].wait(timeout=30)
        second, paths2 = scratch_argv(argv, old, work / "bare2")
        start = time.monotonic()
        procs.append(subprocess.Popen([*second, "-incoming", f"exec:cat {stream}"],
                                      stdout=log, stderr=log))
        until_running(paths2.qmp_socket)
        restore_s = time.monotonic() - start
        third, paths3 = scratch_argv(argv, old, work / "bare3")
        port = 47000 + os.getpid() % 1000
        procs.append(subprocess.Popen([*third, "-incoming", f"tcp:127.0.0.1:{port}"],
                                      stdout=log, stderr=log))
        wait_qmp(paths3.qmp_socket)
        qmp.execute(paths2.qmp_socket, "migrate-set-parameters", {"max-bandwidth": 1 << 40})
        start = time.monotonic()
        qmp.execute(paths2.qmp_socket, "migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        info = until_migrated(paths2.qmp_socket)
        migrate_s = time.monotonic() - start
        figures = {"save_s": save_s, "save_mib": stream.stat().st_size / 2**20,
                   "restore_s": restore_s, "migrate_s": migrate_s,
                   "migrate_total_ms": info.get("total-time", 0),
                   "migrate_downtime_ms": info.get("downtime", 0)}
        stream.unlink()
        return figures
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024",
                        help="guest memory sizes in MiB (default 256,1024; the README's run: "
                             "256,512,1024,2048)")
    parser.add_argument("--save", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    kit = build_kit(Path(os.environ.get("PVHVM_IMAGE_DIR",
                                        Path.home() / ".cache" / "pvhvm" / "image")))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        work = Path(tempfile.mkdtemp(prefix="pvmb-", dir="/tmp"))
        try:
            images = work / "img"
            images.mkdir()
            for source in (kit.vmlinuz, kit.initramfs):
                os.symlink(source, images / source.name)
            shutil.copy(kit.rootfs, images / kit.rootfs.name)
            mine, argv = run_pvhvm(work, images, size)
            bare = run_bare(work, argv, work / "a", f"mig{size}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append({"memory_mib": size, "pvhvm": mine, "qemu": bare})
        print(f"{size} MiB done", file=sys.stderr)
    header = (f"{'MiB':>5} {'who':6} {'save s':>7} {'file MiB':>8} {'restore s':>9} "
              f"{'migrate s':>9} {'total ms':>8} {'downtime ms':>11}")
    print(header)
    for row in rows:
        for who in ("pvhvm", "qemu"):
            f = row[who]
            print(f"{row['memory_mib']:>5} {who:6} {f['save_s']:7.2f} {f['save_mib']:8.1f} "
                  f"{f['restore_s']:9.2f} {f['migrate_s']:9.2f} {f['migrate_total_ms']:8} "
                  f"{f['migrate_downtime_ms']:11}")
    if args.save:
        args.save.write_text(json.dumps({"host": platform.node(), "rows": rows}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
