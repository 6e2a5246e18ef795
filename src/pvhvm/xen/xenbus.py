"""xenbus device entries of a Plan, as data: which XenStore nodes a domain and its PV devices get.

Each PV device kind only *returns* ``(devid, backend nodes, frontend nodes)``, as xend's
DevController did; :func:`domain_entries` adds the domain's own nodes and the permissions,
and a separate step writes them all in one transaction (:mod:`pvhvm.xen.domain`).

Layout (xenstore-paths.pandoc, xen-vbd-interface(7), and libxl):

* ``/local/domain/<domid>/device/<kind>``: owned by dom0, read by the guest (so the guest
  cannot add devices of its own);
* frontend ``/local/domain/<domid>/device/<kind>/<devid>``: ``backend backend-id state
  trusted``, plus ``virtual-device device-type`` (and ``protocol`` for a PV guest) (vbd) or
  ``handle mac`` and a read-only ``mtu`` (vif);
  permissions ``n<domid>, r<backend>`` (the guest owns it, the backend reads it);
* backend ``/local/domain/<backend>/backend/<kind>/<domid>/<devid>``:
  ``frontend frontend-id online state``, plus ``params type mode dev device-type removable
  bootable discard-enable specification`` (vbd) or ``script mac bridge handle type`` (vif,
  the script as an absolute path under /etc/xen/scripts), and a vif's ``rate`` as netback
  reads it, ``bytes,usecs``;
  permissions ``n<backend>, r<domid>``.

tests/xen/test_xen_nodes.py compares these with what libxl 4.17 writes for the same configs
on a real Xen host, every remaining difference listed there with its reason.

ioemu devices get no xenbus nodes at all: that is the RFC's determinism.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

from pvhvm.config.domain import GuestType
from pvhvm.config.vif import parse_rate
from pvhvm.errors import PlanError, SpecError
from pvhvm.plan.plan import DiskPlan, Plan, VifPlan
from pvhvm.plan.types import DeviceKind

BACKEND_DOMID = 0
DEFAULT_VIF_SCRIPT = "vif-bridge"
#: where xl's relative hotplug script names live (libxl's XEN_SCRIPT_DIR)
XEN_SCRIPT_DIR = "/etc/xen/scripts"
#: the frontend's ``mtu`` when the vif gives none (libxl_nic.c: netfront reads it)
DEFAULT_MTU = 1500
#: the ring ABI libxl writes into a PV guest's vbd frontends (an x86-64 toolstack)
PV_PROTOCOL = "x86_64-abi"


class XenbusState(IntEnum):
    """xenbus device states (xen/include/public/io/xenbus.h)."""

    UNKNOWN = 0
    INITIALISING = 1
    INIT_WAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6


@dataclass(frozen=True)
class Node:
    """One XenStore node to write: path, value, and (for directories) permissions."""

    path: str
    value: str
    #: permission strings as xenstore-chmod takes them, first = owner and default
    perms: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DeviceEntry:
    """The nodes of one PV device."""

    kind: str
    devid: int
    frontend: dict[str, str]
    backend: dict[str, str]
    #: frontend nodes the guest may read but not change (owned by the backend's domain)
    frontend_readonly: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainEntries:
    """Every node a domain gets, in write order, and the subtrees that destroy removes."""

    domid: int
    nodes: tuple[Node, ...]
    #: paths whose whole subtree belongs to this domain
    owned: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, str]:
        return {node.path: node.value for node in self.nodes}


def _backend_id(backend_domain: str | None) -> int:
    if backend_domain is None:
        return BACKEND_DOMID
    if backend_domain.isdigit():
        return int(backend_domain)
    # A named driver domain: Xen resolves names to domids at create time. We have no
    # hypervisor to ask, so only dom0 and numeric ids are known here.
    raise PlanError(
        f"backend domain {backend_domain!r}: pvhvm cannot resolve domain names without a "
        "hypervisor; give the driver domain's domid (a number)"
    )


def vbd_entry(disk: DiskPlan) -> DeviceEntry:
    """The vbd nodes of one xenbus disk."""
    if disk.backendtype == "phy" or (disk.target.startswith("/dev/") and disk.script is None):
        backend_type = "phy"
    else:
        backend_type = "qdisk"
    frontend = {
        "virtual-device": str(disk.devid),
        "device-type": "cdrom" if disk.cdrom else "disk",
        "trusted": "1" if disk.trusted else "0",
    }
    backend = {
        "params": disk.target,
        "type": backend_type,
        "mode": "r" if not disk.access.writable else "w",
        "dev": disk.vdev,
        "device-type": "cdrom" if disk.cdrom else "disk",
        "removable": "1" if disk.cdrom else "0",
        "bootable": "1",
        "discard-enable": "1" if disk.discard else "0",
        "specification": "xen",
    }
    if disk.script is not None:
        backend["script"] = disk.script
    if disk.format != "raw":
        backend["params"] = f"{disk.format}:{disk.target}"
    return DeviceEntry("vbd", disk.devid, frontend, backend)


def vif_entry(vif: VifPlan) -> DeviceEntry:
    """The vif nodes of one xenbus NIC."""
    frontend = {"handle": str(vif.devid), "mac": vif.mac, "trusted": "1" if vif.trusted else "0"}
    backend = {
        "script": script_path(vif.script or DEFAULT_VIF_SCRIPT),
        "mac": vif.mac,
        "bridge": vif.bridge,
        "handle": str(vif.devid),
        "type": "vif",
    }
    for key, value in (("ip", vif.ip), ("vifname", vif.vifname),
                       ("gatewaydev", vif.gatewaydev)):
        if value is not None:
            backend[key] = value
    if vif.mtu is not None:
        backend["mtu"] = str(vif.mtu)  # libxl writes it for netback and the hotplug script
    if vif.rate is not None:
        # netback reads libxl's "bytes,usecs" (libxl_nic.c), not the rate= text
        try:
            backend["rate"] = parse_rate(vif.rate, f"vif {vif.devid}").backend_value()
        except SpecError as err:
            raise PlanError(str(err)) from err
    return DeviceEntry("vif", vif.devid, frontend, backend,
                       frontend_readonly={"mtu": str(vif.mtu or DEFAULT_MTU)})


def script_path(script: str) -> str:
    """A hotplug script as libxl writes it: a bare name is under XEN_SCRIPT_DIR."""
    return script if script.startswith("/") else f"{XEN_SCRIPT_DIR}/{script}"


def device_entries(plan: Plan) -> list[tuple[DeviceEntry, int]]:
    """(entry, backend domid) for every xenbus device of ``plan``; ioemu devices get none."""
    out: list[tuple[DeviceEntry, int]] = []
    for disk in plan.disks:
        if disk.kind is DeviceKind.XENBUS:
            out.append((vbd_entry(disk), _backend_id(disk.backend_domain)))
    for vif in plan.vifs:
        if vif.kind is DeviceKind.XENBUS:
            out.append((vif_entry(vif), _backend_id(vif.backend_domain)))
    return out


def domain_entries(plan: Plan, domid: int) -> DomainEntries:
    """Every node of the domain: its own, then each PV device's frontend and backend."""
    dom = f"/local/domain/{domid}"
    vm = f"/vm/{plan.uuid}"
    nodes: list[Node] = [
        Node(vm, "", (f"n{BACKEND_DOMID}", f"r{domid}")),
        Node(f"{vm}/uuid", plan.uuid),
        Node(f"{vm}/name", plan.name),
        Node(dom, "", (f"n{BACKEND_DOMID}", f"r{domid}")),
        Node(f"{dom}/vm", vm),
        Node(f"{dom}/name", plan.name),
        Node(f"{dom}/domid", str(domid)),
        Node(f"{dom}/memory", "", (f"n{BACKEND_DOMID}", f"r{domid}")),
        Node(f"{dom}/memory/target", str(plan.memory_mib * 1024)),
        Node(f"{dom}/device", "", (f"n{domid}",)),
        Node(f"{dom}/control", "", (f"n{domid}",)),
        Node(f"{dom}/data", "", (f"n{domid}",)),
    ]
    nodes += [
        Node(f"{dom}/cpu/{cpu}/availability", "online") for cpu in range(plan.vcpus)
    ]
    owned = [vm, dom]
    entries = device_entries(plan)
    for kind in dict.fromkeys(entry.kind for entry, _backend in entries):
        nodes.append(Node(f"{dom}/device/{kind}", "", (f"n{BACKEND_DOMID}", f"r{domid}")))
    for entry, backend_id in entries:
        if entry.kind == "vbd" and plan.guest_type is GuestType.PV:
            entry = replace(entry, frontend={**entry.frontend, "protocol": PV_PROTOCOL})
        nodes += device_nodes(entry, backend_id, domid)
        backend_dom = f"/local/domain/{backend_id}/backend/{entry.kind}/{domid}"
        if backend_dom not in owned:
            owned.append(backend_dom)
    return DomainEntries(domid=domid, nodes=tuple(nodes), owned=tuple(owned))


