"""``list -l``'s ``config``: a domain as ``xl list -l`` prints it, libxl_domain_config's JSON
(libxl_types.idl of Xen 4.17: c_info, b_info, disks, nics, on_*), from what pvhvm knows.

Only fields pvhvm has a value for are written (libxl omits unset ones too); the names and
encodings are libxl's: memory in KiB, ``avail_vcpus`` a list of vCPU numbers, ``True``/
``False`` strings for libxl_defbool, 0/1 for integers used as flags. pvhvm's own record (its
plan, argv, state) stays beside it in the ``list -l`` entry, under its own names.
"""

from __future__ import annotations

from typing import Any

from pvhvm.runtime.state import DomainRecord


def _defbool(value: object) -> str:
    return "True" if value else "False"


def domain_config(record: DomainRecord) -> dict[str, Any]:
    """libxl_domain_config of ``record``'s domain, as far as pvhvm knows it."""
    plan = record.plan
    hvm = plan.get("guest_type") != "pv"
    maxmem = plan.get("maxmem") or plan.get("memory") or record.memory_mib
    boot = plan.get("boot") or {}
    b_info: dict[str, Any] = {
        "max_vcpus": plan.get("maxvcpus") or plan.get("vcpus") or record.vcpus,
        "avail_vcpus": list(range(record.vcpus)),
        "max_memkb": int(maxmem) * 1024,
        "target_memkb": record.memory_mib * 1024,
    }
    for key in ("kernel", "ramdisk", "cmdline"):
        if boot.get(key):
            b_info[key] = boot[key]
    if hvm:
        type_hvm: dict[str, Any] = {"acpi": _defbool(plan.get("acpi", True))}
        if "firmware" in boot:
            type_hvm["boot"] = boot["firmware"]
        if plan.get("bios"):
            type_hvm["bios"] = plan["bios"]
        if plan.get("serial"):
            type_hvm["serial"] = plan["serial"]
        display = plan.get("display") or {}
        if display.get("vnc"):
            type_hvm["vnc"] = {"enable": "True", "listen": display.get("listen"),
                               "display": display.get("display")}
        type_hvm["xen_platform_pci"] = _defbool(plan.get("xen_platform_pci"))
        b_info["type.hvm"] = type_hvm
    else:
        b_info["type.pv"] = {key: boot[key] for key in ("kernel", "ramdisk", "cmdline")
                             if boot.get(key)}
    disks = [
        {
            "pdev_path": disk.get("target") or "",
            "vdev": disk.get("vdev"),
            "format": disk.get("format"),
            "removable": 1 if disk.get("cdrom") else 0,
            "readwrite": 1 if str(disk.get("mode", "")).startswith("w") else 0,
            "is_cdrom": 1 if disk.get("cdrom") else 0,
            **({"script": disk["script"]} if disk.get("script") else {}),
        }
        for disk in plan.get("disks", [])
    ]
    nics = [
        {
            "devid": vif.get("devid"),
            "mac": vif.get("mac"),
            **({"bridge": vif["bridge"]} if vif.get("bridge") else {}),
            **({"model": vif["model"]} if vif.get("model") else {}),
            # libxl_nic_type: an emulated NIC is VIF_IOEMU, a PV-only one VIF
            "nictype": "vif_ioemu" if vif.get("type") == "ioemu" else "vif",
        }
        for vif in plan.get("vifs", [])
    ]
    return {
        "c_info": {"type": "hvm" if hvm else "pv", "name": record.name, "uuid": record.uuid},
        "b_info": b_info,
        "disks": disks,
        "nics": nics,
        "on_poweroff": record.on_poweroff,
        "on_reboot": record.on_reboot,
        "on_crash": record.on_crash,
    }
