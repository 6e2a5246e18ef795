"""Whole files against xl itself: Debian's xl 4.17 binary, ``xl -N create FILE``, beside pvhvm's
plan of the same file (issue 20, item 4).

``xl -N create`` prints libxl's domain config as JSON: what xl's parse_config_data built, before
libxl applies its own defaults. The hypervisor and XenStore handles are an LD_PRELOAD shim
(tests/xen/xlpeer/nohyp.c), so xl runs on this host as it is. The JSON gets libxl 4.17's
defaults here (libxl_create.c libxl__domain_build_info_setdefault, libxl_nic.c,
libxl_dm.c: which disk and NIC the device model emulates), and then every fact pvhvm's plan
decides (guest type, memory, vcpus, firmware, boot order, each disk's and NIC's fate and
parameters, display, serial ports, USB, timers, on_* actions, kernel) must be xl's, or be
listed in DIFFERENCES for that file with its reason, or be one of pvhvm's own defaults
(DEFAULT_CHOICES: display, platform device, memory) in a file that leaves that key unset. A
listed difference that no longer occurs fails too, and so does a default choice that no
file shows any more.

The corpus is tests/xen/corpus-full/: files written for this test in the shapes real ones have
(a Windows installer's, libvirt's xl writer's, xlexample.pvlinux's, users' files), and
tests/xen/corpus/ (test_xl_corpus's files, read whole here). When both refuse a file (xl at
parsing, or libxl at create for a read-only emulated IDE disk, XSA-142), they agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pvhvm.config.domain import config_from_text
from pvhvm.config.vif import parse_rate
from pvhvm.errors import PvhvmError
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.plan.types import DeviceKind
from pvhvm.plan.vdev import VdevFamily, parse_vdev
from tests.xen.conftest import XlNative
from tests.xen.test_xl_corpus import DOCUMENTED_CHOICES, keys_of

HERE = Path(__file__).parent
#: corpus-full/ is this test's; corpus/ is test_xl_corpus's, read whole here too
FILES = [f"{corpus}/{p.name}" for corpus in ("corpus-full", "corpus")
         for p in sorted((HERE / corpus).glob("*.cfg"))]

#: libxl_dm.c (qemu-xen): an HVM disk whose index is 4 or more is not emulated
XL_EMULATED_DISKS = 4
#: libxl_nic.c / libxl_dm.c defaults of an emulated NIC
XL_NIC_MODEL = "rtl8139"
XL_BRIDGE = "xenbr0"
#: libxl_create.c: max_memkb when the file gives no memory= (and target_memkb follows it)
XL_DEFAULT_MEMORY_MIB = 32

#: pvhvm's own defaults, where the file leaves the keys named unset: fact -> (keys, why).
#: Each must still occur somewhere in the corpus (test_every_default_choice_occurs).
DEFAULT_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "display": (
        ("vnc", "nographic"),
        "pvhvm opens a VNC server only when the file says vnc = 1, and a guest that asks for "
        "no graphics (vnc, sdl, spice, vga) runs headless; libxl gives every HVM guest a VNC "
        "server on 127.0.0.1 (and a cirrus card) unless vnc = 0 or nographic = 1",
    ),
    "xen_platform_pci": (
        ("xen_platform_pci",),
        "pvhvm gives the Xen platform device only when some device is PV (the RFC's "
        "determinism: with no PV path there is nothing to unplug to); libxl gives it to every "
        "HVM guest",
    ),
    "memory": (
        ("memory",),
        "pvhvm's default memory is 512 MiB, in which a guest's firmware and a modern kernel "
        "boot; libxl's is 32 MiB (libxl_create.c), too little for either",
    ),
    "maxmem": (("memory", "maxmem"), "follows memory (above)"),
}

SPICE_HOST = (
    "with no spicehost=, pvhvm's SPICE server listens on 127.0.0.1 (as its VNC default and xl's "
    "for VNC); libxl gives QEMU no address, so SPICE listens on every address (xl.cfg(5))"
)
NO_PYGRUB = (
    "pvhvm does not run a bootloader from the guest's disk on QEMU: it names the keys to set "
    "(kernel=, ramdisk=, extra=); Xen runs pygrub in dom0"
)
VIRTIO_MODEL = (
    "model=virtio-net-pci on an untyped vif: xl hands QEMU its PV NIC as an 'emulated' model; "
    "pvhvm plans it as what it is, a PV NIC (type=xenbus), and says so"
)
PVH = "type = 'pvh': a PVH guest needs the Xen hypervisor; pvhvm says so"
PV_VFB = (
    "a PV guest's vfb= (a PV framebuffer and keyboard, vfb/vkb on xenbus) has no QEMU "
    "counterpart in pvhvm's PV guests, which are consoled on the serial port"
)


def _corpus_choice(name: str) -> str:
    """test_xl_corpus's reason for a file of corpus/ (xm's Python, w!, escapes)."""
    return DOCUMENTED_CHOICES[name][1]


#: file -> {fact: why}. A fact is a key of facts() ("type", "disk 2 fate"...), or
#: "pvhvm refuses the file" / "xl refuses the file".
DIFFERENCES: dict[str, dict[str, str]] = {
    "corpus-full/hvm-vga-qxl.cfg": {"display": SPICE_HOST},
    "corpus-full/pv-pygrub.cfg": {"pvhvm refuses the file": NO_PYGRUB},
    "corpus-full/pv-vfb.cfg": {"vfbs": PV_VFB},
    "corpus-full/hvm-xl-extras.cfg": {"vif 1 fate": VIRTIO_MODEL, "vif 1 model": VIRTIO_MODEL},
    "corpus-full/pvh-direct-kernel.cfg": {"pvhvm refuses the file": PVH},
    "corpus/xl-pvh.cfg": {"pvhvm refuses the file": PVH},
    "corpus/xm-libvirt-converted.cfg": {"pvhvm refuses the file": NO_PYGRUB},
    "corpus/xm-pv-pygrub.cfg": {"pvhvm refuses the file": NO_PYGRUB},
    "corpus/xl-vif-models.cfg": {"vif 4 fate": VIRTIO_MODEL, "vif 4 model": VIRTIO_MODEL},
    "corpus/xl-numeric-escape.cfg": {"cmdline": _corpus_choice("xl-numeric-escape.cfg")},
    "corpus/xl-shared-writable.cfg": {
        "xl refuses the file": _corpus_choice("xl-shared-writable.cfg"),
    },
    "corpus/xm-hvm-no-import.cfg": {"xl refuses the file": _corpus_choice("xm-hvm-no-import.cfg")},
    "corpus/xm-python-values.cfg": {
        "xl refuses the file": _corpus_choice("xm-python-values.cfg"),
    },
    "corpus/xm-uppercase-names.cfg": {
        "xl refuses the file": _corpus_choice("xm-uppercase-names.cfg"),
    },
}


#: xl's spellings of an on_* action (xl.cfg(5)) -> libxl's enum names in the JSON
_ACTIONS = {"rename-restart": "restart_rename", "coredump-destroy": "coredump_destroy",
            "coredump-restart": "coredump_restart", "soft-reset": "soft_reset"}


def _on(value: str | None) -> str:
    """An on_* action as libxl names it; libxl's JSON leaves out destroy (the enum's first
    value), and xl sets every one of them."""
    action = value or "destroy"
    return _ACTIONS.get(action, action)


def _bool(value: Any, default: bool) -> bool:
    """libxl's defbool in JSON: "True"/"False", absent when left to the default."""
    return default if value is None else value == "True"


