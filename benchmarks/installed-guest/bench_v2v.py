"""virt-v2v side by side with ``pvhvm guest prepare`` on each installed-guest shape (issue 17).

For each shape's cached image (``disk_of`` in bench_shapes.py; nothing is built here), in one
run and alternating which tool goes first per shape, each on its own fresh sparse copy:

- pvhvm: ``python -m pvhvm guest prepare CFG --json`` (the default: the drivers appended), as
  bench_shapes.py runs it, with the PV plan's config;
- virt-v2v: ``virt-v2v -x -i disk COPY -o local -os OUTDIR -of raw`` with
  ``LIBGUESTFS_BACKEND_SETTINGS=force_tcg`` (KVM does not work here; SPEC.md).

Each runs in its own process group with a timeout (the group is killed when it passes). The
first table gives both wall clocks, prepare's steps as ``--json`` reports them, virt-v2v's
phases (the seconds between its ``[  12.3] Opening the source`` progress lines) and virt-v2v's
result (converted, or its error message). With ``--boot``, each output is then booted on
virtio with pvhvm (``--accel tcg``, a private ``PVHVM_STATE_DIR``) as tests/e2e/test_shapes.py
boots after prepare: virt-v2v's output with an HVM config whose disk is virtio (the firmware
boots it; for xenpv too, since virt-v2v's own metadata is a q35 BIOS guest), pvhvm's with the PV
plan's config (pygrub for xenpv). A boot counts when the guest's device report says multi-user
with its disk on virtio_blk and no IDE function; otherwise the last console lines say where it
stopped. All work files live in a private directory beside the cached image and are removed
at the end. Usage (root; ``PYTHONPATH=.`` for the e2e helpers)::

    PYTHONPATH=. .venv/bin/python benchmarks/installed-guest/bench_v2v.py \
        [--shapes ide,xenpv,xfs,btrfs,lvm] [--tools pvhvm,virt-v2v] \
        [--boot virt-v2v,pvhvm] [--boot-shapes lvm,xfs] [--timeout 1200] \
        [--boot-timeout 900] [--logs /tmp/bench-v2v-logs]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_shapes import disk_of

from pvhvm.errors import GuestImageError
from pvhvm.guest.report import IDE_CLASS, SATA_CLASS, parse_report
from pvhvm.guest.shapes import SHAPES
from tests.e2e.conftest import Pvhvm
from tests.e2e.test_shapes import MULTI_USER, _config, _disks

TOOLS = ("pvhvm", "virt-v2v")
#: virt-v2v's progress lines: ``[  45.8] Converting 12.15 to run on KVM``
PHASE = re.compile(r"^\[\s*([0-9]+\.[0-9])\] (.+)$")
#: short names for virt-v2v's phases in the table
PHASE_NAMES = (
    ("Setting up the source", "source"),
    ("Opening the source", "open"),
    ("Inspecting the source", "inspect"),
    ("Checking for sufficient free disk space", "space"),
    ("Converting", "convert"),
    ("Mapping filesystem data", "map"),
    ("Closing the overlay", "close"),
    ("Assigning disks to buses", "buses"),
    ("Checking if the guest needs BIOS or UEFI", "firmware"),
    ("Setting up the destination", "destination"),
    ("Copying disk", "copy"),
    ("Creating output metadata", "metadata"),
    ("Finishing off", "finish"),
)
#: console text after which a boot will not reach multi-user (initramfs-tools, dracut, systemd,
#: the kernel); the boot is stopped a little after one appears
STUCK = re.compile(r"ALERT!|Kernel panic|emergency mode|Give root password|"
                   r"Could not boot|\(initramfs\) |dracut:/#|No bootable device|"
                   r"Press Enter for maintenance")
#: how long the console may stay silent before the boot counts as stopped
SILENT = 300.0


@dataclass
class Run:
    """One tool's conversion of one shape."""

    tool: str
    wall: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    result: str = ""
    output: Path | None = None
    #: (config, what the boot on virtio did)
    boots: list[tuple[str, str]] = field(default_factory=list)
    #: virt-v2v only: its longest libguestfs calls (seconds, call)
    calls: list[tuple[float, str]] = field(default_factory=list)


def run_group(argv: list[str], env: dict[str, str], timeout: float,
              cwd: Path | None = None) -> tuple[int | None, str, str, float]:
    """Run ``argv`` in its own process group; kill the group when ``timeout`` passes.
    Returns (exit status or None on timeout, stdout, stderr, wall seconds)."""
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=cwd, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
            status: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            status = None
    return status, out, err, time.monotonic() - started


