"""A libvirt domain XML read back as a DomainConfig (https://libvirt.org/formatdomain.html).

``pvhvm create DOMAIN.xml`` plans what a virsh user's domain XML holds through the same
DomainConfig → Plan path as an xm/xl file, so every platform realises it unchanged, and
``export-libvirt`` followed by this reader gives the plan of the original config. The
subset read, and what each element becomes:

* ``<name> <uuid> <memory> <currentMemory>`` (libvirt's units; memory is the maximum, so
  a smaller currentMemory makes it maxmem, as export-libvirt writes them: the guest boots
  with maxmem and a ``<memballoon model='virtio'>`` holds it at memory, which is pvhvm's
  own balloon) ``<vcpu current=>`` (maxvcpus);
* ``<os>``: ``<type>`` hvm (or linux/xen: a PV guest), ``<kernel> <initrd> <cmdline>``
  (direct boot), ``<boot dev=>`` (boot=), ``<loader>`` or ``firmware='efi'`` (OVMF);
  ``machine=`` is pvhvm's own choice (pc with an emulated disk, else q35): a warning when it
  differs;
* ``<features>`` acpi apic pae, ``<clock>`` offset/adjustment and the hpet timer,
  ``<on_poweroff> <on_reboot> <on_crash>``;
* ``<disk type='file|block' device='disk|cdrom'>``: ``bus='ide'|'sata'`` is an emulated
  (ioemu) disk at its IDE place (sata disks are emulated as IDE: a warning),
  ``bus='virtio'|'xen'`` a PV (xenbus) disk; ``vdX`` names become ``xvdX``, and the
  ``ua-disk-VDEV`` alias that export-libvirt writes gives the original vdev back;
  ``<driver type=> <readonly/> <shareable/> <boot order=>``;
* ``<interface type='bridge|network|user'>``: ``<model type='virtio'>`` is PV, any other
  model (none: libvirt's rtl8139) emulated; ``<mac> <source bridge=|network=> <mtu>``,
  ``<target dev=>`` (vifname), the ``ua-vif-N`` alias (devid);
* ``<serial>`` / ``<console>`` pty (pvhvm's own console, which ``pvhvm console`` attaches
  to, as ``virsh console`` attaches to the pty), file, unix, tcp; ports 1-3; ``<parallel>``;
* ``<graphics type='vnc'|'sdl'> <video> <input bus='usb'>``, the USB controller,
  ``<sound>``;
* ``<controller type='pci'>``: the machine's own root (``pcie-root`` on q35, ``pci-root``
  on pc) and, on q35, ``hotplug_slots``: the number of pcie-root-ports that are empty (no
  device's address names their bus) or are export-libvirt's own (alias ``ua-hotplugN``,
  which count even with a device plugged behind them since), at most 16. With no PCI
  controller at all the domain gets pvhvm's default; with only pcie-root it gets none (as in
  libvirt, which adds no spare port). A port a device sits behind is one libvirt added for
  that device: pvhvm puts the device on the root bus and adds no such port (a warning). On
  pc the root bus hot-plugs itself, so a pcie-root-port is not realised.

PCI addresses: pvhvm places the devices itself. On q35 it puts the devices given at create
on the root bus in export-libvirt's order (PV disks, the USB controller, the NICs, the PCI
sound cards, the balloon), each in the next free slot from 2 (slots 0, 1 and 0x1f are the
host bridge's, the VGA's and ICH9's). An ``<address type='pci'>`` that is exactly that
(domain 0, bus 0, the device's slot, function 0; decimal or hex, libvirt's defaults for
what is left out; no other attribute) is where pvhvm's QEMU puts the device too, and is
read silently; any other address, and every PCI address on machine pc (where the export
writes none), is a warning that the device is placed elsewhere. So export-libvirt → create
reads back with no warning, and a hand-written placement never differs silently.

Per-device ``<boot order=>`` becomes boot= letters (c, d, n): pvhvm's firmware boots the
first hard disk, the first cdrom with media and the first NIC, so an order on another
device cannot be realised. Everything else is a warning naming the element as not
realised, never silently dropped; what changes the guest in an essential way (a
``<hostdev>``, an unknown disk bus, ``<qemu:commandline>``...) is an unsupported item the
planner refuses unless ``--skip-unsupported``, as it treats ``pci=``.
"""

from __future__ import annotations

import math
import os
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvhvm.config.disk import EMPTY_FORMAT, Access, DiskSpec
from pvhvm.config.domain import (
    ACTIONS,
    MAX_HOTPLUG_SLOTS,
    MAX_RTC_OFFSET,
    Dialect,
    DomainConfig,
    GuestType,
    Located,
    config_from_text,
    name_problem,
)
from pvhvm.config.lang import Position, check_path_value, read_config_text
from pvhvm.config.optstr import brief
from pvhvm.config.values import (
    Chardev,
    ChardevKind,
    host_problem,
    ifname_problem,
    is_ipv6,
    keymap_problem,
    parse_vnc_listen,
)
from pvhvm.config.vif import MTU_RANGE, VifSpec, normalise_mac
from pvhvm.errors import ConfigError, SpecError
from pvhvm.libvirt.xml import HOTPLUG_PORT_ALIAS, Q35_RESERVED_SLOTS, SCSI_MODEL
from pvhvm.libvirt.xmltree import Node, parse_xml, short_name
from pvhvm.plan.plan import OVMF_PATH, SCSI_UNITS
from pvhvm.plan.vdev import IDE_PLACES, letters_to_index, parse_vdev

#: libvirt's memory units (formatdomain "Memory Allocation"), case-insensitive
_UNITS = {
    "b": 1, "bytes": 1, "kb": 10**3, "k": 2**10, "kib": 2**10, "mb": 10**6, "m": 2**20,
    "mib": 2**20, "gb": 10**9, "g": 2**30, "gib": 2**30, "tb": 10**12, "t": 2**40,
    "tib": 2**40,
}
#: libvirt disk driver type → xl format= (LIBVIRT_FORMATS reversed)
_FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vpc": "vhd", "qed": "qed",
            # libvirt's Xen drivers: <driver name='tap' type='aio'> (xm's tap:aio:, raw), vhd
            "aio": "raw", "vhd": "vhd"}
