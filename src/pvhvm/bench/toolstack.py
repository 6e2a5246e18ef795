"""``pvhvm bench toolstack``: what pvhvm itself costs, and how that grows with disks.

* ``create`` (the CLI, until the guest's QMP answers) versus the same QEMU argv started by hand
  (``create --dry-run --json`` → ``qemu_argv``; pvhvm has no ``-daemonize``: its supervisor runs
  QEMU, so "by hand" is Popen + polling QMP until ``qmp_capabilities`` returns);
* ``create --dry-run`` wall time including Python's start, and the CLI's import time;
* plan + argv (in process and through the CLI) and real create for 1, 4, 16, 64 PV disks;
* boot time to the guest's device report (``PVHVM-REPORT-END``) with the root disk IDE vs PV.

Every figure is the median of ``repeat`` runs; all guests use ``--accel tcg``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvhvm.bench import BenchError
from pvhvm.config.domain import config_from_text
from pvhvm.guest.kit import Kit, build_kit
from pvhvm.guest.report import END
from pvhvm.hostfs import cache_home
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.qemu.argv import Accel, ArgvOptions, RunPaths, qemu_argv

SCHEMA = "pvhvm-bench-toolstack/1"
DISK_COUNTS = (1, 4, 16, 64)
QMP_TIMEOUT = 60.0
BOOT_TIMEOUT = 300.0


@dataclass(frozen=True)
class ToolstackOptions:
    repeat: int = 5
    disk_counts: tuple[int, ...] = DISK_COUNTS
    #: real creates are done for disk counts up to this
    real_create_max_disks: int = 64
    boot: bool = True
    kit_dir: Path = field(default_factory=lambda: cache_home() / "image")


Step = Callable[[str], None]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def vdev_name(index: int) -> str:
    """xvda, xvdb, ..., xvdz, xvdaa, ... (xen-vbd-interface(7) letters)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "xvd" + letters


def pv_config(name: str, kit: Kit, images: list[Path], *, root: str = "xenbus",
              rootfs: Path | None = None) -> str:
    """A direct-boot guest whose disks are ``images`` (PV), or a report guest on ``rootfs``."""
    disks = []
    if rootfs is not None:
        vdev = "hda" if root == "ioemu" else "xvda"
        disks.append(f"format=raw, vdev={vdev}, access=rw, type={root}, target={rootfs}")
    offset = len(disks)
    disks += [
        f"format=raw, vdev={vdev_name(i + offset)}, access=rw, type=xenbus, target={image}"
        for i, image in enumerate(images)
    ]
    return "\n".join([
        f'name = "{name}"', 'builder = "hvm"', "memory = 256", "vcpus = 1",
        f'kernel = "{kit.vmlinuz}"', f'ramdisk = "{kit.initramfs}"',
        'extra = "console=ttyS0,115200 pvhvm.poweroff=1"',
        "disk = [" + ", ".join(json.dumps(d) for d in disks) + "]",
        'on_poweroff = "destroy"', "",
    ])


class Cli:
    """The pvhvm CLI in a subprocess with a private state directory."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def run(
        self, *args: str, timeout: float = 300,
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        env = {**os.environ, "PVHVM_STATE_DIR": str(self.state)}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pvhvm", *args], capture_output=True,
                              text=True, env=env, timeout=timeout, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise BenchError(f"pvhvm {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
        return elapsed, done


def wait_qmp(path: Path, timeout: float = QMP_TIMEOUT) -> None:
    """Until QEMU's QMP socket answers ``qmp_capabilities`` (greeting read first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(path))
                buffer = b""
                while b"\n" not in buffer:
                    buffer += sock.recv(4096)
                sock.sendall(b'{"execute": "qmp_capabilities"}\n')
                buffer = b""
                while b'"return"' not in buffer:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("QMP closed")
                    buffer += chunk
                return
        except OSError:
            time.sleep(0.005)
    raise BenchError(f"QMP at {path} did not answer in {timeout:.0f} s")


