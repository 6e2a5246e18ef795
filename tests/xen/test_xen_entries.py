"""xenbus device entries and the xl.cfg export (pure: no XenStore, no files)."""

from __future__ import annotations

import pytest

from pvhvm.config.domain import Dialect, config_from_text
from pvhvm.errors import PlanError
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.xen.xenbus import XenbusState, domain_entries
from pvhvm.xen.xlcfg import export_xl


def plan_of(text: str) -> Plan:
    """These configs are written with the RFC's defaults (an untyped vif, xvd and sd disks
    PV), so they are read as xend 3.0.2 (issue 20: xl or xm would emulate them)."""
    return make_plan(config_from_text('name="g"; builder="hvm"\n' + text, "g.cfg", None,
                                      Dialect.XEND_302), Platform.XEN, check_files=False)


def test_only_xenbus_devices_get_nodes() -> None:
    plan = plan_of('disk=["/a,raw,hda,rw", "/b,raw,xvdb,rw", ",hdc:cdrom,r"]\n'
                   'vif=["type=ioemu,mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:02"]')
    nodes = domain_entries(plan, 7).as_dict()
    devices = sorted({p.split("/")[5] + "/" + p.split("/")[6] for p in nodes
                      if p.startswith("/local/domain/7/device/") and p.count("/") >= 6})
    assert devices == ["vbd/51728", "vif/1"]
    assert not any("/768" in p or "/5632" in p or "vif/0" in p for p in nodes)


def test_vbd_nodes_and_permissions() -> None:
    plan = plan_of('disk=["phy:/dev/vg/lv,xvda,r"]')
    entries = domain_entries(plan, 3)
    nodes = entries.as_dict()
    front, back = "/local/domain/3/device/vbd/51712", "/local/domain/0/backend/vbd/3/51712"
    assert nodes[f"{front}/backend"] == back and nodes[f"{front}/backend-id"] == "0"
    assert nodes[f"{front}/state"] == str(int(XenbusState.INITIALISING)) == "1"
    assert nodes[f"{front}/virtual-device"] == "51712"
    assert nodes[f"{front}/device-type"] == "disk"
    assert {k.rsplit("/", 1)[1]: v for k, v in nodes.items() if k.startswith(back + "/")} == {
        "frontend": front, "frontend-id": "3", "online": "1", "state": "1",
        "params": "/dev/vg/lv", "type": "phy", "mode": "r", "dev": "xvda",
        "device-type": "disk", "removable": "0", "bootable": "1", "discard-enable": "1",
        "specification": "xen",
    }
    assert nodes[f"{front}/trusted"] == "1"
    assert f"{front}/protocol" not in nodes  # an HVM guest: libxl writes it for PV guests only
    perms = {n.path: n.perms for n in entries.nodes if n.perms}
    assert perms[front] == ("n3", "r0") and perms[back] == ("n0", "r3")
    # the guest may read device/vbd but not add devices to it (libxl's permissions)
    assert perms["/local/domain/3/device/vbd"] == ("n0", "r3")
    assert nodes["/local/domain/3/name"] == "g"
    assert nodes["/local/domain/3/memory/target"] == str(512 * 1024)


def test_vif_nodes() -> None:
    plan = plan_of('vif=["mac=00:16:3e:00:00:09,bridge=br1,script=vif-nat,ip=10.0.0.2"]')
    nodes = domain_entries(plan, 2).as_dict()
    back = "/local/domain/0/backend/vif/2/0"
    assert nodes["/local/domain/2/device/vif/0/mac"] == "00:16:3e:00:00:09"
    assert nodes["/local/domain/2/device/vif/0/handle"] == "0"
    assert (nodes[f"{back}/bridge"], nodes[f"{back}/script"], nodes[f"{back}/ip"]) == (
        "br1", "/etc/xen/scripts/vif-nat", "10.0.0.2")
    assert nodes["/local/domain/2/device/vif/0/trusted"] == "1"


