"""The xen platform: a domain and its xenbus devices written to XenStore, and removed again.

``create`` writes the domain's nodes and, for each xenbus disk and NIC only, the frontend and
backend nodes with their permissions and state 1 (Initialising), in one transaction that is
retried on EAGAIN. It talks to a given xenstored socket, or starts pvhvm's own daemon
(detached, under the state directory) when none is given. ``destroy`` removes exactly what
create made, including parent directories it had to create, so the store is left as it was.

Records of xen-platform domains live in ``<state dir>/xen``, apart from QEMU domains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket as sockets
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvhvm.errors import DomainError, XenStoreError
from pvhvm.plan.plan import Plan
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, pid_alive, pid_cmdline
from pvhvm.xen.xenbus import (
    DeviceEntry,
    DomainEntries,
    device_nodes,
    device_paths,
    domain_entries,
)
from pvhvm.xenstore.client import Transaction, XenStoreClient
from pvhvm.xenstore.errors import XenStoreConnectionError, XenStoreErrnoError

log = logging.getLogger(__name__)

#: INTRODUCE needs the guest's store page and event channel. With no hypervisor there are
#: none, so pvhvm's own daemon is told the usual HVM store pfn and port 1 (port 0 is EINVAL).
NOMINAL_STORE_GFN = 0xFEFFC
NOMINAL_STORE_PORT = 1


def xen_store(root: StateStore | None = None) -> StateStore:
    """Where xen-platform domain records live."""
    base = root.base if root is not None else StateStore().base
    return StateStore(base / "xen", base=base)


def embedded_socket(store: StateStore) -> Path:
    return store.root / "xenstored" / "socket"


def ensure_embedded_daemon(store: StateStore) -> Path:
    """The socket of pvhvm's own xenstored, started (detached) if it is not running."""
    socket = embedded_socket(store)
    pid_file = socket.parent / "xenstored.pid"
    with store.locked():
        if socket.exists() and _answers(socket):
            return socket
        socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        from pvhvm.xenstore.daemon import spawn_daemon  # only here: create/list skip it

        spawn_daemon(
            socket, pid_file=pid_file, log_file=socket.parent / "xenstored.log", detach=True
        )
    return socket


def served_by_pvhvm(socket: Path) -> bool:
    """Whether the xenstored answering at ``socket`` is pvhvm's own daemon: the process at the
    socket's other end (SO_PEERCRED) runs ``pvhvm.xenstore`` or ``pvhvm xenstored``. False when
    it is another program, or cannot be told (no answer, a peer in another pid namespace)."""
    try:
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as peer:
            peer.settimeout(5)
            peer.connect(str(socket))
            creds = peer.getsockopt(sockets.SOL_SOCKET, sockets.SO_PEERCRED,
                                    struct.calcsize("3i"))
    except OSError:
        return False
    pid = struct.unpack("3i", creds)[0]
    if pid <= 0:
        return False
    argv = pid_cmdline(pid)
    if any("pvhvm.xenstore" in arg for arg in argv):
        return True
    return any(Path(arg).name == "pvhvm" for arg in argv) and "xenstored" in argv


def _answers(socket: Path) -> bool:
    try:
        with XenStoreClient(socket, timeout=5) as xs:
            xs.directory("/")
    except (XenStoreError, OSError):
        return False
    return True


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``[/a, /a/b]``."""
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def _write(t: Transaction, entries: DomainEntries) -> list[str]:
    """Write every node; return the topmost paths this transaction had to create."""
    created: list[str] = []
    seen: set[str] = set()
    for node in entries.nodes:
        for path in [*_ancestors(node.path), node.path]:
            if path in seen:
                continue
            seen.add(path)
            inside_created = any(path.startswith(top + "/") for top in created)
            if not inside_created and not t.exists(path):
                created.append(path)
        t.write(node.path, node.value)
        if node.perms is not None:
            t.set_perms(node.path, list(node.perms))
    return created


def create(
    plan: Plan, xenstore: Path | None = None, store: StateStore | None = None
) -> DomainRecord:
    """Write ``plan``'s domain to XenStore; nothing is left behind if it fails."""
    records = xen_store(store)
    embedded = xenstore is None
    socket = ensure_embedded_daemon(records) if xenstore is None else xenstore
    records.claim(plan.name)
    try:
        with records.locked():
            domid = records.next_domid()
            # The store is in the first record written: a create killed after this still
            # leaves a record that destroy can clean up in the right XenStore.
            record = DomainRecord(
                name=plan.name, domid=domid, uuid=plan.uuid, platform="xen",
                memory_mib=plan.memory_mib, vcpus=plan.vcpus,
                plan={**plan.to_json(), "xenstore_socket": str(socket),
                      "xenstore_created": [], "xenstore_introduced": embedded},
                argv=[], on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
                on_crash=plan.on_crash, state=DomainState.STARTING.value,
            )
            records.write(record)
        entries = domain_entries(plan, domid)
        _populate(record, entries, socket, embedded)
        record.state = DomainState.RUNNING.value
        records.write(record)
    except BaseException:
        records.release(plan.name)
        raise
    return record


