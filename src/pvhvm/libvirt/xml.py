"""A Plan as libvirt domain XML (https://libvirt.org/formatdomain.html), a pure function.

The mapping keeps each device's type, as the qemu platform does (SPEC.md "Platforms"):

* ioemu disks and cdroms: ``bus='ide'`` at their hda-hdd place (drive address controller 0,
  bus = channel, unit) on machine ``pc`` (i440fx always has PIIX3 IDE);
* emulated sd* disks: ``bus='scsi'`` named as in the config, on one
  ``<controller type='scsi' model='lsilogic'>`` (QEMU's lsi53c895a, as pvhvm's own QEMU gives
  them) at unit = the disk's index (its SCSI id);
* xenbus disks: ``bus='virtio'`` (virtio-blk-pci), named vda, vdb... in plan order, with the
  pvhvm vdev kept as the user alias ``ua-disk-<vdev>``;
* NICs: ``<model type='rtl8139|e1000|ne2k_pci|virtio'/>`` with the MAC the plan derived, on
  the plan's bridge; no option ROM unless firmware boots from the NIC (as pvhvm's QEMU);
* boot: per-device ``<boot order='N'/>`` (N = the plan's bootindex + 1), or direct kernel
  boot (``<kernel> <initrd> <cmdline>``);
* no USB controller (``model='none'``): pvhvm's QEMU has none (-nodefaults);
* memory as on pvhvm's QEMU: the guest boots with its static maximum (``<memory>``: maxmem,
  else memory) and a virtio balloon holds it at ``<currentMemory>`` (memory), which mem-set
  moves (``virDomainSetMemoryFlags``, as the qemu platform's QMP ``balloon``);
* q35's hotplug slots: ``hotplug_slots`` empty pcie-root-ports (aliases ``ua-hotplugN``), and
  every PCI device given at create on the root bus (pcie.0, explicit slots), as pvhvm's QEMU
  puts them; else libvirt would fill the empty ports with them and leave none for hotplug.

The ``<disk>`` and ``<interface>`` elements are written by one function each, which the
libvirt platform's block-attach, network-attach and cd-insert/-eject also use.

A plan with no emulated disk gets q35. libvirt then still adds q35's integrated SATA (class
0x0106) and SMBus functions: libvirt 9.0 has no supported way to drop them (only
``<qemu:commandline>`` with ``-machine sata=off``, which libvirt calls unsupported), so the
export says so in a note rather than differing silently. Every other difference is a note too.
"""

from __future__ import annotations

import copy
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from pvhvm.config.values import ChardevKind, parse_chardev
from pvhvm.errors import PlanError
from pvhvm.plan.plan import OVMF_PATH, DiskPlan, Display, Plan, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.plan.vdev import IDE_PLACES

#: xl ``format=`` → libvirt disk driver type
LIBVIRT_FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "qed": "qed"}
IDE_MACHINE = "pc"
NO_IDE_MACHINE = "q35"
#: on_poweroff / on_reboot values libvirt accepts (domaincommon.rng offOptions)
OFF_ACTIONS = ("destroy", "restart", "preserve", "rename-restart")
VIRT_TYPES = ("kvm", "qemu")
#: q35 root-bus slots libvirt keeps for itself: host bridge 0, primary video 1, ICH9 0x1f
Q35_RESERVED_SLOTS = frozenset({0, 1, 0x1F})
#: user alias of the n-th (1-based) empty hotplug pcie-root-port
HOTPLUG_PORT_ALIAS = "ua-hotplug{}"


@dataclass(frozen=True)
class LibvirtExport:
    """A domain XML document and what it could not express exactly."""

    xml: str
    notes: tuple[str, ...]
    machine: str


