"""Changing a running domain's devices on the qemu platform, as xl(1) does: block-attach,
block-detach, network-attach, network-detach, cd-insert, cd-eject.

As xl, only PV devices (``type=xenbus``: virtio-blk-pci, virtio-net-pci) are hot-plugged; an
emulated disk or NIC is refused (IDE and the emulated NICs are fixed at create). Each verb
runs over QMP on the control socket, one at a time per domain (``hotplug.lock``), and then
records the change in the domain's record: its plan (what block-list, network-list and
``list -l`` show) and its argv (what a supervisor starts again after an on_reboot restart),
so the record stays the one source of truth. A failed attach undoes what QMP had done (no
orphan block node or netdev) and records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from pvhvm.config.disk import Access, DiskSpec, parse_disk
from pvhvm.config.lang import path_problem
from pvhvm.config.vif import VifSpec, parse_vif
from pvhvm.errors import DomainError, InputError, SpecError
from pvhvm.plan.plan import DEFAULT_BRIDGE, DiskPlan, VifPlan, default_mac
from pvhvm.plan.types import DeviceClass, DeviceKind, default_registry
from pvhvm.plan.vdev import parse_vdev
from pvhvm.qemu import hotplug as qemu_hotplug
from pvhvm.qemu import qmp
from pvhvm.qemu.argv import QEMU_FORMATS, ArgvOptions, drive_value
from pvhvm.runtime import lifecycle
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, qemu_alive

#: how long block-/network-detach waits for the guest to let go of the device (pciehp
#: waits 5 s after the attention button before it powers the slot off)
DETACH_TIMEOUT = 30.0
QMP_TIMEOUT = 15.0


class HotplugError(InputError):
    """A hotplug request the domain cannot take (an emulated device, no free slot, ...)."""


@dataclass(frozen=True)
class Detached:
    """What a detach did: ``forced`` when the guest did not release the device in time."""

    what: str
    forced: bool


# --- the running domain ----------------------------------------------------------------


def running_domain(name: str, store: StateStore) -> DomainRecord:
    record = lifecycle.lookup(name, store)
    state = record.domain_state
    if state not in (DomainState.RUNNING, DomainState.PAUSED):
        raise DomainError(f"domain {name!r} is {state.value}: its devices can change only "
                          "while it runs or is paused")
    if not qemu_alive(record, store.paths(name)):
        raise DomainError(f"domain {name!r} has crashed (its QEMU is gone); destroy it")
    return record


@contextlib.contextmanager
def one_at_a_time(name: str, store: StateStore) -> Iterator[None]:
    with store.flocked(store.paths(name).hotplug_lock):
        yield


async def qmp_session(socket: Path, work: Callable[[QMPClient], Any]) -> Any:
    client = await qmp.connect(socket, "pvhvm-hotplug", timeout=QMP_TIMEOUT)
    try:
        return await work(client)
    finally:
        with contextlib.suppress(QMPError, OSError, EOFError):
            await client.disconnect()


async def qmp_execute(client: QMPClient, command: str, arguments: dict[str, Any]) -> Any:
    try:
        return await asyncio.wait_for(client.execute(command, arguments), QMP_TIMEOUT)
    except ExecuteError as err:
        raise DomainError(f"QEMU refused {command}: {err}") from err
    except (TimeoutError, QMPError, OSError, EOFError) as err:
        raise DomainError(f"QMP {command} failed: {err}") from err


async def plug_pair(client: QMPClient, backend: tuple[str, dict[str, Any]],
                    device: dict[str, Any], undo: tuple[str, dict[str, Any]]) -> None:
    """Add a backend (block node, netdev), then the device on it; when the device cannot be
    added, remove the backend again, so a failed attach leaves nothing in QEMU."""
    await qmp_execute(client, *backend)
    try:
        await qmp_execute(client, "device_add", device)
    except BaseException:
        with contextlib.suppress(DomainError):
            await qmp_execute(client, *undo)
        raise


def _free_slot(record: DomainRecord) -> str | None:
    """The hotplug port a new PV device goes on; None on pc (the root bus hotplugs).

    HotplugError when every port reserved at create is taken."""
    if record.plan.get("ide_controller"):
        return None
    ports = [value.split(",")[1].removeprefix("id=")
             for option, value in itertools.pairwise(record.argv)
             if option == "-device" and value.startswith("pcie-root-port,id=hotplug")]
    # a device detached with --force holds its port until the guest lets go of it
    taken = {str(entry.get("slot")) for entry in [*record.hotplugged, *record.releasing]}
    for port in ports:
        if port not in taken:
            return port
    raise HotplugError(
        f"domain {record.name!r} has no free hotplug slot: its {len(ports)} slot(s) "
        f"(hotplug_slots = {len(ports)} at create) are all in use; detach a hot-plugged "
        "device, or create the domain with a larger hotplug_slots"
    )


def _without(argv: list[str], fragment: list[str]) -> list[str]:
    """``argv`` with the first occurrence of the option pairs in ``fragment`` removed."""
    out = list(argv)
    for option, value in zip(fragment[::2], fragment[1::2], strict=True):
        for index in range(len(out) - 1):
            if out[index] == option and out[index + 1] == value:
                del out[index:index + 2]
                break
    return out


# --- block-attach / block-detach -----------------------------------------------------------


def _disk_plan(spec: DiskSpec, record: DomainRecord) -> DiskPlan:
    """The PV disk ``spec`` asks for, checked against the domain's disks (xl-disk-
    configuration(5); as ``xl block-attach``, only PV disks)."""
    where = f"disk {spec.vdev!r}"
    if spec.cdrom:
        raise HotplugError(f"{where}: a cdrom is emulated (IDE), and IDE has no hotplug; "
                           "a CD drive is given at create, and cd-insert changes its medium")
    kind = DeviceKind.XENBUS
    if spec.type is not None:
        try:
            kind = default_registry().resolve(spec.type, DeviceClass.DISK)
        except SpecError as err:
            raise HotplugError(f"{where}: {err}") from err
    if kind is DeviceKind.IOEMU:
        raise HotplugError(f"{where}: type={spec.type} is an emulated IDE disk, and IDE has "
                           "no hotplug; only PV disks (type=xenbus) can be attached, as in xl")
    vdev = parse_vdev(spec.vdev)
    for disk in record.plan.get("disks", []):
        if disk.get("vdev") == spec.vdev or disk.get("devid") == vdev.devid:
            raise HotplugError(f"{where}: the domain already has disk {disk.get('vdev')!r} "
                               f"(devid {vdev.devid})")
    if spec.is_script_backed or spec.is_network or not spec.target:
        raise HotplugError(f"{where}: block-attach takes a file or block device target")
    problem = path_problem(spec.target)
    if problem is not None:
        raise HotplugError(f"{where}: target: {problem}")
    target = os.path.abspath(spec.target)
    if not os.path.exists(target):
        raise HotplugError(f"{where}: image {spec.target!r} does not exist")
    if os.path.isdir(target):
        raise HotplugError(f"{where}: image {spec.target!r} is a directory")
    for disk in record.plan.get("disks", []):
        other = str(disk.get("target") or "")
        if other and os.path.realpath(other) == os.path.realpath(target) and (
                Access.RW in (spec.access, Access(disk.get("mode") or "w"))):
            raise HotplugError(
                f"{where}: image {spec.target!r} is also used by disk {disk.get('vdev')!r}, "
                "and one of them is writable; use mode w! on both to share it on purpose")
    return DiskPlan(vdev=spec.vdev, devid=vdev.devid, kind=kind, target=target,
                    format=spec.format, access=spec.access, cdrom=False, ide_place=None,
                    trusted=spec.trusted is not False, discard=spec.discard is not False)


def _disk_json(disk: DiskPlan) -> dict[str, Any]:
    """The disk as Plan.to_json writes one (what block-list reads)."""
    return {"vdev": disk.vdev, "devid": disk.devid, "type": disk.kind.value,
            "target": disk.target, "format": disk.format, "mode": disk.access.value,
            "cdrom": disk.cdrom, "ide_place": None, "script": None, "backend": None,
            "bootindex": None, "hotplugged": True}


def disk_to_attach(spec_text: str, record: DomainRecord) -> DiskPlan:
    """The PV disk a block-attach SPEC asks of ``record``'s domain (any platform)."""
    try:
        spec = parse_disk(spec_text)
    except SpecError as err:
        raise HotplugError(str(err)) from err  # it names the spec already
    return _disk_plan(spec, record)