#: QEMU's options that make a socket port listen at once; pvhvm's socket ports always do
_LISTEN = {"server", "nowait", "server=on", "wait=off"}


def _serial(spec: str) -> str:
    """A serial port as QEMU takes it, ``server,nowait`` left out when both are there (so
    it means what pvhvm's spelling, which always listens, means)."""
    head, *options = spec.split(",")
    if {"server", "server=on"} & set(options) and {"nowait", "wait=off"} & set(options):
        options = [o for o in options if o not in _LISTEN]
    return ",".join([head, *options])


def _serials(hvm: dict[str, Any]) -> list[str]:
    if "serial_list" in hvm:
        return [_serial(spec) for spec in hvm["serial_list"]]
    return [_serial(hvm["serial"])] if hvm.get("serial") else []


def _xl_disk(disk: dict[str, Any], index: int, hvm: bool) -> dict[str, Any]:
    """One libxl_device_disk, with its fate by libxl_dm.c's rule for qemu-xen: a cdrom is
    emulated (IDE), an sd* disk as SCSI, another among the first four as IDE (each also PV);
    the rest, and any disk a driver domain serves, are PV only."""
    cdrom = disk.get("is_cdrom") == 1
    vdev = parse_vdev(disk["vdev"])
    if not hvm:
        fate = "PV"
    elif cdrom:
        fate = "IDE cdrom"
    elif disk.get("backend_domname") is not None:
        fate = "PV"  # libxl_disk.c find_local_path: no local path in a driver domain
    elif vdev.family is VdevFamily.SD:
        fate = "SCSI"
    elif vdev.family is not VdevFamily.NUMBER and vdev.disk < XL_EMULATED_DISKS:
        fate = "IDE"
    else:
        fate = "PV"
    return {
        f"disk {index} vdev": disk["vdev"],
        f"disk {index} target": disk.get("pdev_path", ""),
        f"disk {index} format": disk.get("format", "raw"),
        f"disk {index} writable": disk.get("readwrite", 0) == 1,
        f"disk {index} fate": fate,
        f"disk {index} backend": disk.get("backend_domname"),
        f"disk {index} script": disk.get("script"),
    }