#: libvirt's name of pvhvm's emulated SCSI controller, QEMU's lsi53c895a (libvirt's QEMU
#: driver makes model='lsilogic' an ``lsi`` device, the same controller)
SCSI_MODEL = "lsilogic"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _disk_letters(index: int) -> str:
    """0 → a, 25 → z, 26 → aa: the suffix of the index-th disk name (vda, vdb, ...)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def disk_element(disk: DiskPlan, target_dev: str, notes: list[str] | None = None
                 ) -> ET.Element:
    """The ``<disk>`` of ``disk``, named ``target_dev`` in libvirt (hda-hdd, vda...): for
    create, block-attach and a CD drive's media change (an empty drive has no source)."""
    if disk.script is not None:
        raise PlanError(
            f"disk {disk.vdev!r}: script-backed targets ({disk.script}) need Xen's hotplug "
            "scripts; libvirt's QEMU can use files and block devices only"
        )
    block = disk.target.startswith("/dev/")
    element = ET.Element("disk", type="block" if block else "file",
                         device="cdrom" if disk.cdrom else "disk")
    _sub(element, "driver", name="qemu",
         type="raw" if disk.is_empty else LIBVIRT_FORMATS[disk.format])
    if not disk.is_empty:
        _sub(element, "source", **({"dev": disk.target} if block else {"file": disk.target}))
    _sub(element, "target", dev=target_dev,
         bus="virtio" if disk.kind is not DeviceKind.IOEMU
         else "scsi" if disk.scsi_unit is not None else "ide")
    if disk.cdrom or not disk.access.writable:
        _sub(element, "readonly")
    if disk.access.value == "w!":
        _sub(element, "shareable")
    if disk.bootindex is not None:
        _sub(element, "boot", order=str(disk.bootindex + 1))
    _sub(element, "alias", name=f"ua-disk-{disk.vdev}")
    if disk.scsi_unit is not None:  # lsilogic: libvirt makes the unit QEMU's scsi-id
        _sub(element, "address", type="drive", controller="0", bus="0", target="0",
             unit=str(disk.scsi_unit))
    elif disk.ide_place is not None:
        channel, unit = disk.ide_place
        _sub(element, "address", type="drive", controller="0", bus=str(channel),
             target="0", unit=str(unit))
    if disk.backend_domain and notes is not None:
        notes.append(f"disk {disk.vdev!r}: backend={disk.backend_domain} (a driver domain) "
                     "has no libvirt form; the host's QEMU serves the disk")
    return element


def ide_target(disk: DiskPlan) -> str:
    """libvirt's name of an emulated disk's IDE place (an xl file's emulated xvdc is the
    drive at hdc)."""
    assert disk.ide_place is not None
    return list(IDE_PLACES)[list(IDE_PLACES.values()).index(disk.ide_place)]


def free_virtio_target(taken: set[str]) -> str:
    """The first of vda, vdb, ... not in ``taken`` (the targets a live domain has)."""
    return next(f"vd{_disk_letters(n)}" for n in itertools.count()
                if f"vd{_disk_letters(n)}" not in taken)


def _disk(devices: ET.Element, disk: DiskPlan, pv_index: int, notes: list[str],
          slots: Iterator[str] | None) -> None:
    target = (disk.vdev if disk.scsi_unit is not None
              else ide_target(disk) if disk.kind is DeviceKind.IOEMU
              else f"vd{_disk_letters(pv_index)}")
    element = disk_element(disk, target, notes)
    if disk.kind is not DeviceKind.IOEMU and slots is not None:
        _root_bus_address(element, next(slots))
    devices.append(element)


def _root_bus_address(element: ET.Element, slot: str) -> None:
    _sub(element, "address", type="pci", domain="0x0000", bus="0x00", slot=slot,
         function="0x0")


def _root_bus_slots() -> Iterator[str]:
    """Free q35 root-bus slots for the devices given at create, in order."""
    for slot in range(2, 0x1F):
        if slot not in Q35_RESERVED_SLOTS:
            yield f"0x{slot:02x}"
    raise PlanError("the domain has more PCI devices than q35's root bus has slots (28)")


def interface_element(vif: VifPlan, user: bool, notes: list[str] | None = None
                      ) -> ET.Element:
    """The ``<interface>`` of ``vif`` (user networking when ``user``): for create and for
    network-attach, with the MAC the plan derived."""
    element = ET.Element("interface", type="user" if user else "bridge")
    _sub(element, "mac", address=vif.mac)
    if not user:
        _sub(element, "source", bridge=vif.bridge)
    model = "virtio" if vif.kind is DeviceKind.XENBUS else vif.model
    assert model is not None
    _sub(element, "model", type=model)
    if vif.bootindex is not None:
        _sub(element, "boot", order=str(vif.bootindex + 1))
    else:  # no iPXE option ROM unless the firmware boots from this NIC (as on pvhvm's QEMU)
        _sub(element, "rom", enabled="no")
    if vif.mtu is not None:
        _sub(element, "mtu", size=str(vif.mtu))
    _sub(element, "alias", name=f"ua-vif-{vif.devid}")
    unexpressed = [f"{key}={getattr(vif, key)}" for key in ("ip", "script", "vifname", "rate")
                   if getattr(vif, key) is not None]
    if vif.backend_domain:
        unexpressed.append(f"backend={vif.backend_domain}")
    if unexpressed and notes is not None:
        notes.append(f"vif {vif.devid}: {', '.join(unexpressed)} not exported (xl settings "
                     "with no counterpart here; libvirt's own bridge setup applies)")
    if vif.hostfwd and notes is not None:
        notes.append(hostfwd_note(vif))
    return element