def _populate(record: DomainRecord, entries: DomainEntries, socket: Path, introduce: bool) -> None:
    """Write the nodes in one transaction and introduce the domain; undo on failure."""
    domid = record.domid
    try:
        with XenStoreClient(socket) as xs:
            if xs.exists(f"/local/domain/{domid}"):
                raise DomainError(
                    f"domid {domid} is already in XenStore at {socket}; another toolstack "
                    "owns it"
                )
            record.plan["xenstore_created"] = xs.run_transaction(lambda t: _write(t, entries))
            try:
                if introduce:
                    xs.introduce(domid, NOMINAL_STORE_GFN, NOMINAL_STORE_PORT)
            except BaseException:
                xs.run_transaction(_remover(record))
                raise
    except XenStoreConnectionError as err:  # it names the socket and says what is wrong
        raise DomainError(str(err)) from err
    except XenStoreError as err:
        raise DomainError(f"XenStore at {socket} refused the domain: {err}") from err
    except OSError as err:
        raise DomainError(f"cannot talk to XenStore at {socket}: {err}") from err


def destroy(name: str, store: StateStore | None = None) -> bool:
    """Remove ``name``'s nodes from XenStore and its record; False when it is not a xen domain."""
    records = xen_store(store)
    record = records.read(name)
    if record is None:
        if records.paths(name).directory.exists():
            records.release(name)
            return True
        return False
    socket = Path(str(record.plan.get("xenstore_socket", embedded_socket(records))))
    try:
        with XenStoreClient(socket) as xs:
            xs.run_transaction(_remover(record))
            if record.plan.get("xenstore_introduced"):
                with contextlib.suppress(XenStoreErrnoError):
                    xs.release(record.domid)
    except (XenStoreError, OSError) as err:
        raise DomainError(
            f"cannot remove domain {name!r} from XenStore at {socket}: {err}"
        ) from err
    records.release(name)
    if socket == embedded_socket(records):
        _stop_idle_embedded_daemon(records)
    return True


def _stop_idle_embedded_daemon(records: StateStore) -> None:
    """Stop pvhvm's own xenstored once no xen-platform domain is left (the next create starts
    it again). A pid that is not that daemon any more is left alone."""
    socket = embedded_socket(records)
    pid_file = socket.parent / "xenstored.pid"
    with records.locked():
        if records.names():
            return
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if b"pvhvm.xenstore" not in cmdline or str(socket).encode() not in cmdline:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # gone once its socket is and it has exited (a loaded host takes a while for both)
        deadline = time.monotonic() + 5
        while (socket.exists() or pid_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.02)


def _remover(record: DomainRecord) -> Callable[[Transaction], None]:
    """A transaction body that removes what create wrote for ``record``."""
    created = [str(p) for p in record.plan.get("xenstore_created", [])]
    owned = _owned_paths(record)

    def remove(t: Transaction) -> None:
        for path in owned:
            if t.exists(path):
                t.rm(path)
        # Parents that create had to make go too, once nothing else lives in them.
        for path in owned:
            top = next((c for c in created if path == c or path.startswith(c + "/")), None)
            parent = path
            while top is not None and parent != top:
                parent = parent.rsplit("/", 1)[0]
                if not t.exists(parent) or t.directory(parent):
                    break
                t.rm(parent)

    return remove


