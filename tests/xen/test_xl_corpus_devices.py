"""The guest each corpus file builds, side by side with what xl would build from xl's own reading.

For every file of tests/xen/corpus/ that Xen 4.17's libxlutil reads (through tests/xen/xlpeer),
the guest type comes from xl's reading of ``type``/``builder``, and each disk's fate from xl's
reading of the disk (vdev, cdrom, format) by libxl_dm.c's rule for qemu-xen: in an HVM guest a
cdrom is emulated, a disk among the first four (disk index 0..3) is emulated and PV, any other
disk PV only; in a PV guest everything is PV. NICs in an HVM guest: xl's default type=ioemu is
emulated (and PV), type=vif/netfront PV only. On the qemu platform "emulated and PV" is realised
as emulated (no unplug). pvhvm's plan must give each device that fate, or the difference is in
DEVICE_CHOICES with its reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvhvm.config.domain import config_from_text
from pvhvm.errors import PvhvmError
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.plan.types import DeviceKind
from pvhvm.plan.vdev import parse_vdev
from tests.xen.conftest import XlParser
from tests.xen.test_xl_corpus import CORPUS, FILES, keys_of

RFC_DEFAULTS = (
    "an xm file (builder=) keeps the RFC's xend 3.0.2 defaults: xvd*/sd* disks and untyped "
    "vifs are PV; xl would emulate them"
)

#: file -> (differences, why). A difference is "pvhvm refuses the file", "disk N", "vif N".
DEVICE_CHOICES: dict[str, tuple[frozenset[str], str]] = {
    "xm-pv-pygrub.cfg": (
        frozenset({"pvhvm refuses the file"}),
        "bootloader='pygrub' with no kernel=: pvhvm does not run a bootloader from the "
        "guest's disk and says which keys to set",
    ),
    "xl-pvh.cfg": (frozenset({"pvhvm refuses the file"}), "PVH needs the Xen hypervisor"),
    "xm-libvirt-converted.cfg": (
        frozenset({"pvhvm refuses the file"}), "bootloader='/usr/bin/pygrub', as above",
    ),
    "xl-vif-models.cfg": (
        frozenset({"vif 4"}),
        "model=virtio-net-pci on an untyped vif: xl hands QEMU its PV NIC as an 'emulated' "
        "model; pvhvm plans it as what it is, a PV NIC (type=xenbus), and says so",
    ),
}


def xl_guest_is_hvm(keys: dict[str, dict[str, object]]) -> bool:
    type_ = keys.get("type", {}).get("string")
    if type_ is not None:
        return type_ == "hvm"
    return keys.get("builder", {}).get("string") == "hvm"


def xl_disk_emulated(disk: dict[str, object], hvm: bool) -> bool:
    if not hvm:
        return False
    if disk["cdrom"] == 1:
        return True
    if disk["format"] == "empty":
        return False
    vdev = parse_vdev(str(disk["vdev"]))
    return vdev.disk < 4


def xl_refuses_at_create(disk: dict[str, object], hvm: bool) -> bool:
    """libxl_dm.c: qemu-xen does not do read-only emulated IDE hard disks (XSA-142)."""
    return xl_disk_emulated(disk, hvm) and disk["cdrom"] != 1 and disk["readwrite"] == 0


def xl_vif_emulated(spec: str, hvm: bool) -> bool:
    found = re.search(r"(?:^|,)\s*type\s*=\s*([A-Za-z]+)", spec)
    return hvm and (found is None or found.group(1) == "ioemu")


def device_differences(xl: XlParser, name: str) -> set[str] | None:
    """None when xl refuses the file (test_xl_corpus covers those)."""
    path = CORPUS / name
    text = path.read_text()
    theirs = xl.file(path, [*keys_of(text, None), "type", "builder", "vif"])
    if theirs is None:
        return None
    hvm = xl_guest_is_hvm(theirs.keys)
    try:
        plan: Plan = make_plan(config_from_text(text, str(path)), Platform.QEMU,
                               check_files=False, skip_unsupported=True)
    except PvhvmError as err:
        assert "\n" not in str(err) and str(path) in str(err), err
        if any(d.get("refused") or xl_refuses_at_create(d, hvm) for d in theirs.disks):
            return set()  # xl refuses to create it too
        return {"pvhvm refuses the file"}
    found = set()
    disks = [d for d in theirs.disks if not d.get("refused")]
    if any(xl_refuses_at_create(d, hvm) for d in disks):
        found.add("xl refuses the guest at create")
    assert len(plan.disks) >= len(disks)
    # xm's cdrom= key is a disk in pvhvm's plan (after the disk= ones) that xl never reads
    for index, (item, disk) in enumerate(zip(disks, plan.disks, strict=False)):
        if xl_disk_emulated(item, hvm) != (disk.kind is DeviceKind.IOEMU):
            found.add(f"disk {index}")
    vifs = theirs.keys.get("vif", {}).get("list", [])
    assert isinstance(vifs, list)
    for index, (spec, vif) in enumerate(zip(vifs, plan.vifs, strict=True)):
        if xl_vif_emulated(str(spec), hvm) != (vif.kind is DeviceKind.IOEMU):
            found.add(f"vif {index}")
    if found and plan.dialect.value == "xm":
        return {"xm dialect: " + ", ".join(sorted(found))}
    return found


@pytest.mark.parametrize("name", FILES)
def test_devices_are_what_xl_builds(xl: XlParser, name: str) -> None:
    found = device_differences(xl, name)
    if found is None:
        pytest.skip("xl refuses this file (see test_xl_corpus)")
    expected, _why = DEVICE_CHOICES.get(name, (frozenset(), ""))
    if found and all(f.startswith("xm dialect: ") for f in found):
        return  # RFC_DEFAULTS: the product's documented xm reading
    assert found == expected, f"{name}: {sorted(found)}"


def test_rfc_defaults_are_the_only_xm_difference() -> None:
    assert "3.0.2" in RFC_DEFAULTS and Path(CORPUS).is_dir()
