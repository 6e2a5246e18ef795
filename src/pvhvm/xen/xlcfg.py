"""Export a Plan as an xl.cfg(5) file for a real Xen host.

xl has no per-disk ``type=``. With the upstream QEMU device model it emulates the first four
disks (IDE) whatever their vdev names and gives every disk a PV path too; a guest with PV
drivers then *unplugs* the emulated disks and NICs through the Xen platform PCI device
(``xen_platform_pci=1``). Linux's ``xen_emul_unplug=`` kernel option chooses what is
unplugged. So the export maps pvhvm's types like this, and writes a NOTE comment (and
returns it as a warning) wherever xl cannot say exactly what the plan says:

* all devices PV: ``xen_platform_pci=1``; xl still emulates the disks until the guest's PV
  drivers unplug them, so the guest is PV-only once its drivers load, not from the firmware on;
* all devices emulated: ``xen_platform_pci=0``; xl still offers PV backends, which a guest
  without the platform device never uses;
* mixed: ``xen_platform_pci=1`` and, when only hda is emulated, ``xen_emul_unplug=aux-ide-disks``
  on a direct-boot kernel command line (keep hda, unplug other IDE disks); other mixes
  cannot be expressed and are noted.
* NICs: ``type=vif`` (PV only) or ``type=ioemu`` with the model; pvhvm's ``hostfwd=`` (QEMU
  user networking) has no xl counterpart and is noted.

No device is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pvhvm.config.domain import GuestType
from pvhvm.config.keys import XM_ONLY
from pvhvm.plan.plan import DiskPlan, Plan, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.plan.vdev import IDE_PLACES, VdevFamily, index_to_letters, parse_vdev

#: libxl_dm.c (Xen 4.17) emulates a non-sd disk as IDE only at indices 0-3
XL_IDE_DISKS = 4
#: the IDE name of each (channel, unit) place
IDE_NAMES = {place: name for name, place in IDE_PLACES.items()}


@dataclass(frozen=True)
class XlExport:
    """An xl.cfg text and what it could not express exactly."""

    text: str
    notes: tuple[str, ...]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    """A config value in xl.cfg(5) syntax: strings quoted, numbers bare, lists in [].
    libxlutil's lexer has no minus sign (a bare ``-3600`` is a syntax error, seen with the real
    xl 4.17): a negative number is written quoted, which its number getters read alike."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value) if value >= 0 else _quote(str(value))
    if isinstance(value, list | tuple):
        return "[ " + ", ".join(_value(v) for v in value) + " ]"
    return _quote(str(value))


def _settings(plan: Plan) -> list[str]:
    """The keys pvhvm realises beyond devices and boot, in xl's spelling."""
    lines: list[str] = []
    if plan.maxmem_mib is not None:
        lines.append(f"maxmem = {plan.maxmem_mib}")
    if plan.maxvcpus is not None:
        lines.append(f"maxvcpus = {plan.maxvcpus}")
    if plan.guest_type is GuestType.PV:
        return lines + _vfb(plan)
    if plan.bios != "seabios":
        lines.append(f"bios = {_quote(plan.bios)}")
    display = plan.display
    if display is not None:
        lines.append(f"vga = {_quote('stdvga' if display.vga == 'std' else display.vga)}")
        if display.vnc:
            lines += [f"vnclisten = {_quote(display.listen)}",
                      f"vncdisplay = {display.display}",
                      f"vncunused = {1 if display.unused else 0}"]
            if display.password:
                lines.append(f"vncpasswd = {_quote(display.password)}")
            if display.keymap:
                lines.append(f"keymap = {_quote(display.keymap)}")
        if display.spice is not None:
            spice = display.spice
            lines += ["spice = 1", f"spicehost = {_quote(spice.host)}",
                      f"spiceport = {spice.port}",
                      f"spicedisable_ticketing = {1 if spice.disable_ticketing else 0}",
                      *([f"spicepasswd = {_quote(spice.password)}"] if spice.password else []),
                      f"spiceagent_mouse = {1 if spice.agent_mouse else 0}"]
    else:
        lines.append('vga = "none"')
    if plan.usb:
        lines.append("usb = 1")
    if plan.usbdevices:
        lines.append(f"usbdevice = {_value(list(plan.usbdevices))}")
    if plan.soundhw:
        lines.append(f"soundhw = {_quote(','.join(plan.soundhw))}")
    if not plan.hpet:
        lines.append("hpet = 0")
    if plan.rtc_timeoffset:
        lines.append(f"rtc_timeoffset = {_value(plan.rtc_timeoffset)}")
    if plan.parallel:
        lines.append(f"parallel = {_quote(plan.parallel)}")
    return lines


