"""A well-behaved XenStore client beside hostile ones (issue 13; not a timed test).

Starts pvhvm's xenstored as a subprocess (`spawn_daemon`, its log to a file) and measures a
good client -- synchronous WRITE then READ on its own subtree ``/good/c<n>``, one request in
flight, raw sockets, each good client its own process -- alone, then beside the hostile
clients, then alone again after they have gone, all in one run:

* ``flood``: one connection registers 20,000 watches on ``/good`` (the good clients'
  subtree; distinct tokens), reads the acks while registering, then never reads again;
* ``unrelated``: the same 20,000 watches on paths nobody writes (a second phase), so a
  write's cost can be seen not to depend on the watches in the store;
* ``nonreader``: pipelines DIRECTORY requests and never reads a reply;
* ``idle``: 1,000 connections that send nothing;
* ``half``: 100 connections that each sent 7 bytes of a header;
* ``malformed``: a loop connecting and sending a header over XENSTORE_PAYLOAD_MAX or a
  garbage packet, every 2 ms;
* ``transactions``: one connection that opens transactions until refused (20,000 tried).

For each phase it prints the good clients' total rate (and its ratio to the solo rate of
the same round), p50/p99 latency, the daemon's CPU time per good request (user + system,
from /proc: less noisy than rates on a shared machine), its resident memory, how many
bytes its log grew and the host's load average. Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/hostile.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pvhvm.xenstore.daemon import spawn_daemon
from pvhvm.xenstore.wire import HEADER, HEADER_SIZE, Op, encode, join_strings

HOSTILE = ("flood", "nonreader", "idle", "half", "malformed", "transactions")
#: watches a flood client registers (sidebyside.py's --watches passes fewer, for slow hosts)
FLOOD_WATCHES = 20_000
#: transactions the transactions client tries to open (sidebyside.py's --transactions)
TRANSACTIONS_TRIED = 20_000


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def _recv_reply(sock: socket.socket, buffer: bytearray) -> int:
    """Read until one whole message is in ``buffer``; drop it; return its op."""
    while True:
        if len(buffer) >= HEADER_SIZE:
            op, _, _, length = HEADER.unpack_from(buffer)
            if len(buffer) >= HEADER_SIZE + length:
                del buffer[:HEADER_SIZE + length]
                return int(op)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("daemon closed the connection")
        buffer += data


def good_worker(path: str, index: int, start_at: float, seconds: float) -> None:
    """One good client: WRITE then READ of its own key, one request in flight."""
    sock = _connect(path)
    buffer = bytearray()
    requests = [encode(Op.WRITE, f"/good/c{index}/k{k}\0value{k}".encode()) for k in range(10)]
    reads = [encode(Op.READ, f"/good/c{index}/k{k}\0".encode()) for k in range(10)]
    for request in requests:
        sock.sendall(request)
        _recv_reply(sock, buffer)
    time.sleep(max(0.0, start_at - time.time()))
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    began = time.monotonic()
    i = 0
    while time.monotonic() < stop:
        request = requests[i % 10] if i % 2 == 0 else reads[i % 10]
        started = time.perf_counter()
        sock.sendall(request)
        _recv_reply(sock, buffer)
        latencies.append(time.perf_counter() - started)
        i += 1
    elapsed = time.monotonic() - began
    sock.close()
    latencies.sort()
    step = max(1, len(latencies) // 5000)
    print(json.dumps({"requests": len(latencies), "elapsed": elapsed,
                      "sample": latencies[::step]}))


def hostile_worker(path: str, kind: str, watch_prefix: str,
                   watches: int = FLOOD_WATCHES, transactions: int = TRANSACTIONS_TRIED) -> None:
    """Run one hostile client until stdin closes; print "ready" once it is in place."""
    keep: list[socket.socket] = []
    if kind == "flood":
        sock = _connect(path)
        buffer = bytearray()
        refused = 0
        for start in range(0, watches, 500):
            batch = min(500, watches - start)
            sock.sendall(b"".join(
                encode(Op.WATCH, join_strings(f"{watch_prefix}{i % 100}" if watch_prefix
                                              else "/good", f"t{i}"))
                for i in range(start, start + batch)))
            # each WATCH: its ack and its initial event, or an error (a daemon's quota)
            answered = events = errors = 0
            while answered < batch or events < answered - errors:
                op = _recv_reply(sock, buffer)
                if op == Op.WATCH_EVENT:
                    events += 1
                    continue
                answered += 1
                errors += op == Op.ERROR
            refused += errors
        keep.append(sock)  # and never reads again
        print(f"watches refused: {refused} of {watches}", file=sys.stderr)
    elif kind == "nonreader":
        sock = _connect(path)
        sock.setblocking(False)
        burst = encode(Op.DIRECTORY, b"/good\0") * 512
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                sock.send(burst)
            except BlockingIOError:
                break
        keep.append(sock)
    elif kind == "idle":
        keep.extend(_connect(path) for _ in range(1000))
    elif kind == "half":
        for _ in range(100):
            sock = _connect(path)
            sock.sendall(encode(Op.READ, b"/good\0")[:7])
            keep.append(sock)
    elif kind == "transactions":
        sock = _connect(path)
        buffer = bytearray()
        refused = 0
        for _ in range(transactions):
            sock.sendall(encode(Op.TRANSACTION_START, b"\0"))
            if _recv_reply(sock, buffer) == Op.ERROR:
                refused += 1
        keep.append(sock)
        print(f"transactions refused: {refused} of {transactions}", file=sys.stderr)
    print("ready", flush=True)
    if kind == "malformed":
        oversized = (Op.WRITE.to_bytes(4, sys.byteorder) + bytes(8)
                     + (1 << 20).to_bytes(4, sys.byteorder))
        garbage = encode(0xBEEF, b"\xff" * 64) + encode(Op.WRITE, b"no-nul")
        os.set_blocking(0, False)
        n = 0
        while True:
            try:
                if sys.stdin.buffer.read(1) == b"":
                    return
            except BlockingIOError:
                pass
            try:
                sock = _connect(path)
                sock.sendall(oversized if n % 2 else garbage + oversized)
                sock.close()
            except OSError:
                pass
            n += 1
            time.sleep(0.002)
    sys.stdin.buffer.read()  # until the benchmark closes our stdin
    for sock in keep:
        sock.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _me(*args: str) -> list[str]:
    return [sys.executable, __file__, *args]


def run_good(path: str, clients: int, seconds: float) -> tuple[float, float, float, int]:
    start_at = time.time() + 1.0
    procs = [subprocess.Popen(_me("good", path, str(i), str(start_at), str(seconds)),
                              stdout=subprocess.PIPE, text=True) for i in range(clients)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    requests = sum(r["requests"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    sample = sorted(x for r in results for x in r["sample"])
    p50 = sample[len(sample) // 2]
    p99 = sample[min(len(sample) - 1, int(len(sample) * 0.99))]
    return requests / elapsed, p50, p99, requests


def start_hostile(path: str, kinds: tuple[str, ...], watch_prefix: str
                  ) -> list[subprocess.Popen[str]]:
    procs = []
    for kind in kinds:
        proc = subprocess.Popen(_me("hostile", path, kind, watch_prefix),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"hostile client {kind} did not start")
        procs.append(proc)
    return procs


def stop_hostile(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        proc.wait(30)


PHASES: list[tuple[str, tuple[str, ...], str]] = [
    ("solo", (), ""),
    ("all hostile, flood on /good", HOSTILE, ""),
    ("flood on 20,000 unrelated paths", ("flood",), "/elsewhere/n"),
]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def bench(seconds: float, client_counts: list[int], rounds: int) -> None:
    """Alternate the phases ``rounds`` times (the host is shared: alternating keeps slow
    spells from landing on one phase); report medians, ratios taken within each round."""
    with tempfile.TemporaryDirectory(prefix="xsh", dir="/tmp") as tmp:
        path = str(Path(tmp) / "socket")
        log = Path(tmp) / "xenstored.log"
        with spawn_daemon(path, log_file=log) as daemon:
            print(f"daemon at start: RSS {_rss_kib(daemon.pid) / 1024:.1f} MiB; "
                  f"{rounds} rounds of {seconds:g} s per phase, medians shown")
            print(f"{'phase':>34} {'clients':>7} {'req/s':>8} {'ratio':>6} {'p50 µs':>7} "
                  f"{'p99 µs':>7} {'cpu µs':>7} {'RSS MiB':>8} {'log B':>7} {'load':>5}")
            for clients in client_counts:
                rows: dict[str, list[tuple[float, ...]]] = {name: [] for name, _, _ in PHASES}
                for _ in range(rounds):
                    solo = 0.0
                    for name, kinds, prefix in PHASES:
                        hostile = start_hostile(path, kinds, prefix)
                        size_before = log.stat().st_size
                        cpu_before = _cpu_seconds(daemon.pid)
                        rate, p50, p99, requests = run_good(path, clients, seconds)
                        cpu = (_cpu_seconds(daemon.pid) - cpu_before) / requests
                        rss = _rss_kib(daemon.pid) / 1024
                        grown = log.stat().st_size - size_before
                        stop_hostile(hostile)
                        solo = solo or rate
                        rows[name].append((rate, rate / solo, p50, p99, cpu, rss, grown,
                                           os.getloadavg()[0]))
                        time.sleep(0.5)  # let the daemon forget the hostile connections
                for name, _, _ in PHASES:
                    columns = list(zip(*rows[name], strict=True))
                    rate, ratio, p50, p99, cpu, rss, log_growth, load = (
                        _median(list(c)) for c in columns)
                    print(f"{name:>34} {clients:>7} {rate:>8.0f} {ratio:>6.2f} "
                          f"{p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f} {cpu * 1e6:>7.1f} "
                          f"{rss:>8.1f} {log_growth:>7.0f} {load:>5.1f}", flush=True)
            rate, p50, p99, _ = run_good(path, client_counts[0], seconds)
            print(f"{'after: hostile clients gone':>34} {client_counts[0]:>7} {rate:>8.0f} "
                  f"{'':>6} {p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f}")
            print(f"daemon at end: RSS {_rss_kib(daemon.pid) / 1024:.1f} MiB, "
                  f"{len(daemon_connections(daemon.pid))} sockets open, "
                  f"log {log.stat().st_size} bytes in all")
        print("\nlog lines (first 6):")
        for line in log.read_text().splitlines()[:6]:
            print("   ", line[:140])


def daemon_connections(pid: int) -> list[str]:
    """The daemon's open socket descriptors (listener included)."""
    fds = Path(f"/proc/{pid}/fd")
    return [str(fd) for fd in fds.iterdir() if os.readlink(fd).startswith("socket:")]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "good":
        good_worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "hostile":
        hostile_worker(sys.argv[2], sys.argv[3], sys.argv[4],
                       int(sys.argv[5]) if len(sys.argv) > 5 else FLOOD_WATCHES,
                       int(sys.argv[6]) if len(sys.argv) > 6 else TRANSACTIONS_TRIED)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per phase")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16],
                        help="good clients per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the phases")
    args = parser.parse_args()
    bench(args.seconds, args.clients, args.rounds)


if __name__ == "__main__":
    main()
