"""The xen platform: on a Xen host, domains created and run by Xen's own toolstack (xl);
elsewhere, a domain's xenbus device nodes written to pvhvm's XenStore (xen/domain.py).

On a host with a hypervisor behind it (dom0: ``/dev/xen/privcmd``), ``create`` plans the config
as everywhere and hands export-xl's file to ``xl create`` (xen/xl.py): libxl builds the domain
and writes every xenbus node. Each verb is then the xl verb of the same name, on the real
domain: console, shutdown [-w], reboot, destroy, pause/unpause, the device listings and
block-/network-attach/-detach, cd-insert/-eject, mem-set, vcpu-set, each spec parsed and
checked by pvhvm first. pvhvm writes no node there: ``--xenstore`` naming a xenstored that is
not pvhvm's own is refused on such a host (nodes forged beside libxl's would describe a domid
libxl hands out).

With no hypervisor (or ``--xenstore`` naming pvhvm's own daemon) it is the RFC's model: the
nodes are written as xl's would be and nothing runs the guest, so only create, destroy, list,
the device listings, the PV attach/detach verbs and mem-set/vcpu-set act; every other verb says
to use xl on a Xen host.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pvhvm.errors import DomainError, NotOnPlatformError, XenStoreError
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.platforms.base import (
    DETACH_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    Created,
    CreateOptions,
    DeviceChange,
    DomainPlatform,
    ReportSource,
)
from pvhvm.runtime import hotplug, listing, resize
from pvhvm.runtime.lifecycle import note
from pvhvm.runtime.listing import BlockDevice, NetworkDevice
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore
from pvhvm.runtime.stats import DomainSample
from pvhvm.xen import domain as xen_domain
from pvhvm.xen import settle as xen_settle
from pvhvm.xen import xl as xen_xl
from pvhvm.xen.xenbus import BACKEND_DOMID, vbd_entry, vif_entry
from pvhvm.xen.xl import PRIVCMD, Xl, hypervisor_present, is_xl_record
from pvhvm.xen.xlcfg import disk_spec, export_xl, vif_spec
from pvhvm.xenstore.client import XenStoreClient

#: how often ``shutdown -w`` asks xl whether the domain is gone (seconds)
_POLL = 1.0


class XenPlatform(DomainPlatform):
    """Domains on a Xen host through xl, or XenStore entries for one (pvhvm's own xenstored,
    or one given by socket)."""

    name = "xen"
    plan_target = PlanTarget.XEN
    create_options = frozenset({"xenstore", "paused", "console"})

    def __init__(self, store: StateStore | None = None, xl: Xl | None = None,
                 privcmd: Sequence[Path] = PRIVCMD,
                 xenstore: Callable[[], XenStoreClient] = XenStoreClient) -> None:
        #: the state directory proper; xen records live in its ``xen/`` store
        self._base = store
        self._xl = xl or Xl()
        self._privcmd = privcmd
        #: dom0's XenStore, where a dead domain's leftover backend nodes are removed
        self._xenstore = xenstore

    @property
    def records(self) -> StateStore:
        return xen_domain.xen_store(self._base)

    def on_xen_host(self) -> bool:
        """Whether a hypervisor is behind this host (dom0), so domains are xl's."""
        return hypervisor_present(self._privcmd)

    def _through_xl(self, options: CreateOptions) -> bool:
        """xl on a Xen host; XenStore nodes elsewhere, or into pvhvm's own xenstored given by
        ``--xenstore``. A xenstored that is not pvhvm's on a Xen host is refused."""
        if not self.on_xen_host():
            if options.paused or options.console:
                what = "-p" if options.paused else "-c"
                raise NotOnPlatformError(
                    f"create {what}: no hypervisor runs this host, so the xen platform only "
                    "writes the domain's XenStore entries; nothing runs to pause or attach to",
                    platform=self.name, verb="create")
            return False
        if options.xenstore is None:
            return True
        if not xen_domain.served_by_pvhvm(options.xenstore):
            raise NotOnPlatformError(
                f"--xenstore {options.xenstore}: this is a Xen host and that xenstored is not "
                "pvhvm's own; pvhvm will not write xenbus nodes beside libxl's (they would "
                "describe a domid libxl hands out): leave out --xenstore to create the domain "
                "through xl", platform=self.name, verb="create")
        if options.paused or options.console:
            raise NotOnPlatformError(
                "create -p/-c with --xenstore: pvhvm only writes the domain's XenStore entries "
                "there; nothing runs to pause or attach to", platform=self.name, verb="create")
        return False

    def realise_warnings(self, plan: Plan, options: CreateOptions) -> list[str]:
        """On a Xen host: what export-xl notes xl cannot express as the plan says."""
        if options.dry_run or not self.on_xen_host() or options.xenstore is not None:
            return []
        return list(export_xl(plan).notes)

    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        if self.on_xen_host() and options.xenstore is None:
            return {"xl_config": export_xl(plan).text}
        return {"xenstore": xen_domain.dry_run_nodes(plan, self._base)}

    def create(self, plan: Plan, options: CreateOptions) -> Created:
        if self._through_xl(options):
            try:
                record = xen_xl.create(plan, self.records, self._xl, paused=options.paused)
            except xen_xl.XlError as err:
                # libxl destroyed the domain its failed build made; what that build's
                # hotplug scripts left (named by libxl's "Domain N:" messages) goes too
                for domid in xen_xl.domids_named(str(err)):
                    self._settle(domid)
                raise
            how = "paused" if options.paused else "running"
            return Created(record, f"created by xl ({how}; config {record.plan['xl_config']})")
        record = xen_domain.create(plan, options.xenstore, self._base)
        return Created(record, f"written to XenStore at {record.plan['xenstore_socket']}")

    def holds(self, name: str) -> bool:
        return self.records.paths(name).directory.exists()

    def find(self, name: str) -> DomainRecord:
        record = self.records.read(name)
        if record is None:
            raise self._unknown(name)
        if is_xl_record(record) and not xen_xl.reconcile(record, self._xl.find(name),
                                                          self.records):
            raise self._unknown(name)
        return record

    def _xl_record(self, name: str, verb: str) -> DomainRecord:
        """``name``'s record when xl runs it; the node-writing mode's refusal otherwise."""
        record = self.records.read(name)
        if record is None or not is_xl_record(record):
            raise self.not_here(verb, name)
        return self.find(name)

    @staticmethod
    def _unknown(name: str) -> DomainError:
        return DomainError(f"no domain named {name!r}")

    def _settle(self, domid: int, kinds: Iterable[str] | None = None,
                devid: int | None = None) -> None:
        """After libxl let go of domain ``domid`` (or of its device ``devid``): wait for its
        hotplug scripts' programs and remove the nodes they left (xen/settle.py); what it did
        is said on stderr. A dom0 whose XenStore pvhvm cannot reach is said, not fatal: the
        domain is gone either way."""
        if domid < 0:
            return
        try:
            settled = xen_settle.settle(domid, self._live_domids, kinds=kinds, devid=devid,
                                        connect=self._xenstore)
        except (XenStoreError, OSError) as err:
            note(f"could not check dom0's XenStore for what domain {domid}'s hotplug "
                  f"scripts left: {err}")
            return
        said = xen_settle.describe(settled)
        if said:
            note(f"domain {domid}: {said}")

    def _live_domids(self) -> set[int]:
        return {domain.domid for domain in self._xl.list().values()}

    def domains(self) -> list[DomainRecord]:
        records = xen_domain.list_domains(self._base)
        if not any(is_xl_record(record) for record in records):
            return records
        live = self._xl.list()
        return [record for record in records if not is_xl_record(record)
                or xen_xl.reconcile(record, live.get(record.name), self.records)]

    def cpu_seconds(self, record: DomainRecord) -> float:
        if not is_xl_record(record):
            return 0.0
        live = self._xl.find(record.name)
        return 0.0 if live is None else live.cpu_seconds

    def destroy(self, name: str) -> None:
        record = self.records.read(name)
        if record is not None and is_xl_record(record):
            live = self._xl.find(name)
            if live is not None:
                self._xl.run("destroy", name)
                self._settle(live.domid)
            self.records.release(name)
            return
        if not xen_domain.destroy(name, self._base):
            raise self._unknown(name)

    def not_here(self, verb: str, name: str) -> NotOnPlatformError:
        if verb == "report":
            message = (f"domain {name!r} is on the xen platform: no guest runs on this host "
                       "to report its devices")
        else:
            message = (
                f"domain {name!r} is on the xen platform: pvhvm wrote its XenStore entries, "
                f"but no hypervisor runs it on this host for 'pvhvm {verb}' to act on; on a "
                f"Xen host use 'xl {verb} {name}'"
            )
        return NotOnPlatformError(message, platform=self.name, verb=verb)

    def domain_stats(self, name: str) -> DomainSample:
        record = self.records.read(name)
        if record is not None and is_xl_record(record):
            raise NotOnPlatformError(
                f"domain {name!r} runs on Xen: its figures are the hypervisor's, 'xl top' "
                "(xentop) shows them", platform=self.name, verb="domstats")
        raise NotOnPlatformError(
            f"domain {name!r} is on the xen platform: no hypervisor runs it on this host to "
            "measure; on a Xen host use 'xl top' (xentop)", platform=self.name, verb="domstats")

    def report_source(self, name: str) -> ReportSource:
        """Not on Xen: the guest's console is xenconsoled's (``pvhvm console``)."""
        if is_xl_record(self.find(name)):
            raise NotOnPlatformError(
                f"domain {name!r} runs on Xen, whose console pvhvm does not log; its device "
                f"report is on its console: 'pvhvm console {name}'", platform=self.name,
                verb="report")
        raise self.not_here("report", name)

    # --- lifecycle of a domain xl runs (xl(1)) ------------------------------------------------

    def console(self, name: str) -> None:
        self._xl_record(name, "console")
        self._xl.console(name)

    def shutdown(self, name: str, wait: bool = False,
                 timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """``xl shutdown -F``: the PV control node, or the ACPI power button for a guest
        without PV drivers (as pvhvm's shutdown on QEMU); ``wait``: until the domain is gone
        (on_poweroff=destroy: xl list shows it shut down, ``s``, until xl's daemon has
        destroyed it), restarted with a new domid (restart), or shut down (preserve); then
        what its hotplug scripts left is cleaned up (:meth:`_settle`)."""
        record = self._xl_record(name, "shutdown")
        if record.domain_state is DomainState.PAUSED:
            raise DomainError(f"domain {name!r} is paused; unpause it first, or destroy it")
        self._xl.run("shutdown", "-F", name)
        if not wait:
            return
        stays = record.on_poweroff in ("preserve", "coredump-preserve")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self._xl.find(name)
            if live is None or live.domid != record.domid:
                self._settle(record.domid)
                if live is None:
                    self.records.release(name)
                else:
                    xen_xl.reconcile(record, live, self.records)
                return
            if stays and live.state is DomainState.SHUTDOWN:
                return
            time.sleep(_POLL)
        raise DomainError(f"domain {name!r} did not shut down within {timeout:g} s")

    def reboot(self, name: str) -> None:
        record = self._xl_record(name, "reboot")
        if record.domain_state is DomainState.PAUSED:
            raise DomainError(f"domain {name!r} is paused; unpause it first")
        self._xl.run("reboot", "-F", name)

    def pause(self, name: str) -> None:
        self._xl_record(name, "pause")
        self._xl.run("pause", name)
        self.find(name)

    def unpause(self, name: str) -> None:
        self._xl_record(name, "unpause")
        self._xl.run("unpause", name)
        self.find(name)

    def block_devices(self, name: str) -> list[BlockDevice]:
        record = self.find(name)
        drivers = (xen_xl.device_drivers(record, self._xl) if is_xl_record(record)
                   else xen_domain.device_drivers(record))
        return listing.block_devices(record, drivers)

    def network_devices(self, name: str) -> list[NetworkDevice]:
        record = self.find(name)
        drivers = (xen_xl.device_drivers(record, self._xl) if is_xl_record(record)
                   else xen_domain.device_drivers(record))
        return listing.network_devices(record, drivers)

    # --- PV devices: xl's block-/network-attach on a Xen host, their nodes elsewhere ---------

    def _record_device(self, name: str, section: str, device: dict[str, Any] | None,
                       devid: int | None = None) -> None:
        """Add ``device`` to (or remove ``devid`` from) the record's ``section``."""

        def change(record: DomainRecord) -> None:
            items = record.plan.setdefault(section, [])
            if device is not None:
                items.append(device)
            else:
                record.plan[section] = [d for d in items if int(d.get("devid") or 0) != devid]

        self.records.modify(name, change)

    def block_attach(self, name: str, spec: str) -> DeviceChange:
        record = self.find(name)
        disk = hotplug.disk_to_attach(spec, record)
        if is_xl_record(record):
            self._xl.run("block-attach", name, disk_spec(disk))
            self._record_device(name, "disks", hotplug.disk_json(disk))
            return DeviceChange(f"disk {disk.vdev} (devid {disk.devid}): attached by xl "
                                "(blkback and the guest's blkfront connect it)")
        xen_domain.attach(name, vbd_entry(disk), BACKEND_DOMID, "disks",
                          hotplug.disk_json(disk), self._base)
        return DeviceChange(f"disk {disk.vdev} (devid {disk.devid}): vbd nodes written to "
                            "XenStore (state 1, for the backend and the guest to connect)")

    def network_attach(self, name: str, spec: str = "") -> DeviceChange:
        record = self.find(name)
        vif = hotplug.vif_to_attach(spec, record)
        if is_xl_record(record):
            self._xl.run("network-attach", name, *vif_spec(vif).split(","))
            self._record_device(name, "vifs", hotplug.vif_json(vif))
            return DeviceChange(f"vif {vif.devid} (MAC {vif.mac}): attached by xl")
        xen_domain.attach(name, vif_entry(vif), BACKEND_DOMID, "vifs", hotplug.vif_json(vif),
                          self._base)
        return DeviceChange(f"vif {vif.devid} (MAC {vif.mac}): vif nodes written to XenStore")

    def _pv_device(self, name: str, section: str, matches: set[str], what: str) -> int:
        for device in self.find(name).plan.get(section, []):
            keys = {str(device.get("vdev")), str(device.get("devid")),
                    str(device.get("mac")).lower()}
            if keys & matches:
                if device.get("type") != "xenbus":
                    raise hotplug.HotplugError(
                        f"{what} of domain {name!r} is emulated (ioemu), which has no hotplug; "
                        "only PV devices are detached, as in xl")
                return int(device.get("devid") or 0)
        raise hotplug.HotplugError(f"domain {name!r} has no {what}")

    def _xl_detach(self, name: str, verb: str, devid: int, force: bool,
                   timeout: float) -> None:
        """``xl block-detach`` / ``network-detach`` by devid (libxl waits for the backend to
        close; ``--force``, block-detach's only, does not wait for the guest)."""
        if force and verb == "network-detach":
            raise hotplug.HotplugError("network-detach --force: xl's network-detach has no "
                                       "--force; detach without it")
        self._xl.run(verb, *(["--force"] if force else []), name, str(devid),
                     timeout=timeout + 30)

    def block_detach(self, name: str, disk: str, force: bool = False,
                     timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        record = self.find(name)
        devid = self._pv_device(name, "disks", {disk}, f"disk {disk}")
        if is_xl_record(record):
            self._xl_detach(name, "block-detach", devid, force, timeout)
            self._settle(record.domid, xen_settle.DISK_KINDS, devid)
            self._record_device(name, "disks", None, devid)
            return DeviceChange(f"disk {disk}: detached by xl")
        xen_domain.detach(name, "vbd", devid, "disks", force, timeout, self._base)
        return DeviceChange(f"disk {disk}: vbd nodes removed from XenStore")

    def network_detach(self, name: str, nic: str, force: bool = False,
                       timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        record = self.find(name)
        devid = self._pv_device(name, "vifs", {nic.lower()}, f"vif {nic}")
        if is_xl_record(record):
            self._xl_detach(name, "network-detach", devid, force, timeout)
            self._settle(record.domid, xen_settle.NIC_KINDS, devid)
            self._record_device(name, "vifs", None, devid)
            return DeviceChange(f"vif {nic}: detached by xl")
        xen_domain.detach(name, "vif", devid, "vifs", force, timeout, self._base)
        return DeviceChange(f"vif {nic}: vif nodes removed from XenStore")

    # --- CD media of an HVM domain xl runs (xl cd-insert, cd-eject) ----------------------------

    def cd_insert(self, name: str, vdev: str, target: str) -> DeviceChange:
        record = self._xl_record(name, "cd-insert")
        path = hotplug.medium_path(target)
        hotplug.cd_medium(record, vdev, path)
        self._xl.run("cd-insert", name, vdev, path)
        self._set_medium(name, vdev, path)
        return DeviceChange(f"cdrom {vdev}: {target} inserted by xl")

    def cd_eject(self, name: str, vdev: str) -> DeviceChange:
        record = self._xl_record(name, "cd-eject")
        hotplug.cd_medium(record, vdev, "")
        self._xl.run("cd-eject", name, vdev)
        self._set_medium(name, vdev, "")
        return DeviceChange(f"cdrom {vdev}: ejected by xl")

    def _set_medium(self, name: str, vdev: str, path: str) -> None:
        def change(record: DomainRecord) -> None:
            for disk in record.plan.get("disks", []):
                if disk.get("vdev") == vdev:
                    disk["target"] = path
            record.media[vdev] = path

        self.records.modify(name, change)

    # --- memory target and vCPUs: xl mem-set / vcpu-set, or the nodes they write -------------

    def mem_set(self, name: str, memory_kib: int) -> DeviceChange:
        record = self.find(name)
        resize.check_memory(record, memory_kib)
        if is_xl_record(record):
            self._xl.run("mem-set", name, f"{memory_kib}k")
            self.records.modify(name, lambda rec: resize.record_memory(rec, memory_kib))
            return DeviceChange(f"memory target {memory_kib} KiB set by xl, for the guest's "
                                "balloon driver")
        xen_domain.set_nodes(name, xen_domain.memory_nodes(record, memory_kib),
                             lambda rec: resize.record_memory(rec, memory_kib), self._base)
        return DeviceChange(f"memory/target = {memory_kib} (KiB) written to XenStore, for the "
                            "guest's balloon driver")

    def vcpu_set(self, name: str, vcpus: int, ignore_host: bool = False) -> DeviceChange:
        """Where no guest runs on this host its CPU count is no limit; on a Xen host xl
        checks the host's (``-i`` passes xl's ``--ignore-host``)."""
        record = self.find(name)
        resize.check_vcpus(record, vcpus, ignore_host=True)
        if is_xl_record(record):
            self._xl.run("vcpu-set", *(["--ignore-host"] if ignore_host else []), name,
                         str(vcpus))
            self.records.modify(name, lambda rec: resize.record_vcpus(rec, vcpus))
            return DeviceChange(f"{vcpus} vCPU(s) online, set by xl")
        limits = resize.Limits.of(record)
        xen_domain.set_nodes(name, xen_domain.vcpu_nodes(record, vcpus, limits.max_vcpus),
                             lambda rec: resize.record_vcpus(rec, vcpus), self._base)
        return DeviceChange(f"cpu/0..{vcpus - 1}/availability = online"
                            + (f", cpu/{vcpus}..{limits.max_vcpus - 1} offline"
                               if vcpus < limits.max_vcpus else "")
                            + " written to XenStore")
