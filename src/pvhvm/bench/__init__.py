"""Benchmarks (issue 6): the PV benefit in real guests, pvhvm's overhead, how cost grows.

    io.py         fio jobs (jobs.py) on the host, in an IDE guest and in PV guests (guest.py)
                  under several virtio-blk setups (setups.py); results and ratios (results.py)
    net.py        iperf3 TCP and ping through virtio-net, e1000 and rtl8139 guests on a private
                  bridge (netenv.py: the bridge, qemu-bridge-helper's ACL line, iperf3 -s)
    toolstack.py  create vs QEMU by hand, dry-run and import time, scaling with disks, boot time

Errors are :class:`BenchError` (a PvhvmError); a failed guest carries its console log's tail.
"""

from __future__ import annotations

import logging

from pvhvm.errors import PvhvmError

logging.getLogger(__name__).addHandler(logging.NullHandler())


class BenchError(PvhvmError):
    """A benchmark could not run (fio failed, a guest did not report, a tool is missing)."""
