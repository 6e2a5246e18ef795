"""The guest's device report: the contract between the guest image and its hosts.

The rootfs of the guest image kit prints this block on its serial console (ttyS0) once it has
booted and loaded its NIC drivers (``files/report.sh`` writes it)::

    PVHVM-REPORT-BEGIN
    pci 0000:00:01.1 class=0x0101 vendor=0x8086 device=0x7010 driver=ata_piix
    blk sda driver=ata_piix size=131072
    net eth0 driver=e1000 mac=52:54:00:12:34:56
    root /dev/sda fstype=ext4
    PVHVM-REPORT-END

Fields:

``pci <slot> class=0x<cccc> vendor=0x<vvvv> device=0x<dddd> driver=<name|->``
    One line per PCI function (``/sys/bus/pci/devices/*``). ``class`` is the sysfs class value
    shifted right by 8 (base class and subclass, without the programming interface): IDE is
    0x0101, SATA 0x0106, virtio-blk (and SCSI) 0x0100. ``driver`` is ``-`` when no driver is bound.
``blk <name> driver=<name|-> size=<sectors>``
    One line per block device in ``/sys/block`` (no partitions, no loop or ram devices). ``size`` is
    in 512-byte sectors. ``driver`` is the driver of the device that *provides* the disk, found by
    walking up from ``/sys/block/<name>/device`` to the first virtio or PCI device: a virtio disk
    (``vdX``) reports its virtio driver (``virtio_blk``); a libata/SCSI disk or CD (``sdX``,
    ``srX``) reports its PCI host controller's driver (``ata_piix``, ``ahci``), not ``sd``/``sr``.
    ``-`` when nothing is bound or the device has no such parent.
``net <ifname> driver=<name|-> mac=<aa:bb:cc:dd:ee:ff>``
    One line per network interface that has a device behind it (``lo`` and virtual interfaces are
    left out). ``driver`` is the driver of ``/sys/class/net/<ifname>/device``: ``virtio_net`` for
    a virtio NIC, else the PCI driver (``8139cp``, ``e1000``, ``ne2k-pci``).
``root <device> fstype=<fstype>``
    Exactly one: the block device the root filesystem is mounted from, found by the device
    number of ``/`` (so a partition is reported as such, e.g. ``/dev/vda2``).

A guest that cannot find its root filesystem prints ``PVHVM-ERROR <message>`` instead;
:func:`parse_report` puts that message into its error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pvhvm.errors import GuestImageError

BEGIN = "PVHVM-REPORT-BEGIN"
END = "PVHVM-REPORT-END"
ERROR = "PVHVM-ERROR"

IDE_CLASS = 0x0101
SATA_CLASS = 0x0106

_SLOT = r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
_HEX4 = r"0x[0-9a-fA-F]{4}"
_NAME = r"\S+"
_PCI_RE = re.compile(
    rf"pci (?P<slot>{_SLOT}) class=(?P<cls>{_HEX4}) vendor=(?P<vendor>{_HEX4}) "
    rf"device=(?P<device>{_HEX4}) driver=(?P<driver>{_NAME})"
)
_BLK_RE = re.compile(rf"blk (?P<name>{_NAME}) driver=(?P<driver>{_NAME}) size=(?P<size>[0-9]+)")
_MAC = r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}"
_NET_RE = re.compile(
    rf"net (?P<ifname>{_NAME}) driver=(?P<driver>{_NAME}) mac=(?P<mac>{_MAC})"
)
_ROOT_RE = re.compile(rf"root (?P<device>{_NAME}) fstype=(?P<fstype>{_NAME})")


def _driver(token: str) -> str | None:
    return None if token == "-" else token


def _driver_token(driver: str | None) -> str:
    return "-" if driver is None else driver


@dataclass(frozen=True)
class PciFunction:
    """A PCI function as the guest sees it."""

    slot: str
    pci_class: int
    vendor: int
    device: int
    driver: str | None

    def line(self) -> str:
        return (
            f"pci {self.slot} class=0x{self.pci_class:04x} vendor=0x{self.vendor:04x} "
            f"device=0x{self.device:04x} driver={_driver_token(self.driver)}"
        )


@dataclass(frozen=True)
class BlockDevice:
    """A whole block device (``vda``, ``sda``, ``sr0``) and the driver providing it."""

    name: str
    driver: str | None
    sectors: int

    def line(self) -> str:
        return f"blk {self.name} driver={_driver_token(self.driver)} size={self.sectors}"


@dataclass(frozen=True)
class NetDevice:
    """A network interface and the driver behind it."""

    ifname: str
    driver: str | None
    mac: str

    def line(self) -> str:
        return f"net {self.ifname} driver={_driver_token(self.driver)} mac={self.mac}"


@dataclass(frozen=True)
class DeviceReport:
    """Everything one guest boot reported."""

    pci: list[PciFunction] = field(default_factory=list)
    blocks: list[BlockDevice] = field(default_factory=list)
    nets: list[NetDevice] = field(default_factory=list)
    root: str = ""
    rootfstype: str = ""

    def has_class(self, pci_class: int) -> bool:
        """Whether any PCI function has this class (e.g. :data:`IDE_CLASS`)."""
        return any(function.pci_class == pci_class for function in self.pci)

    def block(self, name: str) -> BlockDevice | None:
        return next((b for b in self.blocks if b.name == name), None)

    def net(self, ifname: str) -> NetDevice | None:
        return next((n for n in self.nets if n.ifname == ifname), None)

    def root_disk(self) -> BlockDevice | None:
        """The whole disk that holds the root filesystem (``/dev/vda2`` -> ``vda``)."""
        name = self.root.removeprefix("/dev/")
        for block in sorted(self.blocks, key=lambda b: len(b.name), reverse=True):
            if name == block.name or (
                name.startswith(block.name) and name[len(block.name):].lstrip("p").isdigit()
            ):
                return block
        return None

    def format(self) -> str:
        """The report as the guest prints it (used by tests; the guest's printer is shell)."""
        lines = [BEGIN]
        lines += [f.line() for f in self.pci]
        lines += [b.line() for b in self.blocks]
        lines += [n.line() for n in self.nets]
        lines.append(f"root {self.root} fstype={self.rootfstype}")
        lines.append(END)
        return "\n".join(lines) + "\n"


def _clean_lines(text: str) -> list[str]:
    return [line.replace("\r", "").strip() for line in text.split("\n")]


def parse_report(text: str) -> DeviceReport:
    """Find and parse the last complete device report in a console log.

    The log may hold kernel messages and carriage returns around the report. Inside the block,
    a line that is none of the four kinds (a stray kernel message) is ignored. Raises
    :class:`GuestImageError` when there is no complete block or it has no ``root`` line.
    """
    lines = _clean_lines(text)
    ends = [i for i, line in enumerate(lines) if line.endswith(END)]
    begins = [i for i, line in enumerate(lines) if line.endswith(BEGIN)]
    errors = [line[line.index(ERROR):] for line in lines if ERROR in line]
    start = end = None
    for candidate in reversed(ends):
        before = [b for b in begins if b < candidate]
        if before:
            start, end = before[-1], candidate
            break
    if start is None or end is None:
        detail = f" (guest said: {errors[-1]})" if errors else ""
        if begins:
            raise GuestImageError(f"device report started but never ended{detail}")
        raise GuestImageError(f"no device report in the console log{detail}")

    pci: list[PciFunction] = []
    blocks: list[BlockDevice] = []
    nets: list[NetDevice] = []
    root: tuple[str, str] | None = None
    for line in lines[start + 1:end]:
        if match := _PCI_RE.search(line):
            pci.append(PciFunction(
                slot=match["slot"].lower(), pci_class=int(match["cls"], 16),
                vendor=int(match["vendor"], 16), device=int(match["device"], 16),
                driver=_driver(match["driver"]),
            ))
        elif match := _BLK_RE.search(line):
            blocks.append(BlockDevice(
                name=match["name"], driver=_driver(match["driver"]), sectors=int(match["size"]),
            ))
        elif match := _NET_RE.search(line):
            nets.append(NetDevice(
                ifname=match["ifname"], driver=_driver(match["driver"]),
                mac=match["mac"].lower(),
            ))
        elif match := _ROOT_RE.search(line):
            root = (match["device"], match["fstype"])
    if root is None:
        raise GuestImageError("device report has no root line")
    return DeviceReport(pci=pci, blocks=blocks, nets=nets, root=root[0], rootfstype=root[1])