def vif_to_attach(spec_text: str, record: DomainRecord) -> VifPlan:
    """The PV NIC a network-attach VIFSPEC asks of ``record``'s domain (any platform)."""
    try:
        spec = parse_vif(spec_text)
    except SpecError as err:
        raise HotplugError(str(err)) from err  # it names the spec already
    return _vif_plan(spec, record)


def disk_json(disk: DiskPlan) -> dict[str, Any]:
    """The disk as Plan.to_json writes one (what block-list reads)."""
    return _disk_json(disk)


def vif_json(vif: VifPlan) -> dict[str, Any]:
    """The NIC as Plan.to_json writes one (what network-list reads)."""
    return _vif_json(vif)


def block_attach(name: str, spec_text: str, store: StateStore | None = None) -> DiskPlan:
    """``xl block-attach NAME SPEC``: add a PV disk to the running domain."""
    store = store or StateStore()
    with one_at_a_time(name, store):
        record = running_domain(name, store)
        disk = disk_to_attach(spec_text, record)
        if disk.format not in QEMU_FORMATS:
            raise HotplugError(f"disk {disk.vdev!r}: format {disk.format!r} is not one QEMU "
                               f"opens ({', '.join(QEMU_FORMATS)})")
        slot = _free_slot(record)
        node, device = disk_node_and_device(disk, record.vcpus, slot)

        _plug_and_record(
            store, name, ("blockdev-add", node), device,
            ("blockdev-del", {"node-name": node["node-name"]}),
            qemu_hotplug.blockdev_argv(node) + qemu_hotplug.device_argv(device),
            ("disks", _disk_json(disk)),
            {"kind": "disk", "vdev": disk.vdev, "devid": disk.devid, "slot": slot,
             "spec": spec_text, "directory": os.getcwd(), "queues": record.vcpus},
        )
    return disk