def qemu_by_hand(argv: list[str]) -> float:
    """Start ``argv`` (from ``create --dry-run --json``) and time it until QMP answers."""
    qmp = _qmp_socket(argv)
    for option in argv:
        for part in option.split(","):
            if part.startswith(("path=", "logfile=")):
                Path(part.split("=", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        wait_qmp(qmp)
        return time.perf_counter() - start
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _qmp_socket(argv: list[str]) -> Path:
    for option in argv:
        if option.startswith("socket,id=qmp,"):
            for part in option.split(","):
                if part.startswith("path="):
                    return Path(part[5:])
    raise BenchError("the dry-run argv has no QMP socket")


def import_time(repeat: int) -> dict[str, Any]:
    """Wall time of ``python -c 'import pvhvm.cli.main'`` vs ``python -c pass``, and the
    heaviest imports by ``-X importtime`` (cumulative µs)."""
    def wall(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    bare = _median([wall("pass") for _ in range(repeat)])
    cli = _median([wall("import pvhvm.cli.main") for _ in range(repeat)])
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pvhvm.cli.main"],
                          capture_output=True, text=True, check=True)
    heaviest: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            name = parts[2].rstrip()
            if not name.startswith("  "):  # top level imports only
                heaviest.append((int(parts[1]), name.strip()))
    heaviest.sort(reverse=True)
    return {
        "python_start_s": bare, "import_cli_s": cli, "import_cost_s": round(cli - bare, 4),
        "heaviest_us": [{"module": m, "cumulative_us": us} for us, m in heaviest[:8]],
    }


def plan_and_argv_seconds(kit: Kit, images: list[Path], repeat: int, root: Path) -> float:
    """In-process config → plan → argv for a guest with ``images`` as PV disks."""
    text = pv_config("scale", kit, images)
    paths = RunPaths(root / "q", root / "c", root / "s", root / "l")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        plan = make_plan(config_from_text(text), Platform.QEMU)
        qemu_argv(plan, paths, ArgvOptions(accel=Accel.TCG))
        times.append(time.perf_counter() - start)
    return _median(times)


def run_toolstack(options: ToolstackOptions, step: Step = lambda _: None) -> dict[str, Any]:
    step("building the guest kit")
    kit = build_kit(options.kit_dir)
    result: dict[str, Any] = {"schema": SCHEMA, "repeat": options.repeat}
    with tempfile.TemporaryDirectory(prefix="pvt-", dir="/tmp") as tmp:
        root = Path(tmp)
        cli = Cli(root / "state")
        images = []
        for index in range(max(options.disk_counts)):
            image = root / f"d{index}.img"
            with open(image, "wb") as out:
                out.truncate(16 << 20)
            images.append(image)

        step("import time")
        result["import"] = import_time(options.repeat)

        scaling = []
        for count in options.disk_counts:
            step(f"{count} PV disks: plan + argv, dry-run, create")
            config = root / f"disks{count}.cfg"
            name = f"scale{count}"
            config.write_text(pv_config(name, kit, images[:count]))
            row: dict[str, Any] = {"disks": count}
            row["plan_argv_s"] = plan_and_argv_seconds(kit, images[:count], options.repeat, root)
            dry = [cli.run("create", "--dry-run", "--json", "--accel", "tcg", str(config))
                   for _ in range(options.repeat)]
            row["dry_run_cli_s"] = _median([elapsed for elapsed, _ in dry])
            argv = json.loads(dry[0][1].stdout)["result"]["qemu_argv"]  # docs/json.md
            row["argv_words"] = len(argv)
            if count <= options.real_create_max_disks:
                try:
                    row.update(_create_vs_hand(cli, config, name, argv, options.repeat))
                except BenchError as err:
                    row["create_error"] = str(err).splitlines()[-1][-300:]
            scaling.append(row)
        result["scaling"] = scaling
        first = scaling[0]
        result["create_vs_qemu"] = {
            key: first.get(key) for key in ("create_s", "qemu_by_hand_s", "overhead_s")
        }
        result["dry_run_s"] = first["dry_run_cli_s"]

        if options.boot:
            result["boot"] = _boot_times(cli, kit, root, options, step)
    return result


def _create_vs_hand(
    cli: Cli, config: Path, name: str, argv: list[str], repeat: int,
) -> dict[str, Any]:
    creates, hands = [], []
    for _ in range(repeat):
        elapsed, _done = cli.run("create", "--accel", "tcg", "--paused", str(config))
        creates.append(elapsed)
        cli.run("destroy", name)
        hands.append(qemu_by_hand(argv))
        shutil.rmtree(cli.state / "domains" / name, ignore_errors=True)
    create_s, hand_s = _median(creates), _median(hands)
    return {"create_s": create_s, "qemu_by_hand_s": hand_s,
            "overhead_s": round(create_s - hand_s, 4)}


def _boot_times(cli: Cli, kit: Kit, root: Path, options: ToolstackOptions,
                step: Step) -> dict[str, Any]:
    """Seconds from ``create`` to the device report, root disk IDE vs PV (medians)."""
    out: dict[str, Any] = {}
    runs = max(1, min(options.repeat, 3))
    for device in ("ioemu", "xenbus"):
        times = []
        for attempt in range(runs):
            step(f"boot to the device report: {device} ({attempt + 1}/{runs})")
            rootfs = root / f"root-{device}.ext4"
            shutil.copyfile(kit.rootfs, rootfs)
            name = f"boot-{device}"
            config = root / f"{name}.cfg"
            config.write_text(pv_config(name, kit, [], root=device, rootfs=rootfs))
            log = cli.state / "logs" / f"{name}.console.log"
            start = time.perf_counter()
            cli.run("create", "--accel", "tcg", str(config))
            try:
                while END not in (log.read_text(errors="replace") if log.exists() else ""):
                    if time.perf_counter() - start > BOOT_TIMEOUT:
                        raise BenchError(f"{name}: no device report in {BOOT_TIMEOUT:.0f} s")
                    time.sleep(0.05)
                times.append(time.perf_counter() - start)
            finally:
                # it may have powered off and been destroyed already
                with contextlib.suppress(BenchError):
                    cli.run("destroy", name)
        out[device] = {"to_report_s": _median(times), "runs": runs}
    out["pv_over_ide"] = round(out["xenbus"]["to_report_s"] / out["ioemu"]["to_report_s"], 3)
    return out