def _owned_paths(record: DomainRecord) -> list[str]:
    domid = record.domid
    paths = [f"/vm/{record.uuid}", f"/local/domain/{domid}"]
    for kind in ("vbd", "vif"):
        paths.append(f"/local/domain/0/backend/{kind}/{domid}")
    for disk in record.plan.get("disks", []):
        backend = disk.get("backend")
        if backend and str(backend).isdigit():
            paths.append(f"/local/domain/{backend}/backend/vbd/{domid}")
    for vif in record.plan.get("vifs", []):
        backend = vif.get("backend")
        if backend and str(backend).isdigit():
            paths.append(f"/local/domain/{backend}/backend/vif/{domid}")
    return list(dict.fromkeys(paths))


def list_domains(store: StateStore | None = None) -> list[DomainRecord]:
    """Records of the xen-platform domains."""
    return xen_store(store).records()


def dry_run_nodes(plan: Plan, store: StateStore | None = None) -> dict[str, str]:
    """The nodes create would write (``--dry-run --json --platform xen``)."""
    records = xen_store(store)
    return domain_entries(plan, records.next_domid(take=False)).as_dict()


def device_drivers(record: DomainRecord) -> dict[str, str]:
    """What realises each device of a xen-platform domain, keyed as listing keys QEMU devices
    (``disk-<vdev>``, ``vif-<devid>``): for a xenbus device its backend path and xenbus state,
    read now from XenStore (as ``xl block-list`` reads them); for an ioemu one the device model.
    """
    socket = Path(str(record.plan.get("xenstore_socket", embedded_socket(xen_store()))))
    front = f"/local/domain/{record.domid}/device"
    out: dict[str, str] = {}
    wanted = [(f"disk-{d.get('vdev')}", "vbd", d) for d in record.plan.get("disks", [])]
    wanted += [(f"vif-{v.get('devid')}", "vif", v) for v in record.plan.get("vifs", [])]
    try:
        with XenStoreClient(socket, timeout=10) as xs:
            for key, kind, device in wanted:
                if device.get("type") != "xenbus":
                    out[key] = "device model"
                    continue
                backend = _read(xs, f"{front}/{kind}/{device.get('devid')}/backend")
                if backend is None:
                    out[key] = "missing from XenStore"
                    continue
                out[key] = f"{backend} (state {_read(xs, f'{backend}/state') or '?'})"
    except (XenStoreError, OSError) as err:
        raise DomainError(
            f"cannot read domain {record.name!r} from XenStore at {socket}: {err}"
        ) from err
    return out


def _read(xs: XenStoreClient, path: str) -> str | None:
    """The value at ``path``, or None when there is no such node."""
    try:
        return xs.read(path).decode(errors="replace")
    except XenStoreErrnoError as err:
        if err.errno_name == "ENOENT":
            return None
        raise


# --- devices added and removed while the domain exists (xl block-attach ... detach) ---------

#: XenbusState Closed: a backend that has let its frontend go (xenbus.h)
_CLOSED = "6"


def _socket_of(record: DomainRecord, records: StateStore) -> Path:
    return Path(str(record.plan.get("xenstore_socket", embedded_socket(records))))


def attach(name: str, entry: DeviceEntry, backend_id: int, section: str,
           device_json: dict[str, Any], store: StateStore | None = None) -> None:
    """Write one PV device's frontend and backend nodes (state 1) in one transaction, as
    libxl's device add does, and add it to the record."""
    records = xen_store(store)
    record = records.read(name)
    if record is None:
        raise DomainError(f"no domain named {name!r}")
    socket = _socket_of(record, records)
    frontend, _ = device_paths(entry.kind, entry.devid, backend_id, record.domid)
    entries = DomainEntries(domid=record.domid,
                            nodes=tuple(device_nodes(entry, backend_id, record.domid)))

    def write(t: Transaction) -> list[str]:
        if t.exists(frontend):
            raise DomainError(f"{frontend} already exists in XenStore at {socket}")
        return _write(t, entries)

    try:
        with XenStoreClient(socket) as xs:
            created = xs.run_transaction(write)
    except (XenStoreError, OSError) as err:
        raise DomainError(f"cannot add {entry.kind} {entry.devid} of domain {name!r} to "
                          f"XenStore at {socket}: {err}") from err
    record.plan.setdefault(section, []).append(device_json)
    record.plan["xenstore_created"] = [*record.plan.get("xenstore_created", []),
                                       *created]
    records.write(record)