_EMULATED_BUSES = ("ide", "sata", "scsi")
_PV_BUSES = ("virtio", "xen")
#: libvirt's bus for a target name without bus= (hd ide, sd scsi, vd virtio, xvd xen)
_BUS_BY_PREFIX = (("xvd", "xen"), ("hd", "ide"), ("sd", "scsi"), ("vd", "virtio"))
_BOOT_DEVICES = {"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}
_PV_NIC_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional", "netfront")
_SOUND = {"ich6": "hda", "ac97": "ac97", "sb16": "sb16", "es1370": "es1370"}
_VIDEO = {"vga": "std", "cirrus": "cirrus", "qxl": "qxl", "none": "none"}
#: libvirt's own tap names: it ignores them in an XML it is given, and so does pvhvm
_GENERATED_TAP_PREFIXES = ("vnet", "vif", "macvtap")
#: elements that change what the guest gets and that no pvhvm platform realises
_UNSUPPORTED = ("hostdev", "redirdev", "smartcard", "tpm", "filesystem", "shmem")
#: the network libvirt defines out of the box, on this bridge (its default.xml)
_DEFAULT_NETWORK = ("default", "virbr0")
#: why an element that is not read changes nothing pvhvm can realise
_REASONS = {
    "emulator": "pvhvm runs qemu-system-x86_64 itself",
    "controller": "pvhvm adds the controllers its devices need",
    "address": "pvhvm places the devices itself",
    "graphics": "pvhvm's displays are VNC and SDL",
    "seclabel": "pvhvm runs no security driver",
}
XML_DIALECT_REASON = "a libvirt domain XML: each device's bus or model says its type"


def is_domain_xml(path: str | os.PathLike[str], text: str) -> bool:
    """A file is read as libvirt XML when it is named ``*.xml`` or starts with ``<`` (an
    xm/xl file never does: it would not parse)."""
    return str(path).lower().endswith(".xml") or text.lstrip("\ufeff \t\r\n").startswith("<")


def load_domain(
    path: str | os.PathLike[str], variables: Mapping[str, Any] | None = None,
    dialect: Dialect | None = None,
) -> DomainConfig:
    """The DomainConfig of ``path``: an xm/xl config file or a libvirt domain XML, told apart
    by :func:`is_domain_xml`. VAR=VALUE and --dialect apply to config files only."""
    return domain_from_text(path, read_config_text(path), variables, dialect)


def domain_from_text(
    path: str | os.PathLike[str], text: str, variables: Mapping[str, Any] | None = None,
    dialect: Dialect | None = None,
) -> DomainConfig:
    """:func:`load_domain` of ``text`` already read from ``path`` (restore re-reads a config
    from its save file, runtime/replan.py)."""
    if not is_domain_xml(path, text):
        return config_from_text(text, str(path), variables, dialect)
    if variables:
        raise ConfigError("VAR=VALUE arguments are for xm/xl config files; a libvirt domain "
                          "XML has no variables", file=str(path))
    if dialect is not None:
        raise ConfigError("--dialect is for xm/xl config files; in a libvirt domain XML each "
                          "device's bus or model says its type", file=str(path))
    return config_from_xml(text, str(path))


def config_from_xml(text: str, file: str = "<domain.xml>") -> DomainConfig:
    """Read libvirt domain XML ``text``; ConfigError (file:line:col) when it is bad."""
    return _Reader(parse_xml(text, file), file).config()


@dataclass
class _BootOrder:
    order: int
    #: the boot= letter of this device's kind, and its index among that kind's devices
    letter: str
    node: Node


def _whole(node: Node, text: str | None, what: str, low: int, high: int) -> int:
    value = (text or "").strip()
    if not value.isascii() or not value.isdigit():
        raise node.error(f"{what} must be a whole number, not {brief(value)}")
    number = int(value)
    if not low <= number <= high:
        raise node.error(f"{what} = {number} is out of range ({low}..{high})")
    return number


def _mark_all(node: Node) -> None:
    node.use(*node.attrib)
    for child in node.children:
        _mark_all(child)


class _Reader:
    def __init__(self, root: Node, file: str) -> None:
        self.root = root
        self.file = file
        self.warnings: list[str] = []
        self.unsupported: list[tuple[str, Position]] = []
        self.boot_orders: list[_BootOrder] = []

    def warn(self, node: Node, message: str) -> None:
        self.warnings.append(f"{node.position}: {message}")

    def refuse(self, node: Node, what: str) -> None:
        """An element that changes the guest and cannot be realised: the planner refuses it
        unless --skip-unsupported (then the domain is created without it)."""
        _mark_all(node)
        self.unsupported.append((what, node.position))

    def path(self, node: Node, value: str | None, what: str) -> str | None:
        return None if value is None else check_path_value(value, what, node.position)

    def ifname(self, node: Node, value: str | None, what: str) -> str | None:
        """A host network interface name (config.values.ifname_problem)."""
        problem = None if value is None else ifname_problem(value)
        if problem is not None:
            raise node.error(f"{what}: {problem}")
        return value

    def text(self, tag: str) -> tuple[Node | None, str | None]:
        node = self.root.find(tag)
        return node, None if node is None else node.text

    # --- the domain ---------------------------------------------------------------------

    def config(self) -> DomainConfig:
        root = self.root
        if root.tag != "domain":
            raise root.error(f"the root element is <{root.label}>, not <domain> (a libvirt "
                             "domain XML, as virsh dumpxml writes it)")
        root.use("id")  # a running domain's id: libvirt's, not part of the definition
        root.used_attrs.update(a for a in root.attrib if a == "xmlns" or a.startswith("xmlns:"))
        virt = root.get("type")
        if virt not in ("kvm", "qemu", "xen"):
            raise root.error(f"<domain type={brief(virt)}>: pvhvm runs kvm, qemu and xen domains "
                             "(HVM guests on QEMU)")
        name_node, name = self.text("name")
        if name_node is None or not name:
            raise root.error("the domain has no <name>")
        problem = name_problem(name)
        if problem is not None:
            raise name_node.error(problem)
        uuid_node, uuid = self.text("uuid")
        if uuid_node is not None and uuid is not None:
            try:
                uuid = str(uuidlib.UUID(uuid))
            except ValueError as err:
                raise uuid_node.error(f"<uuid> {brief(uuid)} is not a UUID") from err
        memory, maxmem = self.memory()
        vcpus, maxvcpus = self.vcpus()
        boot_os, os_values = self.os()
        guest_type, guest_type_reason = os_values.pop("guest_type")
        disks, vifs, device_values = self.devices()
        boot = self.boot(boot_os, disks, vifs)
        self.machine(os_values.pop("machine"), disks)
        hotplug_slots = self.pci(disks, vifs, device_values)
        settings = {**self.features(), **self.actions()}
        for node in root.children:
            if node.tag.startswith("qemu:"):
                self.refuse(node, f"<{node.label}>")
        self.unread(root)
        return DomainConfig(
            file=self.file, name=name, uuid=uuid, memory=memory, maxmem=maxmem, vcpus=vcpus,
            maxvcpus=maxvcpus, builder=guest_type.value, dialect=Dialect.XL,
            dialect_reason=XML_DIALECT_REASON, guest_type=guest_type,
            guest_type_reason=guest_type_reason, boot=boot,
            disks=tuple(Located(spec, node.position) for spec, node in disks),
            vifs=tuple(Located(spec, node.position) for spec, node in vifs),
            **os_values, **settings, **device_values, hotplug_slots=hotplug_slots,
            unsupported=tuple(self.unsupported), warnings=tuple(self.warnings),
        )

    def memory(self) -> tuple[int | None, int | None]:
        """<memory> is the most the guest may have, <currentMemory> what it boots with."""
        most = self.mib(self.root.find("memory"))
        current = self.mib(self.root.find("currentMemory"))
        if most is None or current is None or current == most:
            return current or most, None
        if current > most:
            node = self.root.find("currentMemory")
            assert node is not None
            raise node.error(f"<currentMemory> ({current} MiB) is above <memory> ({most} MiB)")
        return current, most

    def mib(self, node: Node | None) -> int | None:
        if node is None:
            return None
        unit = (node.get("unit") or "KiB").lower()
        scale = _UNITS.get(unit)
        if scale is None:
            raise node.error(f"<{node.label} unit={brief(node.attrib['unit'])}>: the unit is "
                             "not one of b, KB, KiB, MB, MiB, GB, GiB, TB, TiB")
        amount = _whole(node, node.text, f"<{node.label}>", 1, 1 << 60)
        mib = math.ceil(amount * scale / 2**20)
        if amount * scale % 2**20:
            self.warn(node, f"<{node.label}> is not a whole number of MiB: rounded up to "
                            f"{mib} MiB")
        if not 16 <= mib <= 1 << 20:
            raise node.error(f"<{node.label}> = {mib} MiB is out of range (16..{1 << 20})")
        return mib

    def vcpus(self) -> tuple[int | None, int | None]:
        node = self.root.find("vcpu")
        if node is None:
            return None, None
        most = _whole(node, node.text, "<vcpu>", 1, 255)
        if node.attrib.get("placement") == "static":
            node.use("placement")  # libvirt's default: no pinning
        current = node.get("current")
        if current is None:
            return most, None
        return _whole(node, current, "<vcpu current=>", 1, most), most

    def os(self) -> tuple[str | None, dict[str, Any]]:
        os_ = self.root.find("os")
        if os_ is None:
            raise self.root.error("the domain has no <os> (<os><type>hvm</type></os>)")
        type_ = os_.find("type")
        if type_ is None or type_.text not in ("hvm", "linux", "xen"):
            where = os_ if type_ is None else type_
            raise where.error("<os><type> must be hvm (or linux/xen: a Xen PV guest)")
        arch = type_.get("arch")
        if arch not in (None, "x86_64", "i686"):
            raise type_.error(f"<type arch={brief(arch)}>: pvhvm runs x86 guests "
                              "(qemu-system-x86_64): x86_64 or i686")
        guest = ((GuestType.HVM, "<os><type>hvm</type>") if type_.text == "hvm" else
                 (GuestType.PV, f"<os><type>{type_.text}</type>: a Xen PV guest"))
        values: dict[str, Any] = {"guest_type": guest, "machine": (type_, type_.get("machine"))}
        values["bios"] = self.firmware(os_)
        for key, tag in (("kernel", "kernel"), ("ramdisk", "initrd")):
            node = os_.find(tag)
            values[key] = None if node is None else self.path(node, node.text, f"<{tag}>")
            if key == "ramdisk" and node is not None and "," in (values[key] or ""):
                raise node.error("<initrd>: QEMU's -initrd splits a path at commas (multiboot "
                                 "modules); move or link the file to a path without a comma")
        cmdline = os_.find("cmdline")
        values["cmdline"] = None if cmdline is None else cmdline.text
        bootloader = self.root.find("bootloader")
        values["bootloader"] = (None if bootloader is None or not bootloader.text
                                else self.path(bootloader, bootloader.text, "<bootloader>"))
        letters = ""
        for node in os_.findall("boot"):
            dev = node.use().get("dev")
            if dev not in _BOOT_DEVICES:
                raise node.error(f"<boot dev={brief(dev)}> is not one of "
                                 f"{', '.join(_BOOT_DEVICES)}")
            letters += _BOOT_DEVICES[dev]
        return letters or None, values

    def firmware(self, os_: Node) -> str:
        """SeaBIOS, or OVMF for firmware='efi' or an OVMF <loader> (pvhvm boots its own)."""
        firmware = os_.get("firmware")
        loader = os_.find("loader")
        if loader is None:
            if firmware not in (None, "bios", "efi"):
                raise os_.error(f"<os firmware={brief(firmware)}> is not bios or efi")
            return "ovmf" if firmware == "efi" else "seabios"
        loader.use("readonly", "type")
        path = loader.text
        if "hvmloader" in Path(path).name:
            return "seabios"  # Xen's HVM firmware loader: firmware boot
        if loader.attrib.get("type") == "pflash" or "ovmf" in path.lower():
            if path != OVMF_PATH:
                self.warn(loader, f"<loader> {brief(path)} not realised: pvhvm boots OVMF from "
                                  f"{OVMF_PATH}")
            return "ovmf"
        self.warn(loader, f"<loader> {brief(path)} not realised: pvhvm boots SeaBIOS")
        return "seabios"

    def machine(self, found: tuple[Node, str | None], disks: list[tuple[DiskSpec, Node]]) -> None:
        """pvhvm chooses the machine: pc (PIIX3 IDE) when a disk is emulated, else q35."""
        type_, machine = found
        if machine is None:
            return
        chosen = _chosen_machine(disks)
        kind = ("q35" if "q35" in machine else
                "pc" if machine.startswith("pc") or machine == "xenfv" else None)
        if kind != chosen:
            self.warn(type_, f"machine={brief(machine)} not realised: pvhvm gives a domain machine "
                             f"pc when a disk is emulated and q35 when none is; this one "
                             f"gets {chosen}")

    def pci(self, disks: list[tuple[DiskSpec, Node]], vifs: list[tuple[VifSpec, Node]],
            values: Mapping[str, Any]) -> int | None:
        """hotplug_slots from the PCI controllers, and the PCI addresses pvhvm would give
        marked realised (the module's docstring says the rule); None: pvhvm's default."""
        devices = self.root.find("devices")
        if devices is None:
            return None
        q35 = _chosen_machine(disks) == "q35"
        controllers = [n for n in devices.findall("controller")
                       if n.attrib.get("type") == "pci"]
        for node in controllers:
            if node.attrib.get("index", "0") == "0" and node.attrib.get("model") == (
                    "pcie-root" if q35 else "pci-root"):
                node.use("type", "index", "model")  # the machine's own root bus
        if q35:
            self.root_bus_addresses(devices, disks, vifs, values)
        ports = [n for n in controllers if n.attrib.get("model") == "pcie-root-port"]
        if not q35 or not controllers:
            return None  # pc: its root bus hot-plugs; no controller given: pvhvm's default
        buses = {_number(address.attrib.get("bus", "0"))
                 for device in devices.children for address in device.findall("address")
                 if address.attrib.get("type") == "pci"}
        # a port a device sits behind is one libvirt added for it: pvhvm puts that device
        # on the root bus (its address says so in a warning) and adds no port for it
        hotplug = [n for n in ports if _is_hotplug_alias(n) or "index" not in n.attrib
                   or _number(n.attrib["index"]) not in buses]
        for node in hotplug:
            node.use("type", "index", "model")
        if len(hotplug) > MAX_HOTPLUG_SLOTS:
            self.warn(hotplug[MAX_HOTPLUG_SLOTS],
                      f"{len(hotplug)} empty pcie-root-ports: pvhvm reserves at most "
                      f"{MAX_HOTPLUG_SLOTS} hotplug slots (hotplug_slots); this domain gets "
                      f"{MAX_HOTPLUG_SLOTS}")
        return min(len(hotplug), MAX_HOTPLUG_SLOTS)

    def root_bus_addresses(self, devices: Node, disks: list[tuple[DiskSpec, Node]],
                           vifs: list[tuple[VifSpec, Node]], values: Mapping[str, Any]) -> None:
        """q35: the devices given at create on the root bus in export-libvirt's order (PV
        disks, the USB controller, NICs, PCI sound cards, the balloon), each in the next
        free slot from 2; an address equal to its slot there is realised (it is where
        pvhvm's QEMU puts the device too)."""
        placed: list[Node | None] = []
        if any(spec.type == "ioemu" and _scsi_unit(spec.vdev) is not None for spec, _ in disks):
            placed.append(next((n for n in devices.findall("controller")
                                if n.attrib.get("type") == "scsi"), None))
        placed += [node for spec, node in disks if spec.type != "ioemu"]
        if values.get("usb") or values.get("usbdevices"):
            placed.append(next((n for n in devices.findall("controller")
                                if n.attrib.get("type") == "usb"), None))
        placed += [node for _, node in vifs]
        cards: dict[str, Node] = {}
        for node in devices.findall("sound"):
            cards.setdefault(_SOUND.get(node.attrib.get("model", ""), ""), node)
        placed += [cards.get(card) for card in values.get("soundhw", ()) if card != "sb16"]
        placed.append(next(iter(devices.findall("memballoon")), None))
        slots = [slot for slot in range(2, 0x1F) if slot not in Q35_RESERVED_SLOTS]
        for device, slot in zip(placed, slots, strict=False):
            addresses = [] if device is None else device.findall("address")
            if len(addresses) == 1 and _pci_address(addresses[0]) == (0, 0, slot, 0):
                addresses[0].use(*addresses[0].attrib)

    def features(self) -> dict[str, Any]:
        """acpi: on when present (libvirt's QEMU driver gives no ACPI without it); apic and
        pae likewise in a xen domain, while libvirt's QEMU driver gives an x86 guest both
        either way; and <cpu>, whose model pvhvm chooses (host on KVM, max on TCG)."""
        features = self.root.find("features")
        xen = self.root.attrib.get("type") == "xen"
        values: dict[str, Any] = {
            key: (features is not None and features.find(key) is not None) or (
                key != "acpi" and not xen)
            for key in ("acpi", "apic", "pae")}
        cpu = self.root.find("cpu")
        if cpu is not None and cpu.attrib.get("mode") in ("host-passthrough", "maximum"):
            cpu.use("mode", "check", "migratable")  # libvirt's checks of the host CPU
        clock = self.root.find("clock")
        values.update(localtime=False, rtc_timeoffset=0, hpet=True)
        if clock is None:
            return values
        offset = clock.attrib.get("offset", "utc")
        if offset in ("utc", "localtime"):
            clock.use("offset")
            values["localtime"] = offset == "localtime"
        elif offset == "variable":
            clock.use("offset")
            basis = clock.get("basis") or "utc"
            adjustment = (clock.get("adjustment") or "0").strip()
            digits = adjustment.removeprefix("-")
            if not (digits.isascii() and digits.isdigit()) or \
                    abs(int(adjustment)) > MAX_RTC_OFFSET:
                raise clock.error(f"<clock adjustment={brief(adjustment)}> must be seconds "
                                  f"(-{MAX_RTC_OFFSET}..{MAX_RTC_OFFSET})")
            values.update(localtime=basis == "localtime", rtc_timeoffset=int(adjustment))
        for timer in clock.findall("timer"):
            if timer.attrib.get("name") == "hpet" and set(timer.attrib) <= {"name", "present"}:
                timer.use("name", "present")
                values["hpet"] = timer.attrib.get("present", "yes") == "yes"
        return values

    def actions(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in ("on_poweroff", "on_reboot", "on_crash"):
            node, text = self.text(key)
            if node is None or text is None:
                continue
            if text not in ACTIONS:
                raise node.error(f"<{key}> {brief(text)} is not one of: {', '.join(ACTIONS)}")
            values[key] = text
        return values

    # --- devices ------------------------------------------------------------------------

    def devices(self) -> tuple[list[tuple[DiskSpec, Node]], list[tuple[VifSpec, Node]],
                               dict[str, Any]]:
        devices = self.root.find("devices")
        disks: list[tuple[DiskSpec, Node]] = []
        vifs: list[tuple[VifSpec, Node]] = []
        values: dict[str, Any] = {}
        if devices is None:
            values["serial"] = "none"
            return disks, vifs, values
        for node in devices.findall("disk"):
            disk = self.disk(node)
            if disk is not None:
                disks.append((disk, node))
        for node in devices.findall("interface"):
            vif = self.interface(node, len(vifs))
            if vif is not None:
                vifs.append((vif, node))
        values.update(self.serials(devices))
        values.update(self.display(devices))
        values.update(self.usb(devices))
        self.scsi_controllers(devices)
        values["soundhw"] = self.sound(devices)
        for tag in _UNSUPPORTED:
            for node in devices.findall(tag):
                self.refuse(node, f"<{tag}>")
        for node in devices.findall("memballoon"):
            if node.attrib.get("model") in ("none", "virtio"):
                node.use("model")  # pvhvm's QEMU has its own balloon (mem-set)
        for node in devices.findall("panic"):
            if node.attrib.get("model", "isa") == "isa":
                node.use("model")  # pvhvm's QEMU has pvpanic at the ISA port
        return disks, vifs, values

    def disk(self, node: Node) -> DiskSpec | None:
        node.use()
        kind, device = node.get("type") or "file", node.get("device") or "disk"
        if kind not in ("file", "block"):
            self.refuse(node, f"<disk type={brief(kind)}> (pvhvm's disks are files and block "
                              "devices)")
            return None
        if device not in ("disk", "cdrom"):
            self.refuse(node, f"<disk device={brief(device)}> (pvhvm's disks are disks and cdroms)")
            return None
        cdrom = device == "cdrom"
        target = node.find("target")
        dev = None if target is None else target.get("dev")
        if target is None or not dev:
            raise node.error("<disk> has no <target dev=...>")
        bus = target.get("bus") or next(
            (bus for prefix, bus in _BUS_BY_PREFIX if dev.startswith(prefix)), None)
        if bus not in (*_EMULATED_BUSES, *_PV_BUSES):
            self.refuse(node, f"<disk> {brief(dev)} on bus={brief(bus)} (pvhvm emulates ide "
                              "and sata disks and realises virtio and xen ones as PV)")
            return None
        emulated = bus in _EMULATED_BUSES
        if cdrom and bus not in ("ide", "sata"):
            raise node.error(f"<disk device='cdrom'> {brief(dev)} on bus={brief(bus)}: pvhvm's "
                             "CD drives are emulated IDE (bus='ide' or 'sata')")
        if bus == "scsi" and _scsi_unit(dev) is None:
            raise node.error(f"<disk> {brief(dev)} on bus='scsi': pvhvm's emulated SCSI disks "
                             f"are sda..sd{chr(ord('a') + SCSI_UNITS - 1)} (the lsilogic "
                             "controller's ids; it has no more)")
        source = node.find("source")
        path = None if source is None else source.get("file" if kind == "file" else "dev")
        path = self.path(source or node, path, "<source>") or ""
        if not path and not cdrom:
            attribute = "file" if kind == "file" else "dev"
            raise node.error(f"<disk> {brief(dev)} has no <source {attribute}=...> (only a "
                             "cdrom may be empty)")
        driver = node.find("driver")
        format_ = "raw"
        if driver is not None:
            if driver.attrib.get("name", "qemu") == "qemu":
                driver.use("name")
            type_ = driver.get("type") or "raw"
            if type_ not in _FORMATS:
                raise driver.error(f"<driver type={brief(type_)}> is not a format pvhvm's QEMU "
                                   f"opens ({', '.join(_FORMATS)})")
            format_ = _FORMATS[type_]
        readonly = node.find("readonly") is not None
        shared = node.find("shareable") is not None
        access = (Access.RO if readonly or cdrom else Access.RW_SHARED if shared
                  else Access.RW)
        self.boot_order(node, "d" if cdrom else "c")
        vdev = self.vdev(node, dev, bus, emulated)
        if bus == "sata":
            self.warn(node, f"<disk> {brief(dev)} on bus='sata': pvhvm emulates its disks as IDE, "
                            f"so this one is an IDE {'CD drive' if cdrom else 'disk'}")
        return DiskSpec(vdev=vdev, target=path, format=EMPTY_FORMAT if not path else format_,
                        access=access, cdrom=cdrom, type="ioemu" if emulated else "xenbus")

    def vdev(self, node: Node, dev: str, bus: str, emulated: bool) -> str:
        """The pvhvm vdev: the ``ua-disk-VDEV`` alias when it names the same place, else the
        target's name (a PV ``vdX`` is ``xvdX``; an emulated ``sdX`` sits at the IDE place of
        its index, as xl places it)."""
        name = dev
        if not emulated and dev.startswith("vd"):
            name = "x" + dev
        place = None
        if bus == "scsi":  # pvhvm's own sdX: the lsilogic disk at unit = its index
            address = node.find("address")
            if address is not None and address.attrib == {
                    "type": "drive", "controller": "0", "bus": "0", "target": "0",
                    "unit": str(_scsi_unit(dev))}:
                address.use(*address.attrib)
            elif address is not None:
                address.used = False
        elif emulated:
            place = _ide_place(dev)
            if dev.startswith("sd") and place is not None and \
                    node.attrib.get("device") != "cdrom":
                # an IDE/SATA hard disk libvirt names sdX is the IDE disk at that place:
                # pvhvm's own sdX disk is emulated SCSI (issue 20), so it takes the place's
                # hd name (a CD drive is IDE whatever its name)
                name = list(IDE_PLACES)[list(IDE_PLACES.values()).index(place)]
            address = node.find("address")
            if address is not None and place is not None and address.attrib == {
                "type": "drive", "controller": "0", "bus": str(place[0]), "target": "0",
                "unit": str(place[1])}:
                address.use(*address.attrib)
            elif address is not None:
                address.used = False
        alias = node.find("alias")
        if alias is not None:
            alias.use("name")
            given = (alias.attrib.get("name") or "").removeprefix("ua-disk-")
            if alias.attrib.get("name", "").startswith("ua-disk-") and _vdev_ok(given) and (
                not emulated or _ide_place(given) == place
            ):
                return given
        return name

    def boot_order(self, node: Node, letter: str) -> None:
        boot = node.find("boot")
        if boot is None:
            return
        order = _whole(boot, boot.get("order"), "<boot order=>", 1, 1 << 16)
        boot.use("loadparm")
        self.boot_orders.append(_BootOrder(order, letter, node))

    def boot(self, boot_os: str | None, disks: list[tuple[DiskSpec, Node]],
             vifs: list[tuple[VifSpec, Node]]) -> str | None:
        """boot= from <os><boot dev=> or from per-device <boot order=> (libvirt allows one
        of the two): each order must be on the device pvhvm's firmware boots for its kind."""
        if not self.boot_orders:
            return boot_os
        if boot_os is not None:
            raise self.boot_orders[0].node.error(
                "<boot order=> on a device and <os><boot dev=> exclude each other (as in "
                "libvirt)")
        first = {
            "c": next((n for s, n in disks if not s.cdrom), None),
            "d": next((n for s, n in disks if s.cdrom and s.target), None),
            "n": next((n for _, n in vifs), None),
        }
        kept = {id(n) for _, n in disks} | {id(n) for _, n in vifs}
        letters = ""
        seen: dict[int, Node] = {}
        for entry in sorted(self.boot_orders, key=lambda e: e.order):
            if id(entry.node) not in kept:
                continue  # a device created without (--skip-unsupported)
            if entry.order in seen:
                raise entry.node.error(f"<boot order='{entry.order}'> is also on the device "
                                       f"at {seen[entry.order].position}")
            seen[entry.order] = entry.node
            if first[entry.letter] is not entry.node:
                noun, what = {"c": ("disk", "the first hard disk"),
                              "d": ("cdrom", "the first cdrom with media"),
                              "n": ("NIC", "the first NIC")}[entry.letter]
                self.refuse(entry.node, f"<boot order='{entry.order}'> on this {noun} (pvhvm's "
                                        f"firmware boot order boots {what} only)")
                continue
            letters += entry.letter
        return letters or None

    def interface(self, node: Node, index: int) -> VifSpec | None:
        node.use()
        kind = node.get("type")
        if kind not in ("bridge", "network", "user"):
            self.refuse(node, f"<interface type={brief(kind)}> (pvhvm's NICs are on a bridge)")
            return None
        mac_node = node.find("mac")
        mac = None if mac_node is None else mac_node.get("address")
        if mac_node is not None and mac is not None:
            try:
                mac = normalise_mac(mac, "<mac>")
            except SpecError as err:
                raise mac_node.error(str(err)) from err
        bridge = self.bridge(node, kind)
        model_node = node.find("model")
        model = None if model_node is None else model_node.get("type")
        pv = model in _PV_NIC_MODELS
        self.boot_order(node, "n")
        rom = node.find("rom")
        if rom is not None and rom.attrib == {"enabled": "no"} and node.find("boot") is None:
            rom.use("enabled")  # pvhvm loads no option ROM unless the NIC boots
        elif rom is not None:
            rom.used = False
        mtu_node = node.find("mtu")
        mtu = None if mtu_node is None else _whole(mtu_node, mtu_node.get("size"), "<mtu size=>",
                                                   *MTU_RANGE)
        vifname = None
        target = node.find("target")
        dev = None if target is None else target.get("dev")
        if dev is not None and not dev.startswith(_GENERATED_TAP_PREFIXES):
            vifname = self.ifname(target or node, dev, "<target dev=>")
        devid = None
        alias = node.find("alias")
        if alias is not None:
            given = alias.get("name") or ""
            if given.startswith("ua-vif-") and given[7:].isascii() and given[7:].isdigit():
                devid = int(given[7:]) if int(given[7:]) != index else None
        return VifSpec(mac=mac, bridge=bridge, type="xenbus" if pv else "ioemu",
                       model=None if pv else model, mtu=mtu, devid=devid, vifname=vifname)

    def bridge(self, node: Node, kind: str) -> str | None:
        source = node.find("source")
        if kind == "bridge":
            if source is None or not source.get("bridge"):
                raise node.error("<interface type='bridge'> has no <source bridge=...>")
            return self.ifname(source, source.get("bridge"), "<source bridge=>")
        if kind == "user":
            self.warn(node, "<interface type='user'>: pvhvm puts the NIC on its default bridge, "
                            "or on QEMU user networking where that bridge does not exist")
            return None
        network = None if source is None else source.get("network")
        if source is not None and source.attrib.get("bridge"):
            # virsh dumpxml of a running domain names the network's bridge too
            bridge = source.get("bridge")
            self.warn(node, f"<source network={brief(network)}>: pvhvm manages no libvirt "
                            f"networks; the NIC goes on the network's bridge, {bridge}")
            source.use("portid")
            return self.ifname(source, bridge, "<source bridge=>")
        if network == _DEFAULT_NETWORK[0]:
            self.warn(node, "<source network='default'>: pvhvm manages no libvirt networks; "
                            f"the NIC goes on that network's bridge, {_DEFAULT_NETWORK[1]}")
            return _DEFAULT_NETWORK[1]
        self.warn(node, f"<source network={brief(network)}> not realised: pvhvm manages no libvirt "
                        "networks; the NIC goes on pvhvm's default bridge (give <interface "
                        "type='bridge'><source bridge=...>)")
        return None

    def serials(self, devices: Node) -> dict[str, Any]:
        """Serial ports 0-3 (port 0 is the console) and the parallel port."""
        ports: dict[int, str] = {}
        where: dict[int, Position] = {}
        nodes = devices.findall("serial")
        consoles = devices.findall("console")
        if not nodes and consoles:
            nodes = consoles[:1]  # libvirt: a console with no serial port makes ttyS0
        for node in nodes:
            target = node.find("target")
            port_text = None if target is None else target.get("port")
            port = (min(set(range(4)) - set(ports), default=4) if port_text is None
                    else _whole(target or node, port_text, "<target port=>", 0, 1 << 16))
            if port > 3:
                raise node.error(f"serial port {port}: a PC has four (ports 0-3)")
            if port in ports:
                raise node.error(f"serial port {port} is given twice")
            if target is not None and target.attrib.get("type") in ("isa-serial", "serial"):
                target.use("type")
                model = target.find("model")
                if model is not None and model.attrib.get("name") == "isa-serial":
                    model.use("name")
                elif model is not None:
                    model.used = False
            spec = self.chardev(node)
            if spec is not None:
                ports[port], where[port] = spec, node.position
        for console in consoles:
            target = console.find("target")
            if target is None or (target.attrib.get("type", "serial") == "serial"
                                  and target.attrib.get("port", "0") == "0"):
                _mark_all(console)  # the same port as serial 0
        serial = ports.get(0, "none")
        more = [ports.get(port, "none") for port in range(1, max(ports, default=0) + 1)]
        parallel = None
        parallel_position = None
        for node in devices.findall("parallel")[:1]:
            target = node.find("target")
            if target is not None:
                target.use("port")
            parallel, parallel_position = self.chardev(node), node.position
        return {"serial": None if serial == "pty" else serial, "serial_position": where.get(0),
                "more_serials": tuple(more),
                "parallel": None if parallel in (None, "none") else parallel,
                "parallel_position": parallel_position}

    def chardev(self, node: Node) -> str | None:
        """A character device as xl's serial= spells it: pty, null, file:, unix:, tcp:,
        telnet:."""
        node.use()
        kind = node.get("type") or "pty"
        source = node.find("source")
        if kind == "null":
            return "null"
        if kind == "pty":
            if source is not None:
                source.use("path")  # the pty libvirt allocated last time
            return "pty"
        if source is None:
            raise node.error(f"<{node.label} type={brief(kind)}> has no <source>")
        if kind in ("file", "unix"):
            if kind == "file":
                source.use("append")  # pvhvm's file ports always append (qemu.argv)
            elif source.attrib.get("mode", "bind") == "bind":
                source.use("mode")
            path = source.get("path")
            if not path:
                raise source.error(f"<{node.label} type={brief(kind)}> has no <source path=...>")
            self.path(source, path, "<source path=>")
            return Chardev(ChardevKind(kind), path=path).spec
        if kind == "tcp" and node.tag == "serial":
            if source.attrib.get("mode", "bind") == "bind":
                source.use("mode")
            protocol = node.find("protocol")
            telnet = protocol is not None and protocol.attrib.get("type") == "telnet"
            if protocol is not None and protocol.attrib.get("type", "raw") in ("raw", "telnet"):
                protocol.use("type")
            elif protocol is not None:
                protocol.used = False
            service = source.get("service") or ""
            if not service.isascii() or not service.isdigit() or not 1 <= int(service) <= 65535:
                raise source.error(f"<source service={brief(service)}> must be a port number "
                                   "(1-65535)")
            host = source.get("host") or "127.0.0.1"
            problem = None if is_ipv6(host) else host_problem(host)
            if problem is not None:
                raise source.error(f"<source host=>: {problem}")
            return Chardev(ChardevKind.TELNET if telnet else ChardevKind.TCP, host=host,
                           port=int(service)).spec
        if kind == "dev":
            self.refuse(node, f"<{node.label} type='dev'> (a host device passed through)")
            return None
        node.used = False
        return None

    def display(self, devices: Node) -> dict[str, Any]:
        values: dict[str, Any] = {"vnc": False, "sdl": False}
        for node in devices.findall("graphics"):
            kind = node.attrib.get("type")
            if kind == "sdl":
                node.use("type")
                values["sdl"] = True
            elif kind == "vnc" and not values["vnc"]:
                values.update(self.vnc(node.use("type")))
        videos = devices.findall("video")
        if videos:
            model = videos[0].use().find("model")
            kind = None if model is None else model.get("type")
            if kind in _VIDEO:
                values["vga"] = _VIDEO[kind]
            else:
                self.warn(videos[0], f"<video> model {brief(kind)} not realised: the guest gets a "
                                     "standard VGA card")
                values["vga"] = "std"
        return values

    def vnc(self, node: Node) -> dict[str, Any]:
        port = node.get("port")
        autoport = node.get("autoport") == "yes" or port in (None, "-1")
        display = None
        if not autoport:
            display = _whole(node, port, "<graphics port=>", 5900, 65535) - 5900
        listen = node.get("listen")
        where, what = node, "<graphics listen=>"
        for child in node.findall("listen"):
            if child.attrib.get("type") == "address" and listen in (None, child.attrib.get(
                    "address")):
                child.use("type", "address")
                listen = child.attrib.get("address")
                where, what = child, "<listen address=>"
        if listen is not None:
            try:
                host, given_display = parse_vnc_listen(listen, what)
            except SpecError as err:
                raise where.error(str(err)) from err
            if given_display is not None:
                raise where.error(f"{what} {brief(listen)} is an address, without a display "
                                  "(the display is <graphics port=>)")
            listen = host
        keymap = node.get("keymap")
        problem = None if keymap is None else keymap_problem(keymap)
        if problem is not None:
            raise node.error(f"<graphics keymap=>: {problem}")
        return {"vnc": True, "vnc_listen": listen or "127.0.0.1", "vnc_display": display,
                "vnc_unused": autoport, "vnc_password": node.get("passwd"),
                "keymap": keymap}

    def scsi_controllers(self, devices: Node) -> None:
        """An lsilogic SCSI controller (libvirt's default model for x86) is pvhvm's own, which
        it adds for emulated sd* disks; another model (virtio-scsi, megasas...) would give the
        guest a different controller: unsupported."""
        for node in devices.findall("controller"):
            if node.attrib.get("type") != "scsi":
                continue
            if node.attrib.get("model", SCSI_MODEL) == SCSI_MODEL and \
                    node.attrib.get("index", "0") == "0":
                node.use("type", "index", "model")
            else:
                self.refuse(node, f"<controller type='scsi' model="
                                  f"{brief(node.attrib.get('model'))} index="
                                  f"{brief(node.attrib.get('index', '0'))}> (pvhvm's emulated "
                                  "SCSI is one lsilogic controller, QEMU's lsi53c895a)")

    def usb(self, devices: Node) -> dict[str, Any]:
        """A USB controller unless one says model='none' (libvirt adds one by default)."""
        usb = True
        for node in devices.findall("controller"):
            if node.attrib.get("type") == "usb":
                node.use("type", "index", "model")
                usb = usb and node.attrib.get("model") != "none"
        inputs: list[str] = []
        for node in devices.findall("input"):
            kind, bus = node.attrib.get("type"), node.attrib.get("bus")
            if bus == "usb" and kind in ("tablet", "mouse", "keyboard"):
                node.use("type", "bus")
                inputs.append(kind)
            elif bus in (None, "ps2") and kind in ("mouse", "keyboard"):
                node.use("type", "bus")  # every PC has its PS/2 keyboard and mouse
        return {"usb": usb, "usbdevices": tuple(inputs)}

    def sound(self, devices: Node) -> tuple[str, ...]:
        cards: list[str] = []
        for node in devices.findall("sound"):
            card = _SOUND.get(node.attrib.get("model", ""))
            if card is not None:
                node.use("model")
                audio = node.find("audio")
                if audio is not None:
                    audio.use("id")
                cards.append(card)
        for node in devices.findall("audio"):
            if node.attrib.get("type") == "none":
                node.use("id", "type")  # pvhvm's QEMU plays to no host audio (-audiodev none)
        return tuple(dict.fromkeys(cards))

    # --- what was not read --------------------------------------------------------------

    def unread(self, root: Node) -> None:
        """One warning per kind of element (or attribute) the reader did not realise, at its
        first place, with how many there are."""
        found: dict[str, tuple[Node, int]] = {}

        def visit(node: Node, path: str) -> None:
            if node.tag == "alias":
                return  # libvirt's name for a device: nothing the guest sees
            if not node.used:
                reason = _REASONS.get(node.tag, "")
                key = f"{path}{node.describe()} not realised" + (f" ({reason})" if reason else "")
                first, count = found.get(key, (node, 0))
                found[key] = (first, count + 1)
                return
            unread = sorted(set(node.attrib) - node.used_attrs)
            if unread:
                listed = ", ".join(f"{short_name(name)}={brief(node.attrib[name])}"
                                   for name in unread[:5])
                if len(unread) > 5:
                    listed += f" and {len(unread) - 5} more"
                key = (f"{path}<{node.label}> attribute{'s' if len(unread) > 1 else ''} {listed} "
                       "not realised")
                first, count = found.get(key, (node, 0))
                found[key] = (first, count + 1)
            for child in node.children:
                visit(child, f"<{node.label}>/" if node is not root else "")

        visit(root, "")
        for key, (first, count) in found.items():
            self.warn(first, key + (f" ({count} of them)" if count > 1 else ""))


def _chosen_machine(disks: list[tuple[DiskSpec, Node]]) -> str:
    """pvhvm's machine for these disks: pc (PIIX3 IDE) when one is emulated as IDE, else q35
    (emulated sd* disks are SCSI, on a controller of their own)."""
    return "pc" if any(spec.type == "ioemu" and (spec.cdrom or _scsi_unit(spec.vdev) is None)
                       for spec, _ in disks) else "q35"


def _number(text: str | None) -> int | None:
    """A libvirt address number (decimal or 0x hex), or None when it is not one."""
    try:
        return None if text is None else int(text.strip(), 0)
    except ValueError:
        return None


def _pci_address(node: Node) -> tuple[int | None, ...] | None:
    """(domain, bus, slot, function) of ``<address type='pci'>`` (libvirt's defaults: 0),
    None for any other address or one with more attributes (multifunction...)."""
    keys = ("domain", "bus", "slot", "function")
    if node.attrib.get("type") != "pci" or not set(node.attrib) <= {"type", *keys} or \
            "slot" not in node.attrib:
        return None
    return tuple(_number(node.attrib.get(key, "0")) for key in keys)


def _is_hotplug_alias(node: Node) -> bool:
    """The ``ua-hotplugN`` alias export-libvirt gives the empty pcie-root-ports it
    reserves for hotplug."""
    alias = next(iter(node.findall("alias")), None)
    name = "" if alias is None else alias.attrib.get("name", "")
    prefix = HOTPLUG_PORT_ALIAS.format("")
    return name.startswith(prefix) and name[len(prefix):].isascii() and \
        name[len(prefix):].isdigit()


def _scsi_unit(name: str) -> int | None:
    """The SCSI id of pvhvm's emulated disk ``name`` (sda 0 ... up to the controller's
    targets), None for any other name."""
    letters = name.removeprefix("sd")
    if not (name.startswith("sd") and letters.isascii() and letters.isalpha()
            and letters.islower() and len(letters) <= 4):
        return None
    index = letters_to_index(letters)
    return index if index < SCSI_UNITS else None


def _ide_place(name: str) -> tuple[int, int] | None:
    """The IDE place of an emulated disk named ``name``: hda-hdd their own, others that of
    their disk index, as xl places them (libxl_dm.c)."""
    if name in IDE_PLACES:
        return IDE_PLACES[name]
    for prefix in ("xvd", "sd", "vd"):
        letters = name.removeprefix(prefix)
        if name.startswith(prefix) and letters.isascii() and letters.isalpha() and \
                letters.islower() and len(letters) <= 4:
            index = letters_to_index(letters)
            return list(IDE_PLACES.values())[index] if index < len(IDE_PLACES) else None
    return None


def _vdev_ok(name: str) -> bool:
    try:
        parse_vdev(name)
    except SpecError:
        return False
    return True