def disk_node_and_device(disk: DiskPlan, queues: int, slot: str | None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """blockdev-add's and device_add's arguments for a hot-plugged PV disk with ``queues``
    virtio queues on ``slot``: what block-attach plugs, and what a restore starts QEMU with
    for it (runtime/incoming.py)."""
    node = qemu_hotplug.blockdev_node(
        disk, direct_io=lifecycle.direct_io_ok(disk.target),
        block_device=stat.S_ISBLK(os.stat(disk.target).st_mode))
    return node, qemu_hotplug.disk_device(disk, queues, slot)


def disk_argv(disk: DiskPlan, queues: int, slot: str | None) -> list[str]:
    """The argv that starts QEMU with hot-plugged ``disk`` (see :func:`disk_node_and_device`)."""
    node, device = disk_node_and_device(disk, queues, slot)
    return qemu_hotplug.blockdev_argv(node) + qemu_hotplug.device_argv(device)


def vif_argv(vif: VifPlan, slot: str | None, bridges: frozenset[str]) -> list[str]:
    """The argv that starts QEMU with hot-plugged ``vif`` (what network-attach plugs)."""
    return (qemu_hotplug.netdev_argv(qemu_hotplug.nic_netdev(vif, bridges))
            + qemu_hotplug.device_argv(qemu_hotplug.nic_device(vif, slot)))


def recorded_vif_spec(spec_text: str, vif: VifPlan) -> str:
    """The VIFSPEC a network-attach keeps: as given, with the devid it got when it named
    none (the next free devid depends on what was attached and detached before, so a
    re-plan of the bare spec could give another; the MAC follows from the devid)."""
    try:
        given = parse_vif(spec_text).devid
    except SpecError:
        given = None
    if given is not None:
        return spec_text
    return ",".join(part for part in (spec_text.strip().strip(","), f"devid={vif.devid}")
                    if part)


def _plug_and_record(
    store: StateStore, name: str, backend: tuple[str, dict[str, Any]], device: dict[str, Any],
    undo: tuple[str, dict[str, Any]], fragment: list[str], planned: tuple[str, dict[str, Any]],
    entry: dict[str, Any],
) -> None:
    """Plug a backend and its device into the running QEMU (:func:`plug_pair`), then record
    it: the device in the record's plan, its argv ``fragment`` in the argv a relaunch uses,
    and ``entry`` (with the fragment) among the hot-plugged devices. The entry keeps the
    spec the device was attached with, its directory and the slot and devid it got: a
    save or migration carries those, never the fragment (runtime/replan.py re-plans them)."""

    async def plug(client: QMPClient) -> None:
        await plug_pair(client, backend, device, undo)

    asyncio.run(qmp_session(store.paths(name).control_socket, plug))
    plan_key, plan_json = planned

    def change(rec: DomainRecord) -> None:
        rec.plan.setdefault(plan_key, []).append(plan_json)
        rec.argv = before_tail(rec.argv, fragment)
        rec.hotplugged.append({**entry, "argv": fragment})

    store.modify(name, change)


def before_tail(argv: list[str], fragment: list[str]) -> list[str]:
    """``argv`` with ``fragment`` added before the supervisor's trailing options (``-S``)."""
    tail = [i for i, a in enumerate(argv) if a in ("-no-shutdown", "-S")]
    at = tail[0] if tail else len(argv)
    return argv[:at] + fragment + argv[at:]


async def _unplug(client: QMPClient, device_id: str, timeout: float) -> bool:
    """device_del and wait for DEVICE_DELETED of ``device_id``; False on timeout."""
    with client.listener("DEVICE_DELETED") as listener:
        try:
            await qmp_execute(client, "device_del", {"id": device_id})
        except DomainError as err:
            # asked before and not answered yet: keep waiting for the guest
            if "in progress" not in str(err) and "pending" not in str(err):
                raise
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                event = await asyncio.wait_for(listener.get(), remaining)
            except TimeoutError:
                return False
            data = event.get("data") or {}
            if isinstance(data, dict) and data.get("device") == device_id:
                return True


def _entry(record: DomainRecord, kind: str, match: Callable[[dict[str, Any]], bool],
           what: str) -> dict[str, Any]:
    for entry in record.hotplugged:
        if entry.get("kind") == kind and match(entry):
            return entry
    listed = record.plan.get("disks" if kind == "disk" else "vifs", [])
    if any(match(item) for item in listed):
        raise HotplugError(
            f"{what} of domain {record.name!r} was given at create; only devices attached "
            "while it runs can be detached (create puts PV devices on q35's root bus, which "
            "has no hotplug)")
    raise HotplugError(f"domain {record.name!r} has no {what}")


def block_detach(name: str, which: str, store: StateStore | None = None, force: bool = False,
                 timeout: float = DETACH_TIMEOUT) -> Detached:
    """``xl block-detach NAME VDEV|DEVID [--force]``: ask the guest to release a hot-plugged
    disk (device_del), wait for DEVICE_DELETED, then remove its block node."""
    store = store or StateStore()
    with one_at_a_time(name, store):
        record = running_domain(name, store)

        def match(item: dict[str, Any]) -> bool:
            return str(item.get("vdev")) == which or str(item.get("devid")) == which

        entry = _entry(record, "disk", match, f"disk {which}")
        vdev, devid = str(entry["vdev"]), int(entry["devid"])

        gone = _unplug_and_forget(
            store, name, entry, f"disk {vdev}", vdev, "disks", f"vbd-{devid}",
            ("blockdev-del", {"node-name": f"disk-{vdev}"}), force, timeout)
    return Detached(what=f"disk {vdev}", forced=not gone)


def _unplug_and_forget(
    store: StateStore, name: str, entry: dict[str, Any], what: str, key: str, plan_key: str,
    device: str, backend_del: tuple[str, dict[str, Any]], force: bool, timeout: float,
) -> bool:
    """Ask the guest to release ``device`` (device_del, then DEVICE_DELETED within
    ``timeout``), remove its backend, and take it out of the record; True when the guest let
    go. Not released: an error unless ``force``, which records it gone and leaves the backend
    for the supervisor to remove once QEMU reports the device deleted."""

    async def unplug(client: QMPClient) -> bool:
        gone = await _unplug(client, device, timeout)
        if gone:
            await qmp_execute(client, *backend_del)
        return gone

    gone: bool = asyncio.run(qmp_session(store.paths(name).control_socket, unplug))
    if not gone and not force:
        raise DomainError(
            f"{what} of domain {name!r}: the guest did not release it within "
            f"{timeout:g}s (it is still attached); --force removes it from the domain")
    command, arguments = backend_del
    _forget(store, name, entry, key, plan_key, None if gone else {
        "device": device, "slot": entry.get("slot"), "command": command,
        "arguments": arguments})
    return gone


def _settle(store: StateStore, name: str, release: dict[str, Any]) -> None:
    """After a forced detach is recorded: if the guest let go meanwhile (its DEVICE_DELETED
    came before the supervisor could know to act on it), remove what backed it now."""
    socket = store.paths(name).control_socket
    with contextlib.suppress(DomainError):
        present = qmp.execute(socket, "qom-list", {"path": "/machine/peripheral"})
        if any(item.get("name") == release["device"] for item in present):
            return
        with contextlib.suppress(DomainError):
            qmp.execute(socket, str(release["command"]), release["arguments"])

        def change(rec: DomainRecord) -> None:
            rec.releasing = [r for r in rec.releasing if r != release]

        store.modify(name, change)


def _forget(store: StateStore, name: str, entry: dict[str, Any], key: str,
            section: str, release: dict[str, Any] | None) -> None:
    """Drop a detached device from the record; ``release``: what the supervisor removes
    once the guest lets go of a device detached with --force."""
    def change(rec: DomainRecord) -> None:
        if release is not None:
            rec.releasing.append(release)
        rec.argv = _without(rec.argv, list(entry["argv"]))
        rec.hotplugged = [e for e in rec.hotplugged if e != entry]
        field = "vdev" if section == "disks" else "devid"
        rec.plan[section] = [d for d in rec.plan.get(section, [])
                             if str(d.get(field)) != key]

    store.modify(name, change)
    if release is not None:
        _settle(store, name, release)


# --- network-attach / network-detach -------------------------------------------------------


def _vif_plan(spec: VifSpec, record: DomainRecord) -> VifPlan:
    """The PV NIC ``spec`` asks for (xl-network-configuration(5)); MAC as the planner makes it."""
    kind = DeviceKind.XENBUS
    if spec.type is not None:
        try:
            kind = default_registry().resolve(spec.type, DeviceClass.NIC)
        except SpecError as err:
            raise HotplugError(f"vif: {err}") from err
    if kind is DeviceKind.IOEMU or (spec.model and not spec.model.startswith("virtio")):
        raise HotplugError("vif: an emulated NIC cannot be hot-plugged (it is fixed at "
                           "create); network-attach adds PV NICs (type=xenbus), as xl")
    if spec.hostfwd:
        raise HotplugError("vif: hostfwd= (port forwards of QEMU user networking) is taken at "
                           "create only, in the config's vif= line; network-attach does not "
                           "add forwards")
    vifs = record.plan.get("vifs", [])
    devids = {int(v.get("devid") or 0) for v in vifs}
    devid = spec.devid if spec.devid is not None else next(
        n for n in itertools.count() if n not in devids)
    if devid in devids:
        raise HotplugError(f"vif: devid {devid} is already used by one of the domain's NICs")
    mac = (spec.mac or default_mac(record.uuid, devid)).lower()
    if any(str(v.get("mac")).lower() == mac for v in vifs):
        raise HotplugError(f"vif: MAC {mac} is already used by one of the domain's NICs")
    for key, value in (("bridge", spec.bridge), ("script", spec.script)):
        problem = None if value is None else path_problem(value)
        if problem is not None:
            raise HotplugError(f"vif: {key}: {problem}")
    return VifPlan(devid=devid, kind=kind, mac=mac, bridge=spec.bridge or DEFAULT_BRIDGE,
                   model=None, ip=spec.ip, script=spec.script, vifname=spec.vifname,
                   rate=spec.rate, mtu=spec.mtu, trusted=spec.trusted is not False)


def _vif_json(vif: VifPlan) -> dict[str, Any]:
    return {"devid": vif.devid, "type": vif.kind.value, "mac": vif.mac, "bridge": vif.bridge,
            "model": None, "ip": vif.ip, "script": vif.script, "vifname": vif.vifname,
            "rate": vif.rate, "backend": None, "bootindex": None, "mtu": vif.mtu,
            "gatewaydev": None, "hotplugged": True}


def network_attach(name: str, spec_text: str = "", store: StateStore | None = None
                   ) -> tuple[VifPlan, list[str]]:
    """``xl network-attach NAME [VIFSPEC]``: add a PV NIC; returns it and warnings."""
    store = store or StateStore()
    with one_at_a_time(name, store):
        record = running_domain(name, store)
        vif = vif_to_attach(spec_text, record)
        slot = _free_slot(record)
        bridges = lifecycle.host_bridges()
        problems = lifecycle.vif_bridge_problems([vif], bridges)
        if problems:
            raise HotplugError(problems[0])
        warnings = lifecycle.vif_notes([vif], bridges)
        netdev = qemu_hotplug.nic_netdev(vif, bridges)
        device = qemu_hotplug.nic_device(vif, slot)

        _plug_and_record(
            store, name, ("netdev_add", netdev), device, ("netdev_del", {"id": netdev["id"]}),
            qemu_hotplug.netdev_argv(netdev) + qemu_hotplug.device_argv(device),
            ("vifs", _vif_json(vif)),
            {"kind": "vif", "devid": vif.devid, "mac": vif.mac, "slot": slot,
             "spec": recorded_vif_spec(spec_text, vif), "directory": os.getcwd()},
        )
    return vif, warnings


def network_detach(name: str, which: str, store: StateStore | None = None,
                   force: bool = False, timeout: float = DETACH_TIMEOUT) -> Detached:
    """``xl network-detach NAME DEVID|MAC``: unplug a hot-plugged PV NIC."""
    store = store or StateStore()
    with one_at_a_time(name, store):
        record = running_domain(name, store)

        def match(item: dict[str, Any]) -> bool:
            return str(item.get("devid")) == which or str(item.get("mac")).lower() == \
                which.lower()

        entry = _entry(record, "vif", match, f"vif {which}")
        devid = int(entry["devid"])

        gone = _unplug_and_forget(
            store, name, entry, f"vif {devid}", str(devid), "vifs", f"vif-{devid}",
            ("netdev_del", {"id": f"net{devid}"}), force, timeout)
    return Detached(what=f"vif {devid}", forced=not gone)


# --- cd-insert / cd-eject ---------------------------------------------------------------------


def _cd_drive(record: DomainRecord, vdev: str) -> dict[str, Any]:
    for disk in record.plan.get("disks", []):
        if disk.get("vdev") == vdev:
            if not disk.get("cdrom"):
                raise HotplugError(f"disk {vdev!r} of domain {record.name!r} is not a cdrom; "
                                   "cd-insert and cd-eject change a CD drive's medium")
            return dict(disk)
    raise HotplugError(f"domain {record.name!r} has no cdrom {vdev!r}")


def _cd_disk(disk: dict[str, Any], target: str) -> DiskPlan:
    place = disk.get("ide_place")
    return DiskPlan(vdev=str(disk["vdev"]), devid=int(disk.get("devid") or 0),
                    kind=DeviceKind.IOEMU, target=target, format="raw", access=Access.RO,
                    cdrom=True, ide_place=(int(place[0]), int(place[1])) if place else None)


def _set_medium(store: StateStore, name: str, vdev: str, disk: DiskPlan) -> None:
    old = f"id=disk-{vdev},"

    def change(rec: DomainRecord) -> None:
        for item in rec.plan.get("disks", []):
            if item.get("vdev") == vdev:
                item["target"], item["format"] = disk.target, disk.format
        for index in range(1, len(rec.argv)):
            if rec.argv[index - 1] == "-drive" and rec.argv[index].startswith(old):
                rec.argv[index] = drive_value(disk, ArgvOptions())
        rec.media[vdev] = disk.target  # what a save or migration carries (runtime/replan.py)

    store.modify(name, change)


def medium_path(target: str) -> str:
    """The absolute path of a cd-insert TARGET, checked (a file or block device; any
    platform)."""
    problem = path_problem(target)
    if problem is not None:
        raise HotplugError(f"cd-insert: target: {problem}")
    path = os.path.abspath(target)
    if not os.path.isfile(path) and not (os.path.exists(path)
                                         and stat.S_ISBLK(os.stat(path).st_mode)):
        raise HotplugError(f"cd-insert: medium {target!r} does not exist or is not a file")
    return path


def cd_medium(record: DomainRecord, vdev: str, path: str) -> DiskPlan:
    """``record``'s CD drive ``vdev`` holding ``path`` ("" when ejected); HotplugError when
    the domain has no such cdrom (any platform)."""
    return _cd_disk(_cd_drive(record, vdev), path)


def hotplugged_entry(record: DomainRecord, kind: str, match: Callable[[dict[str, Any]], bool],
                     what: str) -> dict[str, Any]:
    """The hot-plugged device (``kind`` disk or vif) ``match`` picks; HotplugError naming
    ``what`` when it was given at create or is not there (any platform)."""
    return _entry(record, kind, match, what)


def cd_insert(name: str, vdev: str, target: str, store: StateStore | None = None) -> None:
    """``xl cd-insert NAME VDEV TARGET``: put a (raw ISO) medium in an emulated CD drive,
    empty or not (QMP blockdev-change-medium; the tray is opened, forced, and closed)."""
    store = store or StateStore()
    path = medium_path(target)
    with one_at_a_time(name, store):
        record = running_domain(name, store)
        disk = _cd_disk(_cd_drive(record, vdev), path)
        qmp.execute(store.paths(name).control_socket, "blockdev-change-medium", {
            "device": f"disk-{vdev}", "filename": path, "format": "raw",
            "read-only-mode": "read-only", "force": True}, timeout=QMP_TIMEOUT)
        _set_medium(store, name, vdev, disk)


def cd_eject(name: str, vdev: str, store: StateStore | None = None) -> None:
    """``xl cd-eject NAME VDEV``: remove the medium (QMP eject, forced as xl does)."""
    store = store or StateStore()
    with one_at_a_time(name, store):
        record = running_domain(name, store)
        disk = _cd_disk(_cd_drive(record, vdev), "")
        qmp.execute(store.paths(name).control_socket, "eject",
                    {"device": f"disk-{vdev}", "force": True}, timeout=QMP_TIMEOUT)
        _set_medium(store, name, vdev, disk)