def run_stamped(argv: list[str], env: dict[str, str], timeout: float,
                cwd: Path | None = None) -> tuple[int | None, list[tuple[float, str]], float]:
    """:func:`run_group` with stdout and stderr merged and each line stamped with the seconds
    since the start as it arrives (virt-v2v's ``-x`` trace has no times of its own)."""
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", env=env, cwd=cwd, start_new_session=True) as proc:
        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
        reader.join(timeout=30)
    return status, lines, time.monotonic() - started


#: a libguestfs trace line (``-x``): ``libguestfs: trace: v2v: command "..."`` for a call,
#: ``libguestfs: trace: v2v: command = "..."`` for its return
TRACE = re.compile(r"^libguestfs: trace: (?:[\w-]+: )?(?P<call>[a-z_0-9]+)(?P<rest>.*)$")


def longest_calls(lines: list[tuple[float, str]], count: int = 3) -> list[tuple[float, str]]:
    """The ``count`` longest libguestfs calls in a ``-x`` trace: (seconds, call and args)."""
    open_calls: dict[str, list[tuple[float, str]]] = {}
    done: list[tuple[float, str]] = []
    for stamp, line in lines:
        match = TRACE.match(line)
        if not match:
            continue
        call, rest = match["call"], match["rest"].strip()
        if rest.startswith("= ") or rest == "=":
            if open_calls.get(call):
                began, text = open_calls[call].pop()
                done.append((stamp - began, text))
        else:
            open_calls.setdefault(call, []).append((stamp, f"{call} {rest}"[:90]))
    return sorted(done, reverse=True)[:count]


def v2v_phases(log: str, wall: float) -> dict[str, float]:
    """Seconds per virt-v2v phase: from each progress line's stamp to the next one's (the last
    phase to the end of the run)."""
    marks: list[tuple[float, str]] = []
    for line in log.splitlines():
        match = PHASE.match(line.strip())
        if match:
            text = match[2]
            name = next((short for prefix, short in PHASE_NAMES if text.startswith(prefix)),
                        text)
            marks.append((float(match[1]), name))
    phases: dict[str, float] = {}
    for (stamp, name), end in zip(marks, [m[0] for m in marks[1:]] + [wall], strict=True):
        phases[name] = phases.get(name, 0.0) + max(end - stamp, 0.0)
    return phases


def v2v_message(log: str) -> str:
    """virt-v2v's own verdict: its ``virt-v2v: error:`` text, or its notes when it converted."""
    lines = [line.strip() for line in log.splitlines()]
    error = [i for i, line in enumerate(lines) if line.startswith("virt-v2v: error:")]
    if error:
        said = []
        for line in lines[error[0]:]:
            if line.startswith("If reporting bugs"):
                break
            said.append(line)
        return " ".join(line for line in said if line)[:600]
    notes = [line.removeprefix("virt-v2v: ") for line in lines
             if line.startswith("virt-v2v:") or line.startswith("virt-v2v: warning")]
    return "; ".join(notes)


def pvhvm_prepare(name: str, disk: Path, work: Path, timeout: float) -> Run:
    """``pvhvm guest prepare CFG --json`` on a fresh copy, as bench_shapes.py runs it."""
    run = Run("pvhvm")
    image = work / "pvhvm.img"
    subprocess.run(["cp", "--sparse=always", str(disk), str(image)], check=True)
    config = _config(work, f"bench-{name}", image, pv=True, xen_pv=name == "xenpv")
    env = dict(os.environ, PVHVM_STATE_DIR=str(work / "prepare-state"))
    status, out, err, run.wall = run_group(
        [sys.executable, "-m", "pvhvm", "guest", "prepare", str(config), "--json"], env,
        timeout)
    if status is None:
        run.result = f"timed out after {timeout:.0f} s"
        return run
    if status != 0:
        run.result = f"failed (exit {status}): {err.strip()[-400:]}"
        return run
    document = json.loads(out)
    result = document.get("result", document)
    run.steps = {k: float(v) for k, v in result["seconds"].items() if k != "total"}
    run.result = f"prepared ({result.get('initramfs', '?')})"
    run.output = image
    return run