def device_paths(kind: str, devid: int, backend_id: int, domid: int) -> tuple[str, str]:
    """(frontend, backend) directories of one device, as libxl names them."""
    return (f"/local/domain/{domid}/device/{kind}/{devid}",
            f"/local/domain/{backend_id}/backend/{kind}/{domid}/{devid}")


def device_nodes(entry: DeviceEntry, backend_id: int, domid: int) -> list[Node]:
    """One PV device's frontend and backend nodes, state 1 (Initialising), with the
    permissions libxl gives them (frontend owned by the guest, backend by its domain)."""
    state = str(int(XenbusState.INITIALISING))
    frontend, backend = device_paths(entry.kind, entry.devid, backend_id, domid)
    nodes = [Node(frontend, "", (f"n{domid}", f"r{backend_id}"))]
    for key, value in {
        "backend": backend, "backend-id": str(backend_id), "state": state, **entry.frontend,
    }.items():
        nodes.append(Node(f"{frontend}/{key}", value))
    for key, value in entry.frontend_readonly.items():
        nodes.append(Node(f"{frontend}/{key}", value, (f"n{backend_id}", f"r{domid}")))
    nodes.append(Node(backend, "", (f"n{backend_id}", f"r{domid}")))
    for key, value in {
        "frontend": frontend, "frontend-id": str(domid), "online": "1", "state": state,
        **entry.backend,
    }.items():
        nodes.append(Node(f"{backend}/{key}", value))
    return nodes