def _vfb(plan: Plan) -> list[str]:
    """A PV guest's VNC framebuffer as xl.cfg(5)'s ``vfb = [ "vnc=1,..." ]`` (an HVM guest
    says vnc= and friends instead)."""
    display = plan.display
    if display is None or not display.vnc:
        return []
    items = ["vnc=1", f"vnclisten={display.listen}", f"vncdisplay={display.display}",
             f"vncunused={1 if display.unused else 0}"]
    if display.password:
        items.append(f"vncpasswd={display.password}")
    if display.keymap:
        items.append(f"keymap={display.keymap}")
    return [f"vfb = [ {_quote(','.join(items))} ]"]


def _disk(disk: DiskPlan, vdev: str) -> str:
    items = [f"format={disk.format}", f"vdev={vdev}", f"access={disk.access.value}"]
    if disk.access.value == "w!":
        items[-1] = "access=rw"
    if disk.cdrom:
        items.append("devtype=cdrom")
    if disk.script:
        items.append(f"script={disk.script}")
    if disk.backend_domain:
        items.append(f"backend={disk.backend_domain}")
    if disk.backendtype:
        items.append(f"backendtype={disk.backendtype}")
    if disk.target:
        items.append(f"target={disk.target}")
    return ", ".join(items)


def _vif(vif: VifPlan) -> str:
    items = [f"mac={vif.mac}", f"bridge={vif.bridge}"]
    if vif.kind is DeviceKind.IOEMU:
        items += ["type=ioemu", f"model={vif.model}"]
    else:
        items.append("type=vif")
    for key in ("ip", "script", "vifname", "rate", "mtu", "gatewaydev"):
        value = getattr(vif, key)
        if value is not None:
            items.append(f"{key}={value}")
    if vif.backend_domain:
        items.append(f"backend={vif.backend_domain}")
    return ",".join(items)


def _disk_index(vdev: str) -> int | None:
    """The disk index libxl_dm.c emulates a disk by, or None when it cannot tell (a bare device
    number: libxl__device_disk_dev_number gives no index for one, so it is never emulated)."""
    parsed = parse_vdev(vdev)
    return None if parsed.family is VdevFamily.NUMBER else parsed.disk


def _emulated_by_xl(vdev: str) -> bool:
    """Whether Xen 4.17's device model emulates a (non-cdrom) disk of this name: libxl_dm.c
    passes every ``sd*`` disk as SCSI and any other disk at index 0-3 as IDE."""
    index = _disk_index(vdev)
    return index is not None and (vdev.startswith("sd") or index < XL_IDE_DISKS)


def _firmware_boot_disk(plan: Plan, disk: DiskPlan) -> bool:
    """Whether SeaBIOS must find ``disk`` on the emulated IDE controller to boot the guest
    (SeaBIOS on Xen has no PV block driver; OVMF's XenPvBlkDxe has one)."""
    return (not plan.direct_kernel_boot and plan.bios == "seabios"
            and disk.bootindex is not None)


def xl_vdevs(plan: Plan) -> dict[str, str]:
    """The vdev each disk of an HVM ``plan`` is exported under, where it differs.

    * a ``type=xenbus`` disk xl would emulate, or named hd/sd, moves to an xvd index libxl_dm.c
      does not emulate (4 or more: ``xvda`` becomes ``xvde``, ``hdb`` ``xvdf``), so it is PV
      from the firmware on and blkfront takes it whatever the guest's unplug choice; the disk
      SeaBIOS boots from stays where it is (emulated until the guest's PV drivers unplug it);
    * a ``type=ioemu`` IDE disk is written under its IDE name (``xvdb`` at hdb becomes
      ``hdb``): Linux's blkfront, told ``xen_emul_unplug=unnecessary``, leaves the PV path of
      an hd/sd vbd alone (it takes xvd ones only), so the disk stays emulated only.
    """
    if plan.guest_type is GuestType.PV:
        return {}
    taken = {_disk_index(d.vdev) for d in plan.disks if d.vdev.startswith("xvd")}
    names: dict[str, str] = {}
    for disk in plan.disks:
        if disk.cdrom:
            continue
        if disk.kind is DeviceKind.IOEMU:
            if disk.ide_place is not None and not disk.vdev.startswith("hd"):
                names[disk.vdev] = IDE_NAMES[disk.ide_place]
            continue
        if _firmware_boot_disk(plan, disk) or not (
                _emulated_by_xl(disk.vdev) or disk.vdev.startswith(("hd", "sd"))):
            continue
        parsed = parse_vdev(disk.vdev)
        index = parsed.disk + XL_IDE_DISKS
        while index in taken:
            index += 1
        taken.add(index)
        names[disk.vdev] = f"xvd{index_to_letters(index)}{parsed.partition or ''}"
    return names


