"""XenStore daemon throughput, one or more source trees side by side (not a timed test).

Starts ``python -m pvhvm.xenstore`` once per ``--src`` tree (e.g. the code before a change
in a `git archive` copy, and the working tree), and for each scenario alternates the
daemons ``--rounds`` times (a shared host's slow spells then fall on both alike), printing
medians of: requests per second, p50/p99 latency, the daemon's own CPU time per request
(user + system from /proc: less disturbed by other load than rates are) and the clients'
CPU time per request (``client``, all client processes together, from getrusage).

The load comes from a client chosen with ``--client``:

* ``c`` (default): `xsload.c`, compiled here with gcc: one process per client, blocking
  Unix socket, one request in flight (or DEPTH pipelined). It costs little more than
  the kernel's socket work, so the daemon, not the client, is what is measured;
* ``python``: hostile.py's good clients, one Python process per client (raw socket,
  WRITE then READ), to show what Python clients themselves cost on this machine.

Usage::

    git archive <base> src | tar -x -C /tmp/base
    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/throughput.py \\
        --src /tmp/base/src --src src [--client c|python] [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import hostile

HERE = Path(__file__).resolve().parent

#: (mix, clients, depth): xsload's mixes; depth = requests in flight per client
SCENARIOS: list[tuple[str, int, int]] = [
    ("writeread", 1, 1),
    ("read", 16, 1),
    ("write", 16, 1),
    ("writeread", 16, 1),
    ("writeread", 16, 16),
]


def compile_xsload(directory: Path) -> Path:
    """Build xsload.c with gcc; the binary is put in ``directory``."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("throughput.py: --client c needs gcc (or cc) on PATH")
    binary = directory / "xsload"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(binary), str(HERE / "xsload.c")],
                   check=True)
    return binary


@contextlib.contextmanager
def daemon(src: Path, socket_path: Path) -> Iterator[int]:
    """``python -m pvhvm.xenstore`` from ``src`` on ``socket_path``; yields its pid."""
    env = dict(os.environ, PYTHONPATH=str(src))
    process = subprocess.Popen(
        [sys.executable, "-m", "pvhvm.xenstore", "--socket", str(socket_path)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(socket_path))
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon from {src} did not start") from None
                time.sleep(0.05)
            finally:
                probe.close()
        yield process.pid
    finally:
        process.terminate()
        process.wait(10)


def _children_cpu() -> float:
    """User + system seconds of this process's waited-for children (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_c(binary: Path, path: Path, mix: str, clients: int, depth: int,
          seconds: float) -> tuple[float, float, float, int]:
    out = subprocess.run([str(binary), str(path), str(clients), str(seconds), mix,
                          str(depth)], check=True, capture_output=True, text=True).stdout
    fields = out.split()
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return (float(values["rate"]), float(values["p50_us"]) / 1e6,
            float(values["p99_us"]) / 1e6, int(values["requests"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", type=Path, action="append", required=True,
                        help="a source tree holding pvhvm/ (give it once per daemon)")
    parser.add_argument("--client", choices=("c", "python"), default="c")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations")
    args = parser.parse_args()
    scenarios = SCENARIOS if args.client == "c" else \
        [(m, c, d) for m, c, d in SCENARIOS if m == "writeread" and d == 1]
    with tempfile.TemporaryDirectory(prefix="xst", dir="/tmp") as tmp, \
            contextlib.ExitStack() as stack:
        binary = compile_xsload(Path(tmp)) if args.client == "c" else None
        daemons = []
        for i, src in enumerate(args.src):
            path = Path(tmp) / f"d{i}.sock"
            daemons.append((src, path, stack.enter_context(daemon(src.resolve(), path))))
        print(f"client {args.client}; {args.rounds} rounds of {args.seconds:g} s, "
              f"medians; load average {os.getloadavg()[0]:.1f} at start")
        print(f"{'daemon':>22} {'mix':>10} {'clients':>7} {'depth':>5} {'req/s':>8} "
              f"{'p50 µs':>7} {'p99 µs':>7} {'cpu µs':>7} {'client':>7}")
        for mix, clients, depth in scenarios:
            rows: dict[Path, list[tuple[float, ...]]] = {src: [] for src, _, _ in daemons}
            for _ in range(args.rounds):
                for src, path, pid in daemons:
                    cpu_before = hostile._cpu_seconds(pid)
                    client_before = _children_cpu()
                    if binary is not None:
                        rate, p50, p99, requests = run_c(binary, path, mix, clients, depth,
                                                         args.seconds)
                    else:
                        rate, p50, p99, requests = hostile.run_good(str(path), clients,
                                                                    args.seconds)
                    cpu = (hostile._cpu_seconds(pid) - cpu_before) / requests
                    client = (_children_cpu() - client_before) / requests
                    rows[src].append((rate, p50, p99, cpu, client))
            for src, _, _ in daemons:
                rate, p50, p99, cpu, client = (statistics.median(c)
                                               for c in zip(*rows[src], strict=True))
                print(f"{str(src)[-22:]:>22} {mix:>10} {clients:>7} {depth:>5} "
                      f"{rate:>8.0f} {p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f} {cpu * 1e6:>7.1f} "
                      f"{client * 1e6:>7.1f}", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
