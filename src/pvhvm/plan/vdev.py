"""Virtual device names and numbers, per xen-vbd-interface(7).

* ``xvd`` disks 0..15 with partitions 0..15: ``202 << 8 | disk << 4 | part``;
  larger disks or partitions: ``1 << 28 | disk << 8 | part``.
* ``sd`` disks 0..15 with partitions 0..15: ``8 << 8 | disk << 4 | part``; no larger ones
  (the extended form is xvd's; libxl refuses ``sdq`` too).
* ``hd`` disks 0..19 (a..t): major ``[3, 22, 33, 34, 56, 57, 88, 89, 90, 91][disk // 2]``,
  minor ``(disk % 2) * 64 + part``.

Disk letters count like spreadsheet columns: a=0 .. z=25, aa=26, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from pvhvm.errors import SpecError

_HD_MAJORS = (3, 22, 33, 34, 56, 57, 88, 89, 90, 91)
_NAME = re.compile(r"^(xvd|hd|sd)([a-z]+)(0|[1-9][0-9]*)?$")
_EXTENDED = 1 << 28
_XL_NUMBERED = re.compile(r"^d(0|[1-9][0-9]{0,6})p(0|[1-9][0-9]{0,2})$")
_BARE_NUMBER = re.compile(r"^(0x[0-9a-fA-F]{1,8}|[1-9][0-9]{0,9})$")
_INT_MAX = (1 << 31) - 1
#: hda..hdd, the four places of the emulated IDE controller (channel, unit)
IDE_PLACES: dict[str, tuple[int, int]] = {
    "hda": (0, 0), "hdb": (0, 1), "hdc": (1, 0), "hdd": (1, 1),
}


class VdevFamily(Enum):
    """The naming scheme of a virtual device."""

    HD = "hd"
    SD = "sd"
    XVD = "xvd"
    #: a bare virtual-device number (``51712``, ``0xca00``), which xl also accepts
    NUMBER = "number"


@dataclass(frozen=True)
class Vdev:
    """A parsed virtual device name such as ``xvda`` or ``hdc``."""

    name: str
    family: VdevFamily
    disk: int
    partition: int
    #: the number itself, for the NUMBER family
    number: int | None = None

    @property
    def devid(self) -> int:
        """The xenbus device id (virtual-device number) of this name."""
        return vdev_to_devid(self)

    @property
    def ide_place(self) -> tuple[int, int] | None:
        """(channel, unit) on the emulated IDE controller, for hda..hdd whole disks."""
        if self.partition:
            return None
        return IDE_PLACES.get(self.name)


def letters_to_index(letters: str) -> int:
    """``a`` → 0, ``z`` → 25, ``aa`` → 26 (bijective base 26)."""
    index = 0
    for char in letters:
        index = index * 26 + (ord(char) - ord("a") + 1)
    return index - 1


def index_to_letters(index: int) -> str:
    """Inverse of :func:`letters_to_index`."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return letters


def parse_vdev(name: str) -> Vdev:
    """Parse ``name`` (``xvda``, ``hdc``, ``sdb1``, ...) or raise SpecError.

    As libxl does, ``d<disk>p<partition>`` is the xvd disk and partition by number
    (``d0p0`` is ``xvda``), and a bare number (decimal or 0x hex) is the device number itself.
    """
    numbered = _XL_NUMBERED.fullmatch(name)
    if numbered:
        disk, partition = int(numbered.group(1)), int(numbered.group(2))
        if disk >= 1 << 20 or partition >= 256:
            raise SpecError(
                f"virtual device {name!r}: d<disk>p<partition> allows disks below 2^20 and "
                "partitions below 256"
            )
        return Vdev(name=name, family=VdevFamily.XVD, disk=disk, partition=partition)
    if _BARE_NUMBER.fullmatch(name):
        number = int(name, 0)
        if not 0 < number <= _INT_MAX:
            raise SpecError(f"virtual device {name!r}: a device number is from 1 to {_INT_MAX}")
        return Vdev(name=name, family=VdevFamily.NUMBER, disk=0, partition=0, number=number)
    match = _NAME.fullmatch(name)
    if not match:
        raise SpecError(
            f"virtual device {name!r} is not a disk name: use hdX, sdX or xvdX "
            "(e.g. hda, sda, xvda), optionally with a partition number, d<disk>p<partition> "
            "or a device number"
        )
    prefix, letters, part_text = match.groups()
    if len(letters) > 4:
        raise SpecError(f"virtual device {name!r}: disk letters {letters!r} are too many")
    family = VdevFamily(prefix)
    disk = letters_to_index(letters)
    partition = int(part_text) if part_text else 0
    vdev = Vdev(name=name, family=family, disk=disk, partition=partition)
    vdev_to_devid(vdev)  # range checks
    return vdev


def vdev_to_devid(vdev: Vdev) -> int:
    """The virtual-device number of ``vdev`` (xen-vbd-interface(7))."""
    if vdev.number is not None:
        return vdev.number
    disk, part = vdev.disk, vdev.partition
    if vdev.family is VdevFamily.HD:
        if disk >= 2 * len(_HD_MAJORS) or part >= 64:
            raise SpecError(
                f"virtual device {vdev.name!r}: hd disks go from hda to hdt, "
                "partitions from 1 to 63"
            )
        return _HD_MAJORS[disk // 2] << 8 | (disk % 2) * 64 + part
    if disk < 16 and part < 16:
        major = 202 if vdev.family is VdevFamily.XVD else 8
        return major << 8 | disk << 4 | part
    if vdev.family is VdevFamily.SD:
        # The extended numbers are xvd's alone: sdq would get xvdq's number. libxl refuses too.
        raise SpecError(
            f"virtual device {vdev.name!r}: sd disks go from sda to sdp, partitions from 1 "
            "to 15; use xvd names (xvdq, xvdaa, ...) for more"
        )
    if disk >= 1 << 20 or part >= 256:
        raise SpecError(
            f"virtual device {vdev.name!r}: disk or partition number out of range "
            "(extended numbers allow 2^20 disks and 255 partitions)"
        )
    return _EXTENDED | disk << 8 | part