def _hvm_notes(plan: Plan, vdevs: dict[str, str]) -> tuple[list[str], str | None]:
    """What the HVM guest gets from xl and its device model, where that is not exactly the
    plan, and the kernel command line that gets closest (Linux's xen_emul_unplug=,
    arch/x86/xen/platform-pci-unplug.c)."""
    notes: list[str] = []
    disks = [d for d in plan.disks if not d.cdrom]
    pv_disks = [d for d in disks if d.kind is DeviceKind.XENBUS]
    emu_disks = [d for d in disks if d.kind is DeviceKind.IOEMU]
    pv_nics = [v for v in plan.vifs if v.kind is DeviceKind.XENBUS]
    emu_nics = [str(v.devid) for v in plan.vifs if v.kind is DeviceKind.IOEMU]
    pv_any = bool(pv_disks or pv_nics)
    cmdline = plan.cmdline
    if pv_any and not plan.xen_platform_pci:
        notes.append(
            "xen_platform_pci=0 as the config says: without the Xen platform device an HVM "
            "guest's PV drivers do not start, so its type=xenbus devices stay unused"
        )
    moved = [f"{d.vdev} as {vdevs[d.vdev]}" for d in pv_disks if d.vdev in vdevs]
    if moved:
        notes.append(
            f"type=xenbus disk(s) {', '.join(moved)}: xl's device model emulates every sd* "
            "disk (SCSI) and any other disk at index 0-3 (IDE); at index 4 or more a disk is "
            "PV only from the firmware on, and the guest names it so"
        )
    kept = [d.vdev for d in pv_disks if d.vdev not in vdevs and _emulated_by_xl(d.vdev)]
    if kept:
        notes.append(
            f"type=xenbus disk(s) {', '.join(kept)}: SeaBIOS boots from it and reads only "
            "emulated disks, so xl also emulates it (IDE) until the guest's PV drivers unplug "
            "it through the Xen platform device"
        )
    renamed = [f"{d.vdev} as {vdevs[d.vdev]}" for d in emu_disks if d.vdev in vdevs]
    if renamed:
        notes.append(f"type=ioemu disk(s) {', '.join(renamed)}: its IDE name, whose PV path "
                     "Linux's blkfront leaves alone under xen_emul_unplug=unnecessary")
    if not plan.ide_controller:
        notes.append(
            "no disk is emulated as IDE, but Xen's device model (the xenfv machine) always has "
            "PIIX3's IDE function (8086:7010 at 00:01.1): the guest sees the controller with "
            "no disk on it"
        )
    if not pv_any:
        notes.append(
            "all devices are emulated: xen_platform_pci=0, so the guest never sees the PV "
            "backends xl still creates"
        )
        return notes, cmdline
    if not (emu_disks or emu_nics) or not plan.xen_platform_pci:
        return notes, cmdline
    how = ("xen_emul_unplug=unnecessary is on the kernel command line" if plan.direct_kernel_boot
           else "the guest's kernel command line needs xen_emul_unplug=unnecessary (the guest's "
                "choice: Linux's default unplugs every emulated disk and NIC)")
    notes.append(
        f"emulated and PV devices together: {how}; then nothing is unplugged, blkfront takes "
        "the xvd disks only and netfront every vif"
    )
    if emu_nics:
        notes.append(
            f"type=ioemu vif(s) {', '.join(emu_nics)}: xl gives every vif a PV backend too "
            "and no xl setting removes it, so a guest whose netfront runs sees the NIC twice "
            "(emulated and netfront, one MAC); only the guest can refuse it "
            "(xen_emul_unplug=never, which stops every PV driver)"
        )
    if plan.direct_kernel_boot:
        cmdline = (cmdline + " " if cmdline else "") + "xen_emul_unplug=unnecessary"
    return notes, cmdline