def _xl_nic(nic: dict[str, Any], index: int, hvm: bool) -> dict[str, Any]:
    """One libxl_device_nic: in an HVM guest nictype defaults to vif_ioemu (emulated, PV
    path too), model to rtl8139; in a PV guest a NIC is PV."""
    nictype = nic.get("nictype", "vif_ioemu" if hvm else "vif")
    emulated = hvm and nictype == "vif_ioemu"
    rate = None
    if "rate_bytes_per_interval" in nic:
        rate = (nic["rate_bytes_per_interval"], nic["rate_interval_usecs"])
    return {
        f"vif {index} fate": "emulated" if emulated else "PV",
        f"vif {index} model": nic.get("model", XL_NIC_MODEL) if emulated else None,
        f"vif {index} mac": nic.get("mac"),
        f"vif {index} bridge": nic.get("bridge", XL_BRIDGE),
        f"vif {index} ip": nic.get("ip"),
        f"vif {index} script": nic.get("script"),
        f"vif {index} vifname": nic.get("ifname"),
        f"vif {index} rate": rate,
        f"vif {index} mtu": nic.get("mtu"),
        f"vif {index} gatewaydev": nic.get("gatewaydev"),
        f"vif {index} backend": nic.get("backend_domname"),
    }


def xl_facts(doc: dict[str, Any], has_uuid: bool) -> dict[str, Any]:
    """What xl builds, libxl's defaults applied, in the terms of facts() below."""
    c_info, b_info = doc["c_info"], doc["b_info"]
    hvm_guest = c_info["type"] == "hvm"
    max_memkb = b_info.get("max_memkb", XL_DEFAULT_MEMORY_MIB * 1024)
    vcpus = len(b_info.get("avail_vcpus", [])) or b_info.get("max_vcpus", 1)
    facts: dict[str, Any] = {
        "type": c_info["type"],
        "name": c_info["name"],
        "uuid": c_info["uuid"] if has_uuid else None,
        "memory": b_info.get("target_memkb", max_memkb) // 1024,
        "maxmem": max_memkb // 1024,
        "vcpus": vcpus,
        "maxvcpus": b_info.get("max_vcpus", vcpus),
        "on_poweroff": _on(doc.get("on_poweroff")),
        "on_reboot": _on(doc.get("on_reboot")),
        "on_crash": _on(doc.get("on_crash")),
        "localtime": _bool(b_info.get("localtime"), False),
        "rtc_timeoffset": b_info.get("rtc_timeoffset", 0),
        "kernel": b_info.get("kernel"),
        "ramdisk": b_info.get("ramdisk"),
        "cmdline": b_info.get("cmdline"),
        "device_model_version": b_info.get("device_model_version"),
        "vfbs": len(doc.get("vfbs", [])),
    }
    if hvm_guest:
        hvm = b_info["type.hvm"]
        vnc, sdl, spice = hvm.get("vnc", {}), hvm.get("sdl", {}), hvm.get("spice", {})
        nographic = _bool(hvm.get("nographic"), False)
        vnc_on = _bool(vnc.get("enable"), True) and not nographic
        display = None
        vga = hvm.get("vga", {}).get("kind", "cirrus")
        if vga != "none" and (vnc_on or _bool(sdl.get("enable"), False)
                              or _bool(spice.get("enable"), False)):
            display = {
                "vga": vga,
                "vnc": vnc_on,
                "listen": vnc.get("listen", "127.0.0.1") if vnc_on else None,
                "vncdisplay": vnc.get("display", 0) if vnc_on else None,
                "findunused": _bool(vnc.get("findunused"), True) if vnc_on else None,
                "password": vnc.get("passwd") or spice.get("passwd"),
                "keymap": hvm.get("keymap"),
                "sdl": _bool(sdl.get("enable"), False),
                "spice": ((spice.get("host"), spice.get("port"))
                          if _bool(spice.get("enable"), False) else None),
            }
        serials = _serials(hvm)
        # usbdevice = "tablet" (one string) is the deprecated single form
        usbdevices = list(hvm.get("usbdevice_list", [hvm["usbdevice"]] if "usbdevice" in hvm
                                  else []))
        facts.update({
            "firmware": hvm.get("bios", "seabios"),
            "boot": None if b_info.get("kernel") else hvm.get("boot", "cda").replace("a", ""),
            "acpi": _bool(b_info.get("acpi"), True),
            "apic": _bool(b_info.get("apic"), True),
            "pae": _bool(hvm.get("pae"), True),
            "hpet": _bool(hvm.get("hpet"), True),
            "xen_platform_pci": _bool(hvm.get("xen_platform_pci"), True),
            "display": display,
            "serial": serials[0] if serials else None,
            "more_serials": serials[1:],
            "usb": _bool(hvm.get("usb"), False) or bool(usbdevices),
            "usbdevices": usbdevices,
            "soundhw": [hvm["soundhw"]] if hvm.get("soundhw") else [],
        })
    else:
        facts["bootloader"] = b_info.get("type.pv", {}).get("bootloader")
    for index, disk in enumerate(doc.get("disks", [])):
        facts.update(_xl_disk(disk, index, hvm_guest))
    for index, nic in enumerate(doc.get("nics", [])):
        facts.update(_xl_nic(nic, index, hvm_guest))
    return facts