def hostfwd_note(vif: VifPlan) -> str:
    """Why a vif's hostfwd= is not in the XML: libvirt 9.0 (Debian 12's) reads
    ``<portForward>`` but realises it only with the passt backend, which that build refuses
    ("Invalid value for attribute 'type' in element 'backend': 'passt'"); on a SLIRP
    ``<interface type='user'>`` it keeps the element and starts QEMU with no forward (seen
    here: ``-netdev {"type":"user"}``). So writing it would say a forward that is not there."""
    forwards = ", ".join(f"hostfwd={f}" for f in vif.hostfwd)
    return (f"vif {vif.devid}: {forwards} not exported: libvirt 9.0 realises <portForward> "
            "only with the passt backend, which Debian 12's libvirt refuses, and ignores it "
            "on a SLIRP user interface; forward the port on the host instead, or run the "
            "domain on the qemu platform")


def device_text(element: ET.Element) -> str:
    """One device element as the XML text libvirt's device calls take."""
    return ET.tostring(element, encoding="unicode")


def _serial(devices: ET.Element, spec: str | None, log: str | None) -> None:
    """xl's ``serial=`` (pty, file:PATH, unix:PATH, tcp:HOST:PORT, none) as a serial port
    with the console on it; no serial= gives a pty, which ``virsh console`` attaches to.
    ``log``: a file that also gets the output (not with file:, which is one already)."""
    if spec == "none":
        return
    serial = _chardev_element(devices, "serial", spec or "pty")
    if log is not None and serial.get("type") != "file":
        # append: a migration's destination QEMU opens the log again and would truncate it
        _sub(serial, "log", file=log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type=serial.get("type", "pty"))
    for child in serial:
        if child.tag not in ("target", "log"):  # the console is the same port: same source
            console.append(copy.deepcopy(child))
    _sub(console, "target", type="serial", port="0")


def _clock(domain: ET.Element, plan: Plan) -> None:
    """localtime, rtc_timeoffset (seconds) and hpet=0."""
    basis = "localtime" if plan.localtime else "utc"
    if plan.rtc_timeoffset:
        clock = _sub(domain, "clock", offset="variable", adjustment=str(plan.rtc_timeoffset),
                     basis=basis)
    else:
        clock = _sub(domain, "clock", offset=basis)
    if not plan.hpet:
        _sub(clock, "timer", name="hpet", present="no")


def _usb(devices: ET.Element, plan: Plan, machine: str, slots: Iterator[str] | None) -> None:
    """usb=1 / usbdevice=: a USB controller (pvhvm's QEMU: -usb) and the input devices; none
    otherwise (libvirt would add one)."""
    if not plan.usb and not plan.usbdevices:
        _sub(devices, "controller", type="usb", model="none")
        return
    model = "piix3-uhci" if machine == IDE_MACHINE else "qemu-xhci"
    controller = _sub(devices, "controller", type="usb", index="0", model=model)
    if slots is not None:
        _root_bus_address(controller, next(slots))
    for device in plan.usbdevices:
        _sub(devices, "input", type=device, bus="usb")


_VIDEO = {"std": "vga", "cirrus": "cirrus", "qxl": "qxl"}


def _display(devices: ET.Element, display: Display) -> None:
    if display.vnc:
        attributes = {"type": "vnc", "listen": display.listen}
        if display.unused:
            attributes["autoport"] = "yes"
        else:
            attributes["port"] = str(5900 + display.display)
        if display.password:
            attributes["passwd"] = display.password
        if display.keymap:
            attributes["keymap"] = display.keymap
        _sub(devices, "graphics", **attributes)
    if display.spice is not None and display.spice.port is not None:
        # no passwd: libvirt runs QEMU's SPICE server with disable-ticketing, as spice = 1 with
        # spicedisable_ticketing = 1 says
        _sub(devices, "graphics", type="spice", port=str(display.spice.port), autoport="no",
             listen=display.spice.host)
    video = _sub(devices, "video")
    _sub(video, "model", type=_VIDEO[display.vga])