def detach(name: str, kind: str, devid: int, section: str, force: bool,
           timeout: float, store: StateStore | None = None) -> bool:
    """Remove a PV device as libxl does: backend ``online`` 0 and state 5 (Closing), wait for
    the backend to reach 6 (Closed), then remove both directories; ``force`` removes them
    without waiting. Returns False when it was forced past a backend that did not close."""
    records = xen_store(store)
    record = records.read(name)
    if record is None:
        raise DomainError(f"no domain named {name!r}")
    socket = _socket_of(record, records)
    front = f"/local/domain/{record.domid}/device/{kind}/{devid}"
    try:
        with XenStoreClient(socket) as xs:
            backend = _read(xs, f"{front}/backend")
            if backend is None:
                raise DomainError(f"domain {name!r} has no {kind} {devid} in XenStore")

            def closing(t: Transaction) -> None:
                t.write(f"{backend}/online", "0")
                t.write(f"{backend}/state", "5")

            closed = False
            if not force:
                xs.run_transaction(closing)
                deadline = time.monotonic() + timeout
                while not closed and time.monotonic() < deadline:
                    closed = _read(xs, f"{backend}/state") == _CLOSED
                    if not closed:
                        time.sleep(0.1)
                if not closed:
                    raise DomainError(
                        f"{kind} {devid} of domain {name!r}: its backend did not close within "
                        f"{timeout:g}s (no Xen backend driver runs on this host to close it); "
                        "--force removes its nodes")

            def remove(t: Transaction) -> None:
                for path in (front, backend):
                    if t.exists(path):
                        t.rm(path)

            xs.run_transaction(remove)
    except (XenStoreError, OSError) as err:
        raise DomainError(f"cannot remove {kind} {devid} of domain {name!r} from XenStore at "
                          f"{socket}: {err}") from err
    record.plan[section] = [d for d in record.plan.get(section, [])
                            if int(d.get("devid") or 0) != devid]
    records.write(record)
    return closed


# --- memory target and vCPU availability (xl mem-set, vcpu-set) ------------------------------


def memory_nodes(record: DomainRecord, target_kib: int) -> dict[str, str]:
    """What ``xl mem-set`` writes: the balloon target in KiB (docs/misc/xenstore-paths:
    ``~/memory/target``), which the guest's balloon driver follows."""
    return {f"/local/domain/{record.domid}/memory/target": str(target_kib)}


def vcpu_nodes(record: DomainRecord, vcpus: int, max_vcpus: int) -> dict[str, str]:
    """What ``xl vcpu-set`` writes: ``~/cpu/N/availability`` online for the first ``vcpus``,
    offline for the rest up to maxvcpus (docs/misc/xenstore-paths; libxl_set_vcpuonline)."""
    return {f"/local/domain/{record.domid}/cpu/{cpu}/availability":
            "online" if cpu < vcpus else "offline" for cpu in range(max_vcpus)}


def set_nodes(name: str, nodes: dict[str, str], change: Callable[[DomainRecord], None],
              store: StateStore | None = None) -> None:
    """Write ``nodes`` under the domain's own directory in one transaction, then ``change``
    its record; nothing is written to either when XenStore refuses."""
    records = xen_store(store)
    record = records.read(name)
    if record is None:
        raise DomainError(f"no domain named {name!r}")
    socket = _socket_of(record, records)
    home = f"/local/domain/{record.domid}"

    def write(t: Transaction) -> None:
        if not t.exists(home):
            raise DomainError(f"{home} is not in XenStore at {socket}")
        for path, value in nodes.items():
            t.write(path, value)

    try:
        with XenStoreClient(socket) as xs:
            xs.run_transaction(write)
    except (XenStoreError, OSError) as err:
        raise DomainError(f"cannot write to XenStore at {socket} for domain {name!r}: "
                          f"{err}") from err
    change(record)
    records.write(record)