def virt_v2v(name: str, disk: Path, work: Path, logs: Path, timeout: float) -> Run:
    """``virt-v2v -x -i disk COPY -o local -os OUTDIR -of raw`` on a fresh copy."""
    run = Run("virt-v2v")
    source = work / "v2v-in" / f"{name}.img"  # -i disk names the guest after the file
    outdir = work / "v2v-out"
    source.parent.mkdir()
    outdir.mkdir()
    subprocess.run(["cp", "--sparse=always", str(disk), str(source)], check=True)
    env = dict(os.environ, LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    status, lines, run.wall = run_stamped(
        ["virt-v2v", "-x", "-i", "disk", str(source), "-o", "local", "-os", str(outdir),
         "-of", "raw"], env, timeout, cwd=work)
    (logs / f"virt-v2v-{name}.log").write_text(
        "".join(f"{stamp:8.1f} {line}\n" for stamp, line in lines))
    shutil.rmtree(source.parent)
    out = "\n".join(line for _, line in lines if not line.startswith("libguestfs: trace:"))
    run.steps = v2v_phases(out, run.wall)
    run.calls = longest_calls(lines)
    message = v2v_message(out)
    if status is None:
        run.result = f"timed out after {timeout:.0f} s"
    elif status != 0:
        run.result = f"refused/failed (exit {status}): {message}"
    else:
        run.result = "converted" + (f" ({message})" if message else "")
        run.output = outdir / f"{name}-sda"
    return run


def boot(domain: str, image: Path, xen_pv: bool, logs: Path, timeout: float) -> str:
    """Boot ``image`` on virtio with pvhvm (TCG) until multi-user, a stuck boot or ``timeout``;
    what happened, in one line. ``xen_pv``: the PV (pygrub) config, else HVM."""
    work = Path(tempfile.mkdtemp(prefix="pvs-", dir="/tmp"))  # short: socket paths
    pvhvm = Pvhvm(work / "state")
    config = _config(work, domain, image, pv=True, xen_pv=xen_pv)
    started = time.monotonic()
    text = ""
    try:
        created = pvhvm.run("create", str(config), "--accel", "tcg", check=False)
        refused = ""
        if created.returncode != 0 and "--no-check" in created.stderr:
            # create's guest check said *will not boot*: keep its reasons, boot it anyway to
            # see whether check was right
            reasons = " ".join(line.strip() for line in created.stderr.splitlines()
                               if line.strip() and not line.startswith("pvhvm: error:"))
            refused = f"create refused (check: {reasons[:500]}); with --no-check: "
            started = time.monotonic()
            created = pvhvm.run("create", str(config), "--accel", "tcg", "--no-check",
                                check=False)
        if created.returncode != 0:
            return f"{refused}not created: {created.stderr.strip()[-300:]}"
        log = pvhvm.console_log(domain)
        deadline = started + timeout
        last_change, size, stuck_at = started, -1, None
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "PVHVM-REPORT-END" in text:
                break
            now = time.monotonic()
            if len(text) != size:
                size, last_change = len(text), now
            if stuck_at is None and STUCK.search(text):
                stuck_at = now
            if (stuck_at is not None and now - stuck_at > 60) or now - last_change > SILENT:
                break
            time.sleep(2)
        seconds = time.monotonic() - started
        (logs / f"console-{domain}.log").write_text(text)
        cmdline = re.findall(r"Kernel command line: (.*)", text)
        said = f"; kernel command line: {cmdline[-1].strip()}" if cmdline else ""
        if "PVHVM-REPORT-END" in text:
            try:
                report = parse_report(text)
            except GuestImageError as err:
                return f"{refused}no report ({err}) after {seconds:.0f} s{said}"
            multi = MULTI_USER in text
            ide = report.has_class(IDE_CLASS) or report.has_class(SATA_CLASS)
            reached = "booted to multi-user" if multi else "report without multi-user"
            return (f"{refused}{reached} in "
                    f"{seconds:.0f} s: root {report.root} ({report.rootfstype}), disks "
                    f"{_disks(report)}, IDE/SATA function {'yes' if ide else 'none'}{said}")
        tail = " / ".join(line.strip() for line in _clean(text)[-8:])
        why = "stuck" if STUCK.search(text) else (
            "console silent" if time.monotonic() < deadline else "timed out")
        return (f"{refused}not booted ({why} after {seconds:.0f} s){said}; "
                f"last console lines: {tail}")
    finally:
        pvhvm.run("destroy", domain, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _clean(text: str) -> list[str]:
    """Console lines without escape sequences and blank lines (for the table)."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "\n", text)
    return [line for line in plain.splitlines() if line.strip()][-200:]


def bench(name: str, tools: list[str], turn: int, timeout: float, boots: list[str],
          boot_timeout: float, logs: Path) -> list[Run]:
    """Both tools on fresh copies of one shape's image (``turn`` odd: in reverse order), then
    the boots of the outputs of ``boots``."""
    disk = disk_of(name, False)
    if disk is None:
        print(f"{name}: not cached (bench_shapes.py --build builds it)", flush=True)
        return []
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"bench-v2v-{name}-", dir=disk.parent) as scratch:
        work = Path(scratch)
        for tool in (tools if turn % 2 == 0 else tools[::-1]):
            print(f"{time.strftime('%H:%M:%S')} {name}: {tool}", flush=True)
            if tool == "pvhvm":
                runs.append(pvhvm_prepare(name, disk, work, timeout))
            else:
                runs.append(virt_v2v(name, disk, work, logs, timeout))
            print(row(name, runs[-1]), flush=True)
        for run in runs:
            if run.tool not in boots or run.output is None:
                continue
            # pvhvm's xenpv output: the PV plan's pygrub config, as prepared; virt-v2v's: the
            # HVM config its metadata describes, and for xenpv also pygrub (how it ran on Xen)
            configs = ([True] if run.tool == "pvhvm" else [False, True]) if name == "xenpv" \
                else [False]
            for xen_pv in configs:
                kind = "PV (pygrub)" if xen_pv else "HVM, virtio disk"
                print(f"{time.strftime('%H:%M:%S')} {name}: boot {run.tool} {kind}", flush=True)
                domain = (f"v2v-{name}-{'pv' if run.tool == 'pvhvm' else 'v2v'}"
                          f"-{'pygrub' if xen_pv else 'hvm'}")
                run.boots.append((kind, boot(domain, run.output, xen_pv, logs, boot_timeout)))
                print(f"| {name} | {run.tool} | {kind} | {run.boots[-1][1]} |", flush=True)
    return runs


def row(name: str, run: Run) -> str:
    steps = ", ".join(f"{k} {v:.1f}" for k, v in run.steps.items())
    return f"| {name} | {run.tool} | {run.wall:.1f} | {steps} | {run.result} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shapes", default=",".join(("ide", *SHAPES)))
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--boot", default="", help="whose outputs to boot: virt-v2v,pvhvm")
    parser.add_argument("--boot-shapes", default="",
                        help="boot the outputs of these shapes only (default: every shape)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--boot-timeout", type=float, default=900.0)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/bench-v2v-logs"),
                        help="where virt-v2v's output and the boots' console logs are kept")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.shapes.split(",") if n]
    tools = [t for t in args.tools.split(",") if t]
    boots = [t for t in args.boot.split(",") if t]
    for tool in (*tools, *boots):
        if tool not in TOOLS:
            parser.error(f"unknown tool {tool!r}: one of {', '.join(TOOLS)}")
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True,
                                           check=False).stdout.strip(), flush=True)
    booted = [n for n in args.boot_shapes.split(",") if n] or names
    results = {name: bench(name, tools, turn, args.timeout, boots if name in booted else [],
                           args.boot_timeout, args.logs)
               for turn, name in enumerate(names)}
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True,
                                          check=False).stdout.strip())
    print("\n| shape | tool | wall clock (s) | steps / phases (s) | result |\n"
          "|---|---|---|---|---|")
    for name, runs in results.items():
        for run in runs:
            print(row(name, run))
    print("\n| shape | virt-v2v's longest libguestfs calls (s) |\n|---|---|")
    for name, runs in results.items():
        for run in runs:
            if run.calls:
                calls = "; ".join(f"{seconds:.1f} {call}" for seconds, call in run.calls)
                print(f"| {name} | {calls} |")
    if boots:
        print("\n| shape | output of | config | boot on virtio |\n|---|---|---|---|")
        for name, runs in results.items():
            for run in runs:
                for kind, said in run.boots:
                    print(f"| {name} | {run.tool} | {kind} | {said} |")
                if run.tool in boots and not run.boots:
                    print(f"| {name} | {run.tool} | | not booted: no output |")


if __name__ == "__main__":
    main()