def _passthrough(plan: Plan, notes: list[str]) -> list[str]:
    lines = []
    dropped = []
    for key, value in plan.xl_passthrough:
        if key in XM_ONLY:
            dropped.append(key)
        else:
            lines.append(f"{key} = {_value(value)}")
    if dropped:
        notes.append(f"xm-only key(s) {', '.join(dropped)} have no xl spelling and are left out")
    return lines


def export_xl(plan: Plan) -> XlExport:
    """The xl.cfg for ``plan`` and its notes."""
    notes: list[str] = []
    pv_guest = plan.guest_type is GuestType.PV
    cmdline = plan.cmdline
    vdevs = xl_vdevs(plan)
    if not pv_guest:
        notes, cmdline = _hvm_notes(plan, vdevs)
    shared = [d.vdev for d in plan.disks if d.access.value == "w!"]
    if shared:
        notes.append(
            f"disk(s) {', '.join(shared)} are w! (shared writable); xl has no such mode, so "
            "they are exported as access=rw and xl will not check the sharing"
        )

    lines = [
        "# xl.cfg exported by pvhvm: every device keeps its type (see the NOTE lines)",
        f"type = {_quote(plan.guest_type.value)}",
        f"name = {_quote(plan.name)}",
        f"uuid = {_quote(plan.uuid)}",
        f"memory = {plan.memory_mib}",
        f"vcpus = {plan.vcpus}",
    ]
    if plan.kernel:
        # as the file wrote them: xl reads a relative path against where it runs, as pvhvm did
        lines.append(f"kernel = {_quote(plan.kernel_given or plan.kernel)}")
        if plan.ramdisk:
            lines.append(f"ramdisk = {_quote(plan.ramdisk_given or plan.ramdisk)}")
        if cmdline:
            lines.append(f"cmdline = {_quote(cmdline)}")
    elif pv_guest and plan.bootloader:
        lines.append(f"bootloader = {_quote(plan.bootloader)}")
        if cmdline:
            lines.append(f"cmdline = {_quote(cmdline)}")
    elif not pv_guest:
        lines.append(f"boot = {_quote(plan.boot)}")
    if not pv_guest:
        lines.append(f"xen_platform_pci = {1 if plan.xen_platform_pci else 0}")
        lines.append(f"device_model_version = {_quote(plan.device_model_version or 'qemu-xen')}")
        for key in ("acpi", "apic", "pae", "localtime"):
            lines.append(f"{key} = {1 if getattr(plan, key) else 0}")
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        lines.append(f"{key} = {_quote(getattr(plan, key))}")
    if not pv_guest:
        if plan.more_serials:
            lines.append(f"serial = {_value([plan.serial or 'pty', *plan.more_serials])}")
        else:
            lines.append(f"serial = {_quote(plan.serial or 'pty')}")
        lines.append(f"vnc = {1 if plan.vnc else 0}")
        lines.append(f"sdl = {1 if plan.sdl else 0}")
    lines += _settings(plan)
    lines.append("disk = [")
    for disk in plan.disks:
        vdev = vdevs.get(disk.vdev, disk.vdev)
        origin = "" if vdev == disk.vdev else f" vdev={disk.vdev}"
        lines.append(f"    {_quote(_disk(disk, vdev))},  # pvhvm type={disk.kind.value}{origin}")
    lines.append("]")
    lines.append("vif = [")
    for vif in plan.vifs:
        lines.append(f"    {_quote(_vif(vif))},  # pvhvm type={vif.kind.value}")
    lines.append("]")
    for vif in plan.vifs:
        if vif.hostfwd:
            forwards = ", ".join(f"hostfwd={f}" for f in vif.hostfwd)
            notes.append(f"vif {vif.devid}: {forwards} left out: a port forward of QEMU user "
                         "networking, and xl puts every vif on a bridge (reach the guest at "
                         "its address there, or forward the port in dom0)")
    lines += _passthrough(plan, notes)
    if notes:
        lines.append("")
        lines += [f"# NOTE: {note}" for note in notes]
    return XlExport(text="\n".join(lines) + "\n", notes=tuple(notes))


def disk_spec(disk: DiskPlan) -> str:
    """One disk as xl-disk-configuration(5) spells it (``xl block-attach`` takes it)."""
    return _disk(disk, disk.vdev).replace(", ", ",")


def vif_spec(vif: VifPlan) -> str:
    """One NIC as xl-network-configuration(5) spells it (``xl network-attach`` takes it)."""
    return _vif(vif)
