"""The virtio-blk setups ``pvhvm bench io`` compares with pvhvm's default (PV_DISK_TUNING).

Each is a :class:`DiskTuning` for the PV data disk; the IDE guest uses IDE_DISK_TUNING (as
``pvhvm create`` does), and a second IDE guest (``ide-direct``) uses cache=none,aio=native
like the PV default, so the device itself is compared with the host's page cache out of both.
QEMU 7.2 facts: ``aio=native`` needs O_DIRECT (cache=none), so with cache=writeback pvhvm's
argv falls back to threads; ``aio=io_uring`` works with Debian's 7.2 (liburing linked);
virtio-blk's queue-size is at most 1024.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvhvm.bench import BenchError
from pvhvm.qemu.argv import IDE_DISK_TUNING, PV_DISK_TUNING, DiskTuning

DEFAULT_SETUP = "pvhvm-default"
IDE_SETUP = "ide"
#: IDE with O_DIRECT like the PV default: the like-for-like comparison of the two devices
IDE_DIRECT_SETUP = "ide-direct"


@dataclass(frozen=True)
class Setup:
    """A named disk tuning for one guest boot."""

    name: str
    tuning: DiskTuning

    def describe(self) -> str:
        tuning = self.tuning
        aio = tuning.aio
        if aio == "native" and tuning.cache not in ("none", "directsync"):
            aio = "threads"
        text = f"cache={tuning.cache},aio={aio}"
        if not self.name.startswith(IDE_SETUP):
            queues = tuning.num_queues or "vcpus"
            text += f",num-queues={queues},queue-size={tuning.queue_size}"
            if tuning.iothread:
                text += ",iothread"
        return text


def _variant(name: str, **changes: object) -> Setup:
    base = PV_DISK_TUNING
    values = {
        "cache": base.cache, "aio": base.aio, "num_queues": base.num_queues,
        "queue_size": base.queue_size, "iothread": base.iothread,
    }
    values.update(changes)
    return Setup(name, DiskTuning(**values))  # type: ignore[arg-type]


IDE = Setup(IDE_SETUP, IDE_DISK_TUNING)
IDE_DIRECT = Setup(IDE_DIRECT_SETUP, DiskTuning(cache="none", aio="native"))
DEFAULT = Setup(DEFAULT_SETUP, PV_DISK_TUNING)
#: the default again, last: how far two runs of one setup differ (the noise floor)
RERUN = Setup(DEFAULT_SETUP + "-rerun", PV_DISK_TUNING)

#: every alternative; names say what differs from the default
ALTERNATIVES = (
    _variant("none+native", cache="none", aio="native", iothread=False),
    _variant("none+threads", cache="none", aio="threads"),
    _variant("none+io_uring", cache="none", aio="io_uring"),
    _variant("writeback+threads", cache="writeback", aio="threads"),
    _variant("writeback+io_uring", cache="writeback", aio="io_uring"),
    _variant("iothread", iothread=True),
    _variant("no-iothread", iothread=False),
    _variant("num-queues=1", num_queues=1),
    _variant("queue-size=1024", queue_size=1024),
    _variant("queue-size=128", queue_size=128),
)
QUICK_ALTERNATIVES = (
    "none+threads", "none+io_uring", "writeback+threads", "iothread", "no-iothread",
)


def select_setups(names: list[str] | None, quick: bool) -> list[Setup]:
    """The PV setups to run: the default first, then the named (or standard) alternatives.

    An alternative whose tuning equals the default's is dropped; when alternatives run, the
    default runs again last (:data:`RERUN`) so the table shows the run-to-run noise.
    """
    by_name = {setup.name: setup for setup in ALTERNATIVES}
    if names is None:
        wanted = list(QUICK_ALTERNATIVES) if quick else [s.name for s in ALTERNATIVES]
    else:
        wanted = names
    out = [DEFAULT]
    for name in wanted:
        if name in ("", DEFAULT_SETUP):
            continue
        if name not in by_name:
            known = ", ".join([DEFAULT_SETUP, *by_name])
            raise BenchError(f"unknown setup {name!r} (known: {known})")
        setup = by_name[name]
        if all(setup.tuning != s.tuning for s in out):
            out.append(setup)
    if len(out) > 1:
        out.append(RERUN)
    return out
