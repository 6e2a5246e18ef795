"""CPU time of one `reply()` (no sockets): WRITE and READ, and the parser per packet.

    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/reply_cost.py [--profile]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

from pvhvm.xenstore.server import XenStore, reply
from pvhvm.xenstore.wire import Op, Packet, Parser, encode


def main() -> None:
    store = XenStore()
    conn = store.connect()
    write = Packet(Op.WRITE, 1, 0, b"/bench/w0/k1\0value")
    read = Packet(Op.READ, 1, 0, b"/bench/w0/k1\0")
    reply(store, conn, write)
    n = 50_000
    for name, packet in (("WRITE", write), ("READ", read)):
        started = time.process_time()
        for _ in range(n):
            reply(store, conn, packet)
        print(f"reply() {name}: {(time.process_time() - started) / n * 1e6:.1f} µs CPU")
    data = encode(Op.READ, b"/bench/w0/k1\0")
    parser = Parser()
    started = time.process_time()
    for _ in range(n):
        parser.feed(data)
    print(f"Parser, one packet: {(time.process_time() - started) / n * 1e6:.1f} µs CPU")
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.runcall(lambda: [reply(store, conn, write) for _ in range(30_000)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
