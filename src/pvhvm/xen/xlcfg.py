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


def _disk(disk: DiskPlan) -> str:
    items = [f"format={disk.format}", f"vdev={disk.vdev}", f"access={disk.access.value}"]
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


def _hvm_notes(plan: Plan) -> tuple[list[str], str | None]:
    """What xl's HVM device model does differently from the plan, and the kernel command line
    that gets closest (xen_emul_unplug= of Linux's PV drivers)."""
    notes: list[str] = []
    pv_disks = [d for d in plan.disks if d.kind is DeviceKind.XENBUS]
    emu_disks = [d.vdev for d in plan.disks if d.kind is DeviceKind.IOEMU and not d.cdrom]
    pv_nics = [v for v in plan.vifs if v.kind is DeviceKind.XENBUS]
    emu_nics = [str(v.devid) for v in plan.vifs if v.kind is DeviceKind.IOEMU]
    pv_any = bool(pv_disks or pv_nics)
    if pv_any and not plan.xen_platform_pci:
        notes.append(
            "xen_platform_pci=0 as the config says: without the Xen platform device an HVM "
            "guest's PV drivers do not start, so its type=xenbus devices stay unused"
        )
    cmdline = plan.cmdline
    non_cd_disks = [d for d in plan.disks if not d.cdrom]
    emulated_too = [d.vdev for i, d in enumerate(non_cd_disks) if d.kind is DeviceKind.XENBUS
                    and (i < 4 or d.vdev.startswith("sd"))]
    if emulated_too:
        notes.append(
            f"type=xenbus disk(s) {', '.join(emulated_too)}: xl also emulates the first "
            "four disks (IDE) and sd* disks (SCSI) until the guest's PV drivers unplug them "
            "through "
            "xen_platform_pci=1, so the firmware and an early boot see them as IDE"
        )
    unplug: str | None = None
    if not pv_any:
        notes.append(
            "all devices are emulated: xen_platform_pci=0, so the guest never sees the PV "
            "backends xl still creates"
        )
    elif emu_disks and pv_disks:
        if emu_disks == ["hda"]:
            unplug = "aux-ide-disks"
            how = "through xen_emul_unplug=aux-ide-disks on the kernel command line"
            if not plan.direct_kernel_boot:
                how = "only if the guest's kernel command line has xen_emul_unplug=aux-ide-disks"
            notes.append(f"mixed disks: hda stays emulated {how}; the other disks are used "
                         "through PV drivers")
        else:
            notes.append(
                f"mixed disks: xl cannot keep {', '.join(emu_disks)} emulated while other "
                "disks are PV; the guest's PV drivers will unplug them (set Linux's "
                "xen_emul_unplug= to choose, e.g. never or aux-ide-disks)"
            )
    elif emu_disks and pv_nics:
        unplug = "nics"
        how = "xen_emul_unplug=nics on the kernel command line keeps them"
        if not plan.direct_kernel_boot:
            how = "add xen_emul_unplug=nics to the guest's kernel command line to keep them"
        notes.append(
            f"disk(s) {', '.join(emu_disks)} are emulated and only NICs are PV: Linux's PV "
            f"drivers unplug emulated disks too by default; {how}"
        )
    if pv_any and emu_nics:
        notes.append(
            f"type=ioemu vif(s) {', '.join(emu_nics)}: xl also gives each a PV path, so "
            "the guest either loses the emulated NIC (PV drivers unplug it) or, when "
            "xen_emul_unplug= does not list nics, sees it twice (emulated and netfront)"
        )
    if unplug is not None and plan.direct_kernel_boot:
        cmdline = (cmdline + " " if cmdline else "") + f"xen_emul_unplug={unplug}"
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
    if not pv_guest:
        notes, cmdline = _hvm_notes(plan)
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
        lines.append(f"    {_quote(_disk(disk))},  # pvhvm type={disk.kind.value}")
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
    return _disk(disk).replace(", ", ",")


def vif_spec(vif: VifPlan) -> str:
    """One NIC as xl-network-configuration(5) spells it (``xl network-attach`` takes it)."""
    return _vif(vif)