def _our_rate(rate: str | None) -> tuple[int, int] | None:
    if rate is None:
        return None
    parsed = parse_rate(rate)
    return parsed.bytes_per_interval, parsed.interval_usecs


def facts(plan: Plan, has_uuid: bool) -> dict[str, Any]:
    """The same facts from pvhvm's plan."""
    hvm_guest = plan.guest_type.value == "hvm"
    result: dict[str, Any] = {
        "type": plan.guest_type.value,
        "name": plan.name,
        "uuid": plan.uuid if has_uuid else None,
        "memory": plan.memory_mib,
        "maxmem": plan.boot_memory_mib,
        "vcpus": plan.vcpus,
        "maxvcpus": plan.maxvcpus or plan.vcpus,
        "on_poweroff": _on(plan.on_poweroff),
        "on_reboot": _on(plan.on_reboot),
        "on_crash": _on(plan.on_crash),
        "localtime": plan.localtime,
        "rtc_timeoffset": plan.rtc_timeoffset,
        "kernel": plan.kernel_given,
        "ramdisk": plan.ramdisk_given,
        "cmdline": plan.cmdline,
        "device_model_version": (plan.device_model_version.replace("-", "_")
                                 if plan.device_model_version else None),
        "vfbs": 0,
    }
    if hvm_guest:
        shown = plan.display
        display = None if shown is None else {
            "vga": shown.vga,
            "vnc": shown.vnc,
            "listen": shown.listen if shown.vnc else None,
            "vncdisplay": shown.display if shown.vnc else None,
            "findunused": shown.unused if shown.vnc else None,
            "password": shown.password,
            "keymap": shown.keymap,
            "sdl": plan.sdl,
            "spice": None if shown.spice is None else (shown.spice.host, shown.spice.port),
        }
        result.update({
            "firmware": plan.bios,
            "boot": None if plan.direct_kernel_boot else plan.boot,
            "acpi": plan.acpi,
            "apic": plan.apic,
            "pae": plan.pae,
            "hpet": plan.hpet,
            "xen_platform_pci": plan.xen_platform_pci,
            "display": display,
            "serial": plan.serial,
            "more_serials": list(plan.more_serials),
            "usb": plan.usb or bool(plan.usbdevices),
            "usbdevices": list(plan.usbdevices),
            "soundhw": list(plan.soundhw),
        })
    else:
        result["bootloader"] = plan.bootloader
    for index, disk in enumerate(plan.disks):
        fate = "PV"
        if disk.kind is DeviceKind.IOEMU:
            fate = "IDE cdrom" if disk.cdrom else disk.emulated_as
        result.update({
            f"disk {index} vdev": disk.vdev,
            f"disk {index} target": disk.target,
            f"disk {index} format": disk.format,
            f"disk {index} writable": disk.access.writable and not disk.cdrom,
            f"disk {index} fate": fate,
            f"disk {index} backend": disk.backend_domain,
            f"disk {index} script": disk.script,
        })
    for index, vif in enumerate(plan.vifs):
        emulated = vif.kind is DeviceKind.IOEMU
        result.update({
            f"vif {index} fate": "emulated" if emulated else "PV",
            f"vif {index} model": vif.model if emulated else None,
            f"vif {index} mac": vif.mac,
            f"vif {index} bridge": vif.bridge,
            f"vif {index} ip": vif.ip,
            f"vif {index} script": vif.script,
            f"vif {index} vifname": vif.vifname,
            f"vif {index} rate": _our_rate(vif.rate),
            f"vif {index} mtu": vif.mtu,
            f"vif {index} gatewaydev": vif.gatewaydev,
            f"vif {index} backend": vif.backend_domain,
        })
    return result


