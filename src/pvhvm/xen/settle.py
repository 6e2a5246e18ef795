"""What a dead Xen domain's hotplug scripts leave behind, waited for and removed (issue 19).

libxl runs a hotplug script (``/etc/xen/scripts/block``, ``vif-bridge``, ...) for each backend
device it adds or removes, with ``XENBUS_PATH=backend/KIND/DOMID/DEVID`` in its environment, and
at its fixed hotplug timeout (40 s in Xen 4.17) it SIGKILLs the script alone: the programs the
script was running carry on, and one that writes ``hotplug-error`` after libxl removed the
backend re-creates ``/local/domain/0/backend/KIND/DOMID/...``, a node of a domain that no
longer exists (seen on a loaded Xen host: the block script's ``remove`` half). xl does not clean
that up; pvhvm does after its own ``destroy``, ``shutdown -w`` and the detach verbs:

1. wait, within a bound, until no process has that domain's (or device's) ``XENBUS_PATH``:
   every program a script started inherits its environment, so this finds the orphans too;
2. then, if Xen has no domain with that domid (a new one could have been given the number only
   after the 32k domids wrapped), remove what is left under the backend paths of that domain
   (or of that device, when its frontend is gone too).

XenStore is dom0's own daemon (``/var/run/xenstored/socket``, as xenstore-utils find it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.errors import XenStoreErrnoError

#: where libxl keeps the backends dom0 serves: ``BACKEND_ROOT/KIND/DOMID/DEVID``
BACKEND_ROOT = "/local/domain/0/backend"
#: how long pvhvm waits for a dead domain's hotplug programs before removing nodes anyway
SETTLE_TIMEOUT = 60.0
#: the backend kinds of a disk (blkback, QEMU's qdisk, tapdisk) and of a NIC
DISK_KINDS = ("vbd", "qdisk", "vbd3")
NIC_KINDS = ("vif",)
_POLL = 0.5


def hotplug_processes(domid: int, kinds: Iterable[str] | None = None, devid: int | None = None,
                      proc: Path = Path("/proc")) -> list[int]:
    """The PIDs whose environment names a backend of ``domid`` (of ``devid`` of one of
    ``kinds`` when given) in ``XENBUS_PATH``, as libxl gives its hotplug scripts."""
    kind = "|".join(re.escape(k) for k in kinds) if kinds else "[^/]+"
    device = "" if devid is None else f"/{devid}"
    wanted = re.compile(rf"^backend/(?:{kind})/{domid}{device}(?:/|$)".encode())
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        for variable in environ.split(b"\0"):
            if variable.startswith(b"XENBUS_PATH=") and wanted.match(variable[12:]):
                found.append(int(entry.name))
                break
    return sorted(found)


@dataclass
class Settled:
    """What :func:`settle` did: the processes it waited for, and the nodes it removed."""

    waited_s: float
    still_running: list[int]
    removed: list[str]


def _children(xs: XenStoreClient, path: str) -> list[str]:
    try:
        return xs.directory(path)
    except XenStoreErrnoError as err:
        if err.errno_name == "ENOENT":
            return []
        raise


def settle(domid: int, live_domids: Callable[[], set[int]], *,
           kinds: Iterable[str] | None = None, devid: int | None = None,
           timeout: float = SETTLE_TIMEOUT,
           connect: Callable[[], XenStoreClient] = XenStoreClient,
           proc: Path = Path("/proc")) -> Settled:
    """After libxl destroyed domain ``domid`` (or detached its device ``devid``): wait up to
    ``timeout`` s for the hotplug programs of it to end, then remove what is left of its
    backends, unless ``live_domids()`` says a domain with that domid runs (for a device: unless
    its frontend still exists, i.e. libxl has not let go of it)."""
    kinds = tuple(kinds) if kinds is not None else None
    started = time.monotonic()
    deadline = started + timeout
    running = hotplug_processes(domid, kinds, devid, proc)
    while running and time.monotonic() < deadline:
        time.sleep(_POLL)
        running = hotplug_processes(domid, kinds, devid, proc)
    waited = time.monotonic() - started
    removed: list[str] = []
    with connect() as xs:
        if devid is None and domid in live_domids():
            return Settled(waited, running, removed)
        for kind in _children(xs, BACKEND_ROOT):
            if kinds is not None and kind not in kinds:
                continue
            if str(domid) not in _children(xs, f"{BACKEND_ROOT}/{kind}"):
                continue
            path = f"{BACKEND_ROOT}/{kind}/{domid}"
            if devid is not None:
                if str(devid) not in _children(xs, path):
                    continue
                frontend = f"/local/domain/{domid}/device/{'vif' if kind == 'vif' else 'vbd'}"
                if str(devid) in _children(xs, frontend):
                    continue
                path = f"{path}/{devid}"
            xs.rm(path)
            removed.append(path)
            _remove_empty_parents(xs, path)
    return Settled(waited, running, removed)


def _remove_empty_parents(xs: XenStoreClient, path: str) -> None:
    """Each parent of ``path`` up to :data:`BACKEND_ROOT` that has no value and no children
    left, as libxl's own removal of a device leaves none (libxl__xs_path_cleanup)."""
    parent = path.rsplit("/", 1)[0]
    while parent == BACKEND_ROOT or parent.startswith(BACKEND_ROOT + "/"):
        try:
            if xs.read(parent) != b"" or _children(xs, parent):
                return
        except XenStoreErrnoError as err:
            if err.errno_name == "ENOENT":
                return
            raise
        xs.rm(parent)
        parent = parent.rsplit("/", 1)[0]


def describe(settled: Settled) -> str | None:
    """One line for the user when settle had anything to do, else None."""
    parts = []
    if settled.still_running:
        parts.append(f"{len(settled.still_running)} hotplug program(s) still running after "
                     f"{settled.waited_s:.0f} s (pids "
                     f"{', '.join(map(str, settled.still_running))})")
    if settled.removed:
        parts.append("removed what libxl's killed hotplug scripts left in XenStore: "
                     + ", ".join(settled.removed))
    return "; ".join(parts) or None


