"""``deep_report(path)``: an installed guest read through libguestfs's appliance (``guest check
--deep``), for what the host reader (:mod:`.image`: ext2/3/4 through debugfs) cannot read:
a root on LVM, XFS or btrfs.

The appliance (:mod:`pvhvm.guest.appliance`) opens the image read-only, inspects it, mounts the
guest's filesystems as its fstab says, and hands the same readers :func:`.image.inspect_image`
uses the guest's files (every path resolved inside the guest). The bytes that decide the
verdict (fstab, the boot loader config, the initramfs, modules.dep) are parsed on the host by
the same bounded parsers as the fast path, so ``check`` reaches its verdict by the same rules;
only the transport differs. ``create`` never calls this: an appliance launch takes 20 s or
more under TCG.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from pathlib import Path

from pvhvm.errors import printable
from pvhvm.guest.appliance import Appliance, ApplianceError, GuestOS, Timeouts
from pvhvm.inspect import etcfiles
from pvhvm.inspect.errors import ImageUnreadableError
from pvhvm.inspect.extfs import DirEntry
from pvhvm.inspect.image import (
    MAX_INITRAMFS,
    FilesystemReport,
    ImageReport,
    open_image,
    partition_filesystems,
    read_guest,
)
from pvhvm.inspect.partitions import Signature


class ApplianceReader:
    """The guest's files as :class:`.image.GuestFilesystem` reads them, through a running
    appliance with the guest mounted; ``prefix`` is the mount point this reader stands for
    (``/boot`` for a separate /boot partition), ``subvolume`` a btrfs root's subvolume name
    (GRUB names ``/@/boot/x`` what the mounted guest has at ``/boot/x``)."""

    def __init__(self, appliance: Appliance, workdir: Path, prefix: str = "",
                 subvolume: str = "") -> None:
        self.appliance = appliance
        self.workdir = workdir
        self.prefix = prefix.rstrip("/")
        self.subvolume = subvolume
        self.calls = 0

    def _guest_path(self, path: str) -> str:
        full = posixpath.normpath(self.prefix + "/" + path.lstrip("/"))
        if self.subvolume and full.startswith(f"/{self.subvolume}/"):
            full = full[len(self.subvolume) + 1:]
        return full

    def listdir(self, path: str) -> dict[str, DirEntry] | None:
        self.calls += 1
        names = self.appliance.listdir(self._guest_path(path))
        if names is None:
            return None
        return {name: DirEntry(name, 0, 0, 0) for name in names}

    def exists(self, path: str) -> bool:
        self.calls += 1
        return self.appliance.exists(self._guest_path(path))

    def read_text(self, path: str) -> str | None:
        self.calls += 1
        try:
            return self.appliance.read_text(self._guest_path(path))
        except ApplianceError:
            return None

    def read(self, path: str, limit: int | None = None) -> bytes | None:
        """A regular file's bytes (up to ``limit``, else refused as too big)."""
        self.calls += 1
        guest = self._guest_path(path)
        size = self.appliance.file_size(guest)
        if size is None:
            return None
        if size > (limit or MAX_INITRAMFS):
            raise ImageUnreadableError(f"{printable(path)}: {size} bytes, more than "
                                       f"{(limit or MAX_INITRAMFS) >> 20} MiB")
        return self.appliance.read_whole(guest, size, self.workdir, limit or MAX_INITRAMFS)

    def dump(self, path: str, destination: Path) -> bool:
        guest = self._guest_path(path)
        if self.appliance.file_size(guest) is None:
            return False
        self.appliance.download(guest, destination)
        return True


def _subvolume(guest: GuestOS, fstab: str) -> str:
    for entry in etcfiles.parse_fstab(fstab):
        if entry.mountpoint == "/":
            for option in entry.options:
                if option.startswith("subvol="):
                    return option[len("subvol="):].strip("/")
    return ""


def _filesystem(appliance: Appliance, device: str, role: str,
                partitions: list[FilesystemReport]) -> list[FilesystemReport]:
    """``partitions`` with ``device`` (a partition or an LV) given its role, type and UUID."""
    kind, uuid, label = appliance.filesystem_identity(device)
    number = appliance.partition_number(device)
    signature = Signature(kind, uuid, label)
    out = []
    found = False
    for fs in partitions:
        if number is not None and fs.partition == number:
            out.append(FilesystemReport(fs.partition, fs.offset, fs.size, signature,
                                        fs.partuuid, role))
            found = True
        else:
            out.append(fs)
    if not found:  # a logical volume: no partition of its own
        out.append(FilesystemReport(None, 0, 0, signature, "", role))
    return out


def appliance_report(appliance: Appliance, path: Path, guest: GuestOS, work: Path, *,
                     notes: list[str] | None = None, name: str | None = None) -> ImageReport:
    """The report of the guest in ``path`` that a running appliance has inspected and
    mounted (``work``: a private directory for large files); ``name`` is what the report
    calls the image (prepare reads its private copy, named as the image)."""
    size = open_image(path)
    table, filesystems = partition_filesystems(path, size)
    fstab = appliance.read_text("/etc/fstab") or ""
    filesystems = _filesystem(appliance, guest.root, "root", filesystems)
    boot_device = guest.mountpoints.get("/boot")
    if boot_device is not None:
        filesystems = _filesystem(appliance, boot_device, "boot", filesystems)
    for point, device in guest.mountpoints.items():
        if point not in ("/", "/boot"):
            filesystems = _filesystem(appliance, device, "", filesystems)
    report = ImageReport(name or str(path), size, table, filesystems, notes=list(notes or []))
    subvolume = _subvolume(guest, fstab)
    root = ApplianceReader(appliance, work, subvolume=subvolume)
    boot = ApplianceReader(appliance, work, "/boot") if boot_device else None
    number = appliance.partition_number(boot_device) if boot_device else None
    read_guest(path, report, root, boot, number)
    report.notes.append(f"read through libguestfs's appliance ({guest.distro}; root "
                        f"{guest.root})")
    return report


def deep_report(path: Path, timeouts: Timeouts | None = None) -> ImageReport:
    """Inspect a raw image through the appliance (read-only); see the module docstring.
    Raises ApplianceError (the appliance failed) or InspectError (the image is unreadable)."""
    open_image(path)
    work = Path(tempfile.mkdtemp(prefix="pvhvm-deep-"))
    try:
        with Appliance(path, readonly=True, timeouts=timeouts, tmpdir=work) as appliance:
            guest = appliance.inspect()
            notes = appliance.mount(guest)
            return appliance_report(appliance, path, guest, work, notes=notes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
