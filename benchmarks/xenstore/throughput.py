"""XenStore daemon throughput, one or more source trees side by side (not a timed test).

Starts ``python -m pvhvm.xenstore`` once per ``--src`` tree (e.g. the code before a change
in a `git archive` copy, and the working tree), and for each scenario alternates the
daemons ``--rounds`` times (a shared host's slow spells then fall on both alike), printing
medians of: requests per second, p50/p99 latency, the daemon's own CPU time per request,
user (Python) and system (the kernel's socket work) apart, from /proc (less disturbed by
other load than rates are), and the clients' CPU time per request (``client``, user +
system of all client processes together, from getrusage).

The load comes from a client chosen with ``--client``:

* ``c`` (default): `xsload.c`, compiled here with gcc: one process per client, blocking
  Unix socket, one request in flight (or DEPTH pipelined). It costs little more than
  the kernel's socket work, so the daemon, not the client, is what is measured;
* ``epoll``: all clients' connections in one Python process, one epoll loop, one
  request in flight each: a lean Python client, one process;
* ``python``: hostile.py's good clients, one Python process per client (raw blocking
  socket, WRITE then READ), to show what such clients themselves cost on this machine.

Usage::

    git archive <base> src | tar -x -C /tmp/base
    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/throughput.py \\
        --src /tmp/base/src --src src [--client c|epoll|python] [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
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

from pvhvm.xenstore.wire import HEADER, HEADER_SIZE, Op, encode, join_strings

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


def _daemon_cpu(pid: int) -> tuple[float, float]:
    """The daemon's user and system CPU seconds so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _children_cpu() -> float:
    """User + system seconds of this process's waited-for children (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epoll_clients(path: str, clients: int, seconds: float, mix: str) -> None:
    """``clients`` connections driven from one Python process by one epoll loop, one
    request in flight each; prints xsload's line. (Run as a subprocess of its own.)"""
    socks = [hostile._connect(path) for _ in range(clients)]
    scripts: list[list[bytes]] = []
    for index, sock in enumerate(socks):
        keys = [f"/bench/w{index}/k{k}" for k in range(10)]
        writes = [encode(Op.WRITE, join_strings(key) + f"value{k}".encode())
                  for k, key in enumerate(keys)]
        reads = [encode(Op.READ, join_strings(key)) for key in keys]
        buffer = bytearray()
        for request in writes:
            sock.sendall(request)
            hostile._recv_reply(sock, buffer)
        order = {"read": reads, "write": writes,
                 "writeread": [writes[i] if i % 2 == 0 else reads[i] for i in range(10)]}
        scripts.append(order[mix])
        sock.setblocking(False)
    by_fd = {sock.fileno(): i for i, sock in enumerate(socks)}
    buffers = [bytearray() for _ in socks]
    counts = [0] * clients
    sent_at = [0.0] * clients
    latencies: list[float] = []
    poller = select.epoll()
    for sock in socks:
        poller.register(sock.fileno(), select.EPOLLIN)
    clock = time.perf_counter
    began = clock()
    stop = began + seconds
    for i, sock in enumerate(socks):
        sent_at[i] = clock()
        sock.send(scripts[i][0])
    while True:
        now = clock()
        if now >= stop:
            break
        for fd, _ in poller.poll(stop - now):
            i = by_fd[fd]
            buffer = buffers[i]
            buffer += socks[i].recv(65536)
            if len(buffer) < HEADER_SIZE:
                continue
            op, _, _, length = HEADER.unpack_from(buffer)
            if len(buffer) < HEADER_SIZE + length:
                continue
            if op == Op.ERROR:
                sys.exit(f"error reply {bytes(buffer[HEADER_SIZE:])!r}")
            del buffer[:HEADER_SIZE + length]
            done = clock()
            latencies.append(done - sent_at[i])
            counts[i] += 1
            sent_at[i] = done
            socks[i].send(scripts[i][counts[i] % 10])
    elapsed = clock() - began
    latencies.sort()
    total = len(latencies)
    print(f"requests {total} seconds {elapsed:.3f} rate {total / elapsed:.0f} "
          f"p50_us {latencies[total // 2] * 1e6:.0f} "
          f"p99_us {latencies[total * 99 // 100] * 1e6:.0f}")


def run_client(argv: list[str]) -> tuple[float, float, float, int]:
    """Run a client that prints xsload's line; return rate, p50, p99, requests."""
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    fields = out.split()
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return (float(values["rate"]), float(values["p50_us"]) / 1e6,
            float(values["p99_us"]) / 1e6, int(values["requests"]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "epoll":
        epoll_clients(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", type=Path, action="append", required=True,
                        help="a source tree holding pvhvm/ (give it once per daemon)")
    parser.add_argument("--client", choices=("c", "epoll", "python"), default="c")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations")
    args = parser.parse_args()
    scenarios = SCENARIOS if args.client == "c" else \
        [(m, c, d) for m, c, d in SCENARIOS if d == 1 and
         (m == "writeread" or args.client == "epoll")]
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
              f"{'p50 µs':>7} {'p99 µs':>7} {'usr µs':>6} {'sys µs':>6} {'client':>7}")
        for mix, clients, depth in scenarios:
            rows: dict[Path, list[tuple[float, ...]]] = {src: [] for src, _, _ in daemons}
            for _ in range(args.rounds):
                for src, path, pid in daemons:
                    cpu_before = _daemon_cpu(pid)
                    client_before = _children_cpu()
                    if binary is not None:
                        rate, p50, p99, requests = run_client(
                            [str(binary), str(path), str(clients), str(args.seconds), mix,
                             str(depth)])
                    elif args.client == "epoll":
                        rate, p50, p99, requests = run_client(
                            [sys.executable, __file__, "epoll", str(path), str(clients),
                             str(args.seconds), mix])
                    else:
                        rate, p50, p99, requests = hostile.run_good(str(path), clients,
                                                                    args.seconds)
                    user, system = (
                        (after - before) / requests
                        for after, before in zip(_daemon_cpu(pid), cpu_before, strict=True))
                    client = (_children_cpu() - client_before) / requests
                    rows[src].append((rate, p50, p99, user, system, client))
            for src, _, _ in daemons:
                rate, p50, p99, user, system, client = (
                    statistics.median(c) for c in zip(*rows[src], strict=True))
                print(f"{str(src)[-22:]:>22} {mix:>10} {clients:>7} {depth:>5} "
                      f"{rate:>8.0f} {p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f} {user * 1e6:>6.1f} "
                      f"{system * 1e6:>6.1f} {client * 1e6:>7.1f}", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
