"""Throughput and latency of pvhvm's xenstored (not a timed test).

Starts the daemon as a subprocess (`spawn_daemon`), drives it with asyncio clients, one
connection each, and prints requests per second and p50/p99 latency for read, write,
directory and transaction mixes, with 1 and 16 clients, on a small tree and on one with
10,000 extra nodes. Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/bench.py [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pvhvm.xenstore.client import AsyncTransaction, AsyncXenStoreClient
from pvhvm.xenstore.daemon import spawn_daemon
from pvhvm.xenstore.errors import XenStoreConflictError

Mix = Callable[[AsyncXenStoreClient, int, int], Awaitable[int]]


async def mix_read(xs: AsyncXenStoreClient, worker: int, i: int) -> int:
    await xs.read(f"/bench/w{worker}/k{i % 10}")
    return 1


async def mix_write(xs: AsyncXenStoreClient, worker: int, i: int) -> int:
    await xs.write(f"/bench/w{worker}/k{i % 10}", str(i))
    return 1


async def mix_directory(xs: AsyncXenStoreClient, worker: int, i: int) -> int:
    await xs.directory(f"/bench/w{worker}")
    return 1


async def mix_transaction(xs: AsyncXenStoreClient, worker: int, i: int) -> int:
    """start, read, write, end: 4 requests (EAGAIN retries are counted too)."""
    requests = 0
    while True:
        tx = await xs.transaction_start()
        t = AsyncTransaction(xs, tx)
        value = int(await t.read(f"/bench/w{worker}/k0") or b"0")
        await t.write(f"/bench/w{worker}/k0", str(value + 1))
        requests += 4
        try:
            await xs.transaction_end(tx, commit=True)
            return requests
        except XenStoreConflictError:
            continue  # EAGAIN: retry from the start, as every client does


MIXES: dict[str, Mix] = {"read": mix_read, "write": mix_write, "directory": mix_directory,
                         "transaction": mix_transaction}


async def populate(socket_path: Path, workers: int, extra_nodes: int) -> None:
    async with await AsyncXenStoreClient.connect(socket_path) as xs:
        for worker in range(workers):
            for k in range(10):
                await xs.write(f"/bench/w{worker}/k{k}", "0")
        batch = []
        for n in range(extra_nodes):
            batch.append(xs.write(f"/big/d{n // 100}/n{n % 100}", "x" * 16))
            if len(batch) == 64:
                await asyncio.gather(*batch)
                batch = []
        await asyncio.gather(*batch)


async def run_mix(socket_path: Path, mix: Mix, clients: int, seconds: float,
                  ) -> tuple[float, float, float]:
    conns = [await AsyncXenStoreClient.connect(socket_path) for _ in range(clients)]
    latencies: list[float] = []
    requests = 0
    stop = time.monotonic() + seconds

    async def worker(index: int, xs: AsyncXenStoreClient) -> None:
        nonlocal requests
        i = 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            done = await mix(xs, index, i)  # not "requests += await ...": that races
            requests += done
            latencies.append(time.perf_counter() - started)
            i += 1

    began = time.monotonic()
    await asyncio.gather(*(worker(i, xs) for i, xs in enumerate(conns)))
    elapsed = time.monotonic() - began
    for xs in conns:
        await xs.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return requests / elapsed, p50, p99


async def bench(seconds: float, extra_nodes: int) -> None:
    print(f"{'tree':>12} {'mix':>12} {'clients':>7} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8}")
    for nodes in (0, extra_nodes):
        with tempfile.TemporaryDirectory(prefix="xsb", dir="/tmp") as tmp:
            socket_path = Path(tmp) / "socket"
            with spawn_daemon(socket_path):
                await populate(socket_path, 16, nodes)
                label = f"+{nodes} nodes" if nodes else "small"
                for name, mix in MIXES.items():
                    for clients in (1, 16):
                        rate, p50, p99 = await run_mix(socket_path, mix, clients, seconds)
                        print(f"{label:>12} {name:>12} {clients:>7} {rate:>9.0f} "
                              f"{p50 * 1e6:>8.0f} {p99 * 1e6:>8.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per scenario")
    parser.add_argument("--nodes", type=int, default=10_000, help="extra nodes, 2nd round")
    args = parser.parse_args()
    asyncio.run(bench(args.seconds, args.nodes))


if __name__ == "__main__":
    main()