_SOUND = {"hda": "ich6", "ac97": "ac97", "sb16": "sb16", "es1370": "es1370"}


def _sound(devices: ET.Element, plan: Plan, slots: Iterator[str] | None) -> None:
    """soundhw=: the cards, with no host audio behind them (as pvhvm's -audiodev none)."""
    if not plan.soundhw:
        return
    for card in plan.soundhw:
        sound = _sub(devices, "sound", model=_SOUND[card])
        _sub(sound, "audio", id="1")
        if slots is not None and card != "sb16":  # sb16 is an ISA card
            _root_bus_address(sound, next(slots))
    _sub(devices, "audio", id="1", type="none")


def _port(devices: ET.Element, kind: str, spec: str, port: int) -> None:
    """A serial port after the console, or the parallel port."""
    if spec == "none":
        return
    element = _chardev_element(devices, kind, spec)
    _sub(element, "target", port=str(port))


def _chardev_element(devices: ET.Element, kind: str, spec: str) -> ET.Element:
    """A ``<serial>``/``<parallel>`` for a planned port (config.values.parse_chardev's
    forms): pty, file:PATH (appended to: pvhvm never truncates what a port writes, issue
    18), unix:PATH, tcp:/telnet:HOST:PORT (listening, as on pvhvm's QEMU), null."""
    chardev = parse_chardev(spec, kind)
    if chardev.kind in (ChardevKind.PTY, ChardevKind.NULL):
        return _sub(devices, kind, type=chardev.kind.value)
    if chardev.kind is ChardevKind.FILE:
        element = _sub(devices, kind, type="file")
        _sub(element, "source", path=chardev.path or "", append="on")
        return element
    if chardev.kind is ChardevKind.UNIX:
        element = _sub(devices, kind, type="unix")
        _sub(element, "source", mode="bind", path=chardev.path or "")
        return element
    if chardev.kind in (ChardevKind.TCP, ChardevKind.TELNET):
        element = _sub(devices, kind, type="tcp")
        _sub(element, "source", mode="bind", host=chardev.host or "127.0.0.1",
             service=str(chardev.port))
        _sub(element, "protocol", type="telnet" if chardev.kind is ChardevKind.TELNET
             else "raw")
        return element
    raise PlanError(f"{kind} = {spec!r} is not supported on libvirt (use pty, null, "
                    "file:PATH, unix:PATH, tcp:HOST:PORT or telnet:HOST:PORT)")


def _action(key: str, value: str, notes: list[str]) -> str:
    if key == "on_crash" or value in OFF_ACTIONS:
        return value
    kept = value.removeprefix("coredump-")
    notes.append(f"{key}={value}: libvirt dumps core on a crash only; exported as {kept}")
    return kept


def _hotplug_ports(devices: ET.Element, plan: Plan) -> Iterator[str]:
    """q35: the root complex and ``hotplug_slots`` empty pcie-root-ports (the slots
    block-/network-attach plug into); the root-bus slots left for the devices given at
    create."""
    _sub(devices, "controller", type="pci", index="0", model="pcie-root")
    for n in range(1, plan.hotplug_slots + 1):
        port = _sub(devices, "controller", type="pci", index=str(n), model="pcie-root-port")
        _sub(port, "alias", name=HOTPLUG_PORT_ALIAS.format(n))
    return _root_bus_slots()


def _comment_text(note: str) -> str:
    """A note as XML comment text ("--" may not appear inside a comment)."""
    while "--" in note:
        note = note.replace("--", "- -")
    return f" NOTE: {note} "