def xl_refuses_at_create(doc: dict[str, Any]) -> str | None:
    """libxl_dm.c refuses what ``xl -N`` (which stops before libxl) still prints: a read-only
    disk the device model would emulate as IDE (XSA-142: qemu-xen has no read-only IDE)."""
    if doc["c_info"]["type"] != "hvm":
        return None
    for index, disk in enumerate(doc.get("disks", [])):
        emulated = _xl_disk(disk, index, True)[f"disk {index} fate"] == "IDE"
        if emulated and disk.get("readwrite", 0) == 0 and disk.get("format") != "empty":
            return f"disk {disk['vdev']}: qemu-xen doesn't support read-only IDE disk drivers"
    return None


def compare(xl_native: XlNative, name: str) -> dict[str, tuple[Any, Any]]:
    """fact -> (xl's, pvhvm's) for every fact on which they differ."""
    path = HERE / name
    text = path.read_text()
    dry_run = xl_native.create_dry_run(path)
    doc, xl_said = dry_run.config, dry_run.stderr
    if doc is not None and xl_refuses_at_create(doc) is not None:
        doc, xl_said = None, str(xl_refuses_at_create(doc))
    try:
        config = config_from_text(text, str(path))
        plan: Plan | None = make_plan(config, Platform.QEMU, check_files=False,
                                      skip_unsupported=True)
    except PvhvmError as err:
        assert "\n" not in str(err) and str(path) in str(err), err
        plan, pvhvm_said = None, str(err)
    if doc is None and plan is None:
        return {}  # both refuse it
    if doc is None:
        return {"xl refuses the file": (xl_said, None)}
    if plan is None:
        return {"pvhvm refuses the file": (None, pvhvm_said)}
    theirs = xl_facts(doc, config.uuid is not None)
    ours = facts(plan, config.uuid is not None)
    differ = {}
    for fact in theirs.keys() | ours.keys():
        mine, xls = ours.get(fact), theirs.get(fact)
        if fact.endswith(" mac") and xls is None:
            continue  # xl leaves it to libxl's random one; pvhvm derives it from the uuid
        if mine != xls:
            differ[fact] = (xls, mine)
    return differ


def default_choices(name: str, found: dict[str, tuple[Any, Any]]) -> set[str]:
    """The facts of ``found`` that are pvhvm's own defaults (DEFAULT_CHOICES) for this file."""
    given = set(keys_of((HERE / name).read_text(), None))
    return {fact for fact, (keys, _why) in DEFAULT_CHOICES.items()
            if fact in found and not given & set(keys)}


@pytest.mark.parametrize("name", FILES)
def test_whole_file_matches_xl(xl_native: XlNative, name: str) -> None:
    found = compare(xl_native, name)
    listed = DIFFERENCES.get(name, {})
    unexplained = {fact: found[fact]
                   for fact in found.keys() - listed.keys() - default_choices(name, found)}
    assert not unexplained, f"{name}: differs from xl (fact: (xl, pvhvm)): {unexplained}"
    gone = listed.keys() - found.keys()
    assert not gone, f"{name}: listed differences no longer occur: {sorted(gone)}"


def test_every_default_choice_occurs(xl_native: XlNative) -> None:
    """Each of pvhvm's own defaults still differs from xl's in some file (else drop it)."""
    used: set[str] = set()
    for name in FILES:
        used |= default_choices(name, compare(xl_native, name))
    assert used == set(DEFAULT_CHOICES), sorted(set(DEFAULT_CHOICES) - used)


def test_every_listed_file_exists() -> None:
    assert set(DIFFERENCES) <= set(FILES)