def test_frontend_mtu_is_read_only_and_untrusted_is_said() -> None:
    plan = plan_of('vif=["mac=00:16:3e:00:00:09,mtu=9000,untrusted"]\n'
                   'disk=["/b,raw,xvda,rw,untrusted,no-discard"]')
    entries = domain_entries(plan, 4)
    nodes = entries.as_dict()
    perms = {n.path: n.perms for n in entries.nodes if n.perms}
    front = "/local/domain/4/device/vif/0"
    assert nodes[f"{front}/mtu"] == "9000" and perms[f"{front}/mtu"] == ("n0", "r4")
    assert nodes[f"{front}/trusted"] == "0"
    assert nodes["/local/domain/4/device/vbd/51712/trusted"] == "0"
    assert nodes["/local/domain/0/backend/vbd/4/51712/discard-enable"] == "0"
    assert domain_entries(plan_of('vif=[""]'), 4).as_dict()[f"{front}/mtu"] == "1500"


def test_pv_guest_vbd_frontend_names_its_ring_protocol() -> None:
    plan = make_plan(config_from_text('name="g"\nkernel="/k"\ndisk=["/b,raw,xvda,rw"]\n',
                                      "g.cfg", None, Dialect.XL), Platform.XEN,
                     check_files=False)
    nodes = domain_entries(plan, 5).as_dict()
    assert nodes["/local/domain/5/device/vbd/51712/protocol"] == "x86_64-abi"


def test_driver_domain_backend() -> None:
    plan = plan_of('disk=["/b,raw,xvda,rw,backend=5"]')
    nodes = domain_entries(plan, 2).as_dict()
    assert nodes["/local/domain/2/device/vbd/51712/backend-id"] == "5"
    assert "/local/domain/5/backend/vbd/2/51712/params" in nodes
    with pytest.raises(PlanError, match="give the driver domain's domid"):
        domain_entries(plan_of('disk=["/b,raw,xvda,rw,backend=dd"]'), 2)


def _devices_in(text: str, key: str) -> list[str]:
    block = text.split(f"{key} = [\n", 1)[1].split("]\n", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_export_pv_only() -> None:
    exported = export_xl(plan_of('disk=["/a,raw,xvda,rw"]\nvif=[""]'))
    assert "xen_platform_pci = 1" in exported.text
    assert 'type = "hvm"' in exported.text
    assert "type=vif" in exported.text
    assert any("xvda" in n and "unplug" in n for n in exported.notes)


def test_export_all_emulated() -> None:
    exported = export_xl(plan_of('disk=["/a,raw,hda,rw"]\nvif=["type=ioemu,model=e1000"]'))
    assert "xen_platform_pci = 0" in exported.text
    assert "type=ioemu,model=e1000" in exported.text
    assert any("all devices are emulated" in n for n in exported.notes)


def test_export_mixed_keeps_every_device_and_notes() -> None:
    plan = plan_of('kernel="/k"\nextra="quiet"\n'
                   'disk=["/a,raw,hda,rw", "/b,raw,xvdb,rw", ",hdc:cdrom,r"]\n'
                   'vif=["type=ioemu", ""]')
    exported = export_xl(plan)
    assert len(_devices_in(exported.text, "disk")) == 3
    assert len(_devices_in(exported.text, "vif")) == 2
    assert 'cmdline = "quiet xen_emul_unplug=unnecessary"' in exported.text
    assert "vdev=xvdf, access=w, target=/b" in exported.text  # xvdb: no longer emulated
    assert "devtype=cdrom" in exported.text
    assert all(f"# NOTE: {n}" in exported.text for n in exported.notes)
    # any number of emulated disks stays emulated beside PV ones (tests/xen/test_xen_hvm.py)
    two_emulated = export_xl(plan_of('disk=["/a,raw,hda,rw", "/c,raw,hdb,rw", "/b,raw,xvdc,rw"]'))
    assert "vdev=hdb" in two_emulated.text and "vdev=xvdg" in two_emulated.text
    assert any("xen_emul_unplug=unnecessary" in n for n in two_emulated.notes)