def domain_xml(
    plan: Plan, virt_type: str = "kvm", *, console_log: str | None = None,
    user_networking: frozenset[int] = frozenset(),
) -> LibvirtExport:
    """The libvirt domain XML for ``plan`` and its notes.

    ``virt_type``: ``kvm``, or ``qemu`` for TCG (where KVM is not proven, as on these test
    machines). For running the domain (``--platform libvirt``): ``console_log`` also logs the
    serial console to that file (appending: the caller starts it empty); the vifs in
    ``user_networking`` (devids) use QEMU user networking instead of their bridge, which that
    host lacks.
    """
    if virt_type not in VIRT_TYPES:
        raise PlanError(f"virt type {virt_type!r} is not one of {', '.join(VIRT_TYPES)}")
    notes: list[str] = []
    machine = IDE_MACHINE if plan.ide_controller else NO_IDE_MACHINE
    if machine == NO_IDE_MACHINE:
        notes.append(
            "no disk is emulated as IDE, so the domain gets machine q35, which has no IDE "
            "controller; "
            "but libvirt always adds q35's integrated SATA controller (PCI class 0x0106, "
            "00:1f.2) and SMBus (00:1f.3), which pvhvm's own QEMU drops "
            "(q35,sata=off,smbus=off): libvirt has no supported way to remove them (only "
            "<qemu:commandline> with -machine sata=off, which libvirt calls unsupported)"
        )
    domain = ET.Element("domain", type=virt_type)
    _sub(domain, "name", plan.name)
    _sub(domain, "uuid", plan.uuid)
    # boots with its static maximum; the balloon holds it at memory (as pvhvm's QEMU)
    _sub(domain, "memory", str(plan.boot_memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(plan.memory_mib), unit="MiB")
    if plan.maxvcpus is not None:
        _sub(domain, "vcpu", str(plan.maxvcpus), current=str(plan.vcpus))
    else:
        _sub(domain, "vcpu", str(plan.vcpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine=machine)
    if plan.bios == "ovmf":
        _sub(os_, "loader", OVMF_PATH, readonly="yes", type="rom")
    if plan.direct_kernel_boot:
        assert plan.kernel is not None
        _sub(os_, "kernel", plan.kernel)
        if plan.ramdisk:
            _sub(os_, "initrd", plan.ramdisk)
        if plan.cmdline:
            _sub(os_, "cmdline", plan.cmdline)
    features = _sub(domain, "features")
    for key in ("acpi", "apic", "pae"):
        if getattr(plan, key):
            _sub(features, key)
    if virt_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough")
    else:
        _sub(domain, "cpu", mode="maximum")
    _clock(domain, plan)
    for key in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(domain, key, _action(key, getattr(plan, key), notes))

    devices = _sub(domain, "devices")
    slots = _hotplug_ports(devices, plan) if machine == NO_IDE_MACHINE else None
    if plan.scsi_controller:  # first, as on pvhvm's own QEMU
        scsi = _sub(devices, "controller", type="scsi", index="0", model=SCSI_MODEL)
        if slots is not None:
            _root_bus_address(scsi, next(slots))
    pv_index = 0
    for disk in plan.disks:
        _disk(devices, disk, pv_index, notes, slots)
        pv_index += disk.kind is DeviceKind.XENBUS
    _usb(devices, plan, machine, slots)
    for vif in plan.vifs:
        element = interface_element(vif, vif.devid in user_networking, notes)
        if slots is not None:
            _root_bus_address(element, next(slots))
        devices.append(element)
    _serial(devices, plan.serial, console_log)
    for port, spec in enumerate(plan.more_serials, start=1):
        _port(devices, "serial", spec, port)
    if plan.parallel is not None:
        _port(devices, "parallel", plan.parallel, 0)
    if plan.display is not None:
        _display(devices, plan.display)
    if plan.sdl:
        _sub(devices, "graphics", type="sdl")
        if plan.display is None:
            video = _sub(devices, "video")
            _sub(video, "model", type="vga")
    _sound(devices, plan, slots)
    balloon = _sub(devices, "memballoon", model="virtio")
    _sub(balloon, "alias", name="ua-balloon0")
    if slots is not None:
        _root_bus_address(balloon, next(slots))
    _sub(devices, "panic", model="isa")
    if plan.device_model is not None:
        notes.append(f"device_model={plan.device_model!r} not exported: libvirt runs its own "
                     "emulator binary")

    for index, note in enumerate(notes):
        domain.insert(index, ET.Comment(_comment_text(note)))
    ET.indent(domain, space="  ")
    text = ET.tostring(domain, encoding="unicode") + "\n"
    return LibvirtExport(xml=text, notes=tuple(notes), machine=machine)
