"""The xen platform: a domain's xenbus device nodes written to XenStore (xen/domain.py).

Nothing runs the guest on this host, so only create, destroy, list, the device listings
(read back from XenStore), the PV device attach/detach verbs (which write or remove the
xenbus nodes as xl's do) and mem-set/vcpu-set (the balloon target and vCPU availability
nodes) are on this platform; every other verb says to use xl on a Xen host.
"""

from __future__ import annotations

from typing import Any

from pvhvm.errors import DomainError, NotOnPlatformError
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.platforms.base import (
    DETACH_TIMEOUT,
    Created,
    CreateOptions,
    DeviceChange,
    DomainPlatform,
)
from pvhvm.runtime import hotplug, listing, resize
from pvhvm.runtime.listing import BlockDevice, NetworkDevice
from pvhvm.runtime.state import DomainRecord, StateStore
from pvhvm.runtime.stats import DomainSample
from pvhvm.xen import domain as xen_domain
from pvhvm.xen.xenbus import BACKEND_DOMID, vbd_entry, vif_entry


class XenPlatform(DomainPlatform):
    """XenStore entries for a Xen host (pvhvm's own xenstored, or one given by socket)."""

    name = "xen"
    plan_target = PlanTarget.XEN
    create_options = frozenset({"xenstore"})

    def __init__(self, store: StateStore | None = None) -> None:
        #: the state directory proper; xen records live in its ``xen/`` store
        self._base = store

    @property
    def records(self) -> StateStore:
        return xen_domain.xen_store(self._base)

    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        return {"xenstore": xen_domain.dry_run_nodes(plan, self._base)}

    def create(self, plan: Plan, options: CreateOptions) -> Created:
        record = xen_domain.create(plan, options.xenstore, self._base)
        return Created(record, f"written to XenStore at {record.plan['xenstore_socket']}")

    def holds(self, name: str) -> bool:
        return self.records.paths(name).directory.exists()

    def find(self, name: str) -> DomainRecord:
        record = self.records.read(name)
        if record is None:
            raise self._unknown(name)
        return record

    @staticmethod
    def _unknown(name: str) -> DomainError:
        return DomainError(f"no domain named {name!r}")

    def domains(self) -> list[DomainRecord]:
        return xen_domain.list_domains(self._base)

    def destroy(self, name: str) -> None:
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
        raise NotOnPlatformError(
            f"domain {name!r} is on the xen platform: no hypervisor runs it on this host to "
            "measure; on a Xen host use 'xl top' (xentop)", platform=self.name, verb="domstats")

    def block_devices(self, name: str) -> list[BlockDevice]:
        record = self.find(name)
        return listing.block_devices(record, xen_domain.device_drivers(record))

    def network_devices(self, name: str) -> list[NetworkDevice]:
        record = self.find(name)
        return listing.network_devices(record, xen_domain.device_drivers(record))

    # --- PV devices: their xenbus nodes, as xl's block-/network-attach write them ---------

    def block_attach(self, name: str, spec: str) -> DeviceChange:
        disk = hotplug.disk_to_attach(spec, self.find(name))
        xen_domain.attach(name, vbd_entry(disk), BACKEND_DOMID, "disks",
                          hotplug.disk_json(disk), self._base)
        return DeviceChange(f"disk {disk.vdev} (devid {disk.devid}): vbd nodes written to "
                            "XenStore (state 1, for the backend and the guest to connect)")

    def network_attach(self, name: str, spec: str = "") -> DeviceChange:
        vif = hotplug.vif_to_attach(spec, self.find(name))
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

    def block_detach(self, name: str, disk: str, force: bool = False,
                     timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        devid = self._pv_device(name, "disks", {disk}, f"disk {disk}")
        xen_domain.detach(name, "vbd", devid, "disks", force, timeout, self._base)
        return DeviceChange(f"disk {disk}: vbd nodes removed from XenStore")

    def network_detach(self, name: str, nic: str, force: bool = False,
                       timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        devid = self._pv_device(name, "vifs", {nic.lower()}, f"vif {nic}")
        xen_domain.detach(name, "vif", devid, "vifs", force, timeout, self._base)
        return DeviceChange(f"vif {nic}: vif nodes removed from XenStore")

    # --- memory target and vCPUs: the nodes xl's mem-set and vcpu-set write ------------------

    def mem_set(self, name: str, memory_kib: int) -> DeviceChange:
        record = self.find(name)
        resize.check_memory(record, memory_kib)
        xen_domain.set_nodes(name, xen_domain.memory_nodes(record, memory_kib),
                             lambda rec: resize.record_memory(rec, memory_kib), self._base)
        return DeviceChange(f"memory/target = {memory_kib} (KiB) written to XenStore, for the "
                            "guest's balloon driver")

    def vcpu_set(self, name: str, vcpus: int, ignore_host: bool = False) -> DeviceChange:
        """No guest runs on this host, so its CPU count is no limit (xl checks the Xen
        host's)."""
        record = self.find(name)
        resize.check_vcpus(record, vcpus, ignore_host=True)
        limits = resize.Limits.of(record)
        xen_domain.set_nodes(name, xen_domain.vcpu_nodes(record, vcpus, limits.max_vcpus),
                             lambda rec: resize.record_vcpus(rec, vcpus), self._base)
        return DeviceChange(f"cpu/0..{vcpus - 1}/availability = online"
                            + (f", cpu/{vcpus}..{limits.max_vcpus - 1} offline"
                               if vcpus < limits.max_vcpus else "")
                            + " written to XenStore")
