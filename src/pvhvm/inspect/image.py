"""``inspect_image(path)``: what an installed guest's disk image holds, read offline.

Nothing is booted and nothing is mounted on the host: the partition table and superblocks
are parsed here (:mod:`.partitions`), ext2/3/4 is read through debugfs (:mod:`.extfs`),
initramfs images through the cpio reader (:mod:`.cpio`). Raw images only (qcow2 and other
formats are reported as unreadable: ``qemu-img convert`` them, or boot them as they are).

``find_boot_entry(path, directory)`` is what pygrub does for a PV guest: read the boot loader
configuration, pick its default entry, copy that kernel and initrd out of the image.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pvhvm.inspect import bootloader, etcfiles
from pvhvm.inspect.bootloader import BootConfig, BootEntry
from pvhvm.inspect.cpio import Initramfs, read_initramfs
from pvhvm.inspect.errors import ImageFormatError, ImageUnreadableError, InspectError
from pvhvm.inspect.etcfiles import CrypttabEntry, FstabEntry
from pvhvm.inspect.extfs import DirEntry, ExtFilesystem
from pvhvm.inspect.fatfs import FatFilesystem
from pvhvm.inspect.partitions import (
    Partition,
    PartitionTable,
    Signature,
    probe_signature,
    read_table,
)
from pvhvm.inspect.sandbox import ImageHandle

#: storage and network drivers the report looks for, with the Kconfig symbol of each
DRIVERS: dict[str, str] = {
    "virtio_pci": "VIRTIO_PCI", "virtio_blk": "VIRTIO_BLK", "virtio_scsi": "SCSI_VIRTIO",
    "virtio_net": "VIRTIO_NET", "xen_blkfront": "XEN_BLKDEV_FRONTEND",
    "xen_netfront": "XEN_NETDEV_FRONTEND", "ata_piix": "ATA_PIIX",
    "ata_generic": "ATA_GENERIC", "ahci": "SATA_AHCI", "sd_mod": "BLK_DEV_SD",
    "e1000": "E1000", "8139cp": "8139CP", "8139too": "8139TOO", "ne2k_pci": "NE2K_PCI",
    "ext4": "EXT4_FS",
}
STORAGE_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_scsi", "xen_blkfront", "ata_piix",
                   "ata_generic", "ahci", "sd_mod", "ext4")
#: where an initramfs (or a kernel) may be read from: far above any real one
MAX_INITRAMFS = 512 << 20
_QCOW = b"QFI\xfb"
_KERNEL_FILE = re.compile(r"^(?:vmlinuz|vmlinux|bzImage|kernel)(?:-(.+))?$")
_INITRD_NAMES = ("initrd.img-{}", "initramfs-{}.img", "initrd-{}", "initrd-{}.img")


@dataclass(frozen=True)
class DriverState:
    """Where one driver is for one kernel: built in, installed as a module, in the initramfs."""

    builtin: bool
    installed: bool | None
    initramfs: bool | None

    @property
    def at_boot(self) -> bool:
        """Whether the kernel can use it before the root filesystem is mounted."""
        return self.builtin or bool(self.initramfs)

    def to_json(self) -> dict[str, Any]:
        return {"builtin": self.builtin, "installed": self.installed,
                "initramfs": self.initramfs}


@dataclass
class InitramfsReport:
    """One initramfs: its layout and the drivers it carries."""

    path: str
    size: int
    compression: str
    microcode: bool
    segments: list[dict[str, Any]]
    releases: list[str]
    modules: set[str]
    builtin: set[str]
    error: str | None = None
    #: initramfs-tools' MODULES= (most, dep, list, netboot) from the copied conf/initramfs.conf
    modules_policy: str | None = None
    #: ``initramfs-tools`` or ``dracut`` when recognised by their own files, else None
    generator: str | None = None
    #: whether it carries the kernel's modules.builtin (so "not built in" is known)
    builtin_listed: bool = False

    def to_json(self) -> dict[str, Any]:
        carried = sorted(d for d in DRIVERS if d in self.modules)
        return {"path": self.path, "size": self.size, "compression": self.compression,
                "microcode": self.microcode, "segments": self.segments,
                "releases": self.releases, "drivers": carried, "modules": len(self.modules),
                "modules_policy": self.modules_policy, "generator": self.generator,
                "error": self.error}


@dataclass
class KernelReport:
    """One installed kernel release."""

    release: str
    vmlinuz: str | None
    initrd: InitramfsReport | None
    modules_dir: bool
    drivers: dict[str, DriverState] = field(default_factory=dict)
    #: whether what is built into this kernel is known (config-* or modules.builtin read)
    builtin_known: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "vmlinuz": self.vmlinuz, "modules_dir": self.modules_dir,
                "initrd": self.initrd.to_json() if self.initrd else None,
                "drivers": {k: v.to_json() for k, v in self.drivers.items()}}


@dataclass(frozen=True)
class FilesystemReport:
    """One filesystem (or container) found on the image."""

    partition: int | None
    offset: int
    size: int
    signature: Signature | None
    partuuid: str = ""
    role: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "size": self.size,
                "type": self.signature.type if self.signature else None,
                "uuid": self.signature.uuid if self.signature else "",
                "label": self.signature.label if self.signature else "",
                "partuuid": self.partuuid, "role": self.role}


@dataclass
class ImageReport:
    """Everything :func:`inspect_image` found."""

    path: str
    size: int
    table: PartitionTable
    filesystems: list[FilesystemReport]
    os_release: dict[str, str] = field(default_factory=dict)
    kernels: list[KernelReport] = field(default_factory=list)
    bootloader: BootConfig | None = None
    default_grub: dict[str, str] = field(default_factory=dict)
    fstab: list[FstabEntry] = field(default_factory=list)
    crypttab: list[CrypttabEntry] = field(default_factory=list)
    gettys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: debugfs invocations the inspection made
    debugfs_calls: int = 0

    @property
    def root(self) -> FilesystemReport | None:
        return next((f for f in self.filesystems if f.role == "root"), None)

    @property
    def default_entry(self) -> BootEntry | None:
        return self.bootloader.default_entry if self.bootloader else None

    def kernel_for(self, entry: BootEntry | None) -> KernelReport | None:
        """The kernel a boot entry boots (matched by file name), else the newest one."""
        if entry is not None:
            name = posixpath.basename(entry.kernel)
            for kernel in self.kernels:
                if kernel.vmlinuz and posixpath.basename(kernel.vmlinuz) == name:
                    return kernel
            match = _KERNEL_FILE.match(name)
            if match and match.group(1):
                for kernel in self.kernels:
                    if kernel.release == match.group(1):
                        return kernel
        return self.kernels[-1] if self.kernels else None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "size": self.size, "partition_table": self.table.to_json(),
            "filesystems": [f.to_json() for f in self.filesystems],
            "os": self.os_release, "kernels": [k.to_json() for k in self.kernels],
            "bootloader": self.bootloader.to_json() if self.bootloader else None,
            "default_grub": self.default_grub,
            "fstab": [e.to_json() for e in self.fstab],
            "crypttab": [e.to_json() for e in self.crypttab],
            "gettys": self.gettys, "notes": self.notes,
        }


def _open_image(path: Path) -> tuple[int, bytes]:
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
            size = stream.seek(0, os.SEEK_END)  # st_size is 0 for a block device
    except FileNotFoundError as err:
        raise ImageUnreadableError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise ImageUnreadableError(f"{path}: is a directory, not a disk image") from err
    except OSError as err:
        raise ImageUnreadableError(f"{path}: cannot read: {err.strerror or err}") from err
    if head == _QCOW:
        raise ImageUnreadableError(
            f"{path}: a qcow2 image; only raw images are read (qemu-img convert -O raw)"
        )
    return size, head


def open_image(path: Path) -> int:
    """The size of a raw image that can be read (InspectError: not one)."""
    return _open_image(path)[0]


def partition_filesystems(path: Path,
                          size: int) -> tuple[PartitionTable, list[FilesystemReport]]:
    """The image's partition table and what each partition holds (signatures probed)."""
    return _filesystems(path, size)


def read_guest(path: Path, report: ImageReport, root: GuestFilesystem,
               boot: GuestFilesystem | None, boot_partition: int | None) -> None:
    """Fill ``report`` from a guest's filesystems read through other readers (``guest check
    --deep``: the appliance's)."""
    guest = _Guest(path, root, boot, boot_partition)
    _read_etc(guest, report)
    _read_bootloader(guest, report)
    _read_kernels(guest, report)
    report.debugfs_calls = guest.calls


def _filesystems(path: Path, size: int) -> tuple[PartitionTable, list[FilesystemReport]]:
    with open(path, "rb") as stream:
        table = read_table(stream, size)
        if table.scheme == "none":
            return table, [FilesystemReport(None, 0, size, probe_signature(stream, 0))]
        found = []
        for part in table.partitions:
            found.append(FilesystemReport(
                part.number, part.start, part.size, probe_signature(stream, part.start),
                part.partuuid,
            ))
        return table, found


class GuestFilesystem(Protocol):
    """What the inspection reads a filesystem through (debugfs for ext, mtools for FAT)."""

    calls: int

    def listdir(self, path: str) -> dict[str, DirEntry] | None: ...
    def exists(self, path: str) -> bool: ...
    def read(self, path: str, limit: int | None = None) -> bytes | None: ...
    def read_text(self, path: str) -> str | None: ...
    def dump(self, path: str, destination: Path) -> bool: ...


class _Guest:
    """The guest's filesystems, readable by guest path (``/boot`` may be its own partition)."""

    def __init__(self, image: Path, root: GuestFilesystem, boot: GuestFilesystem | None,
                 boot_partition: int | None = None) -> None:
        self.image = image
        self.root = root
        self.boot = boot
        self.boot_partition = boot_partition

    def locate(self, path: str) -> tuple[GuestFilesystem, str]:
        if self.boot is not None and (path == "/boot" or path.startswith("/boot/")):
            return self.boot, path[5:] or "/"
        return self.root, path

    def read_text(self, path: str) -> str | None:
        fs, inner = self.locate(path)
        return fs.read_text(inner)

    def listdir(self, path: str) -> list[str]:
        fs, inner = self.locate(path)
        listing = fs.listdir(inner)
        return sorted(listing) if listing else []

    @property
    def calls(self) -> int:
        return self.root.calls + (self.boot.calls if self.boot else 0)


def _ext(fs: FilesystemReport) -> bool:
    return fs.signature is not None and fs.signature.type in ("ext2", "ext3", "ext4")


def matches(fs: FilesystemReport, device: etcfiles.DeviceName) -> bool:
    """Whether ``device`` (UUID=, LABEL=, PARTUUID=) names filesystem ``fs``."""
    sig = fs.signature
    if device.naming is etcfiles.Naming.UUID:
        return sig is not None and sig.uuid.lower() == device.value.lower()
    if device.naming is etcfiles.Naming.LABEL:
        return sig is not None and sig.label == device.value
    if device.naming is etcfiles.Naming.PARTUUID:
        return bool(fs.partuuid) and fs.partuuid.lower() == device.value.lower()
    return False


def inspect_image(path: Path) -> ImageReport:
    """Inspect a raw disk image (partitioned or a bare filesystem); see the module docstring."""
    size, _head = _open_image(path)
    table, filesystems = _filesystems(path, size)
    report = ImageReport(str(path), size, table, filesystems)
    guest = _find_guest(path, report)
    if guest is None:
        report.notes.append("no Linux root filesystem (ext2/3/4 with /etc) found")
        return report
    _read_etc(guest, report)
    _read_bootloader(guest, report)
    _read_kernels(guest, report)
    report.debugfs_calls = guest.calls
    return report


def _find_guest(path: Path, report: ImageReport) -> _Guest | None:
    candidates = [f for f in report.filesystems if _ext(f)]
    for other in report.filesystems:
        if other.signature is not None and not _ext(other):
            kind = other.signature.type
            if kind in ("crypto_LUKS", "LVM2_member", "xfs", "btrfs"):
                report.notes.append(
                    f"partition {other.partition}: {kind} is not read (ext2/3/4 only)"
                )
    if not candidates:
        return None
    root: tuple[int, GuestFilesystem] | None = None
    readers: dict[int, GuestFilesystem] = {}
    handle = ImageHandle(path)  # one descriptor for every confined reader of this image
    if handle.privileged:
        report.notes.append(f"debugfs and mtools ran {handle.confinement}")
    for index, fs in enumerate(report.filesystems):
        if fs not in candidates:
            continue
        reader: GuestFilesystem = ExtFilesystem(path, fs.offset, handle=handle)
        readers[index] = reader
        try:
            if root is None and reader.listdir("/etc") is not None and (
                reader.exists("/etc/fstab") or reader.exists("/etc/os-release")
                or reader.exists("/etc/inittab")
            ):
                root = (index, reader)
        except InspectError as err:
            report.notes.append(f"partition {fs.partition}: {err}")
    if root is None:
        return None
    report.filesystems[root[0]] = _with_role(report.filesystems[root[0]], "root")
    fstab_text = root[1].read_text("/etc/fstab") or ""
    for index, fs in enumerate(report.filesystems):
        if fs.signature is not None and fs.signature.type == "vfat":
            try:
                readers[index] = FatFilesystem(path, fs.offset, handle=handle)
            except InspectError as err:
                report.notes.append(f"partition {fs.partition}: {err}")
    boot: GuestFilesystem | None = None
    boot_partition: int | None = None
    for entry in etcfiles.parse_fstab(fstab_text):
        if entry.mountpoint != "/boot":
            continue
        for index, fs in enumerate(report.filesystems):
            if index in readers and index != root[0] and (
                matches(fs, entry.device) or _kernel_name_matches(fs, entry.device)
            ):
                boot, boot_partition = readers[index], fs.partition
                report.filesystems[index] = _with_role(fs, "boot")
    if boot is None and not root[1].exists("/boot/grub") and not _has_kernels(root[1], "/boot"):
        for index, reader in readers.items():  # /boot not in fstab: look for one anyway
            if index != root[0] and _looks_like_boot(reader):
                boot, boot_partition = reader, report.filesystems[index].partition
                report.filesystems[index] = _with_role(report.filesystems[index], "boot")
                break
    return _Guest(path, root[1], boot, boot_partition)


def _kernel_name_matches(fs: FilesystemReport, device: etcfiles.DeviceName) -> bool:
    return device.naming is etcfiles.Naming.KERNEL_NAME and device.partition == fs.partition


def _looks_like_boot(reader: GuestFilesystem) -> bool:
    names = {"/grub", "/grub2", *bootloader.EXTLINUX_PATHS}
    return _has_kernels(reader, "/") or any(
        reader.exists(n) for n in sorted(names) if not n.startswith("/boot/"))


def _has_kernels(reader: GuestFilesystem, directory: str) -> bool:
    listing = reader.listdir(directory) or {}
    return any(_KERNEL_FILE.match(name) for name in listing)


def _with_role(fs: FilesystemReport, role: str) -> FilesystemReport:
    return FilesystemReport(fs.partition, fs.offset, fs.size, fs.signature, fs.partuuid, role)


def _read_etc(guest: _Guest, report: ImageReport) -> None:
    os_release = guest.read_text("/etc/os-release") or guest.read_text("/usr/lib/os-release")
    if os_release:
        values = etcfiles.parse_shell_assignments(os_release)
        report.os_release = {k: values[k] for k in ("ID", "VERSION_ID", "PRETTY_NAME", "NAME")
                             if k in values}
    report.fstab = etcfiles.parse_fstab(guest.read_text("/etc/fstab") or "")
    report.crypttab = etcfiles.parse_crypttab(guest.read_text("/etc/crypttab") or "")
    default_grub = guest.read_text("/etc/default/grub")
    if default_grub:
        values = etcfiles.parse_shell_assignments(default_grub)
        report.default_grub = {k: v for k, v in values.items() if k.startswith("GRUB_")}
    gettys = []
    for unit in guest.listdir("/etc/systemd/system/getty.target.wants"):
        match = re.match(r"^(?:serial-)?getty@(.+)\.service$", unit)
        if match:
            gettys.append(match.group(1))
    gettys += etcfiles.parse_inittab_gettys(guest.read_text("/etc/inittab") or "")
    report.gettys = gettys


def _read_bootloader(guest: _Guest, report: ImageReport) -> None:
    for paths, parse in (
        (bootloader.GRUB2_PATHS, "grub2"), (bootloader.EXTLINUX_PATHS, "extlinux"),
        (bootloader.GRUB1_PATHS, "grub1"),
    ):
        for fs in (guest.boot, guest.root):
            if fs is None:
                continue
            for path in paths:
                text = fs.read_text(path)
                if text is None:
                    continue
                where = path if fs is guest.root else f"partition {guest.boot_partition}:{path}"
                if parse == "grub2":
                    env_path = posixpath.join(posixpath.dirname(path), "grubenv")
                    env = bootloader.parse_grubenv(fs.read_text(env_path) or "")
                    report.bootloader = bootloader.parse_grub2(text, where, env)
                    if not report.bootloader.entries and "blscfg" in text:
                        report.bootloader = _bls(fs, path, where, env)
                elif parse == "extlinux":
                    report.bootloader = bootloader.parse_extlinux(text, path)
                    report.bootloader = _rebase(report.bootloader, where)
                else:
                    report.bootloader = bootloader.parse_grub1(text, where)
                report.bootloader = _guest_paths(report.bootloader, fs is guest.boot)
                return
    report.notes.append("no boot loader configuration found (grub.cfg, menu.lst, extlinux)")


def _bls(fs: GuestFilesystem, grub_path: str, where: str, env: dict[str, str]) -> BootConfig:
    """grub.cfg's ``blscfg``: the entries directory is on the same partition as grub.cfg."""
    top = "/boot" if grub_path.startswith("/boot/") else ""
    directory = f"{top}/loader/entries"
    listing = fs.listdir(directory) or {}
    texts = {name: fs.read_text(f"{directory}/{name}") or ""
             for name in sorted(listing) if name.endswith(".conf")}
    config = bootloader.parse_bls(texts, f"{where} + {directory}", env)
    if not top:
        return config
    entries = tuple(  # BLS paths are relative to the partition, which is / here
        BootEntry(e.title, "/boot" + e.kernel if not e.kernel.startswith("/boot/") else e.kernel,
                  tuple(i if i.startswith("/boot/") else "/boot" + i for i in e.initrd),
                  e.cmdline)
        for e in config.entries
    )
    return BootConfig(config.loader, config.path, entries, config.default, config.notes)


def _rebase(config: BootConfig, where: str) -> BootConfig:
    return BootConfig(config.loader, where, config.entries, config.default, config.notes)


def _guest_paths(config: BootConfig, on_boot_partition: bool) -> BootConfig:
    """Entry paths as the guest sees them: ``/vmlinuz-x`` on a /boot partition is
    ``/boot/vmlinuz-x``."""
    if not on_boot_partition:
        return config
    entries = tuple(
        BootEntry(e.title, "/boot" + e.kernel if e.kernel.startswith("/") else e.kernel,
                  tuple("/boot" + i if i.startswith("/") else i for i in e.initrd), e.cmdline)
        for e in config.entries
    )
    return BootConfig(config.loader, config.path, entries, config.default, config.notes)


def _read_kernels(guest: _Guest, report: ImageReport) -> None:
    boot_files = guest.listdir("/boot")
    releases: dict[str, str | None] = {}
    for name in boot_files:
        match = _KERNEL_FILE.match(name)
        if match and match.group(1) and not name.endswith((".old", ".bak")):
            releases[match.group(1)] = f"/boot/{name}"
    modules = guest.listdir("/lib/modules")
    for release in modules:
        releases.setdefault(release, None)
    for release in sorted(releases, key=_release_key):
        kernel = KernelReport(release, releases[release], None, release in modules)
        initrd_path = next(
            (f"/boot/{pattern.format(release)}" for pattern in _INITRD_NAMES
             if pattern.format(release) in boot_files), None,
        )
        for boot_entry in report.bootloader.entries if report.bootloader else ():
            if kernel.vmlinuz and posixpath.basename(boot_entry.kernel) == posixpath.basename(
                    kernel.vmlinuz) and boot_entry.initrd:
                initrd_path = boot_entry.initrd[-1]
        if initrd_path is not None:
            kernel.initrd = _guest_initramfs(guest, initrd_path)
        kernel.drivers, kernel.builtin_known = _drivers(guest, release, kernel.initrd)
        report.kernels.append(kernel)
    if not report.kernels:
        report.notes.append("no kernel found in /boot or /lib/modules")
        return
    default = report.default_entry
    booted = report.kernel_for(default)
    if default is not None and default.initrd and booted is not None and (
            booted.initrd is None or booted.initrd.path != default.initrd[-1]):
        # a loader's own names (SYSLINUX's /vmlinuz): the default entry's initrd is read
        booted.initrd = _guest_initramfs(guest, default.initrd[-1])
        booted.drivers, booted.builtin_known = _drivers(guest, booted.release, booted.initrd)


def _release_key(release: str) -> list[Any]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", release)]


def _guest_initramfs(guest: _Guest, path: str) -> InitramfsReport:
    fs, inner = guest.locate(path)
    try:
        data = fs.read(inner, limit=MAX_INITRAMFS)
    except InspectError as err:
        return _failed_initramfs(path, str(err))
    if data is None:
        return _failed_initramfs(path, "file not found")
    return initramfs_report(path, data)


def _failed_initramfs(path: str, error: str) -> InitramfsReport:
    return InitramfsReport(path, 0, "unknown", False, [], [], set(), set(), error)


def initramfs_report(path: str, data: bytes) -> InitramfsReport:
    """The report of one initramfs image's bytes (an unreadable one carries ``error``)."""
    try:
        parsed: Initramfs = read_initramfs(data)
    except InspectError as err:
        return InitramfsReport(path, len(data), "unknown", False, [], [], set(), set(), str(err))
    modules = parsed.modules()
    builtin = parsed.builtin()
    conf = parsed.files.get("conf/initramfs.conf", b"").decode(errors="replace")
    policy = etcfiles.parse_shell_assignments(conf).get("MODULES")
    return InitramfsReport(
        path, len(data), parsed.compression, parsed.microcode,
        [s.to_json() for s in parsed.segments], sorted(modules),
        parsed.module_files(),  # wherever they are: an init of its own may insmod any path
        set().union(*builtin.values()) if builtin else set(),
        modules_policy=policy, generator=parsed.generator, builtin_listed=bool(builtin),
    )


def inspect_initramfs_file(path: Path) -> InitramfsReport:
    """An initramfs on the host (a config's ``ramdisk=``)."""
    try:
        if os.path.getsize(path) > MAX_INITRAMFS:
            raise ImageFormatError(f"{path}: over {MAX_INITRAMFS >> 20} MiB, not an initramfs")
        data = path.read_bytes()
    except OSError as err:
        raise ImageUnreadableError(f"{path}: cannot read: {err.strerror or err}") from err
    return initramfs_report(str(path), data)


def _drivers(guest: _Guest, release: str,
             initrd: InitramfsReport | None) -> tuple[dict[str, DriverState], bool]:
    """Each driver's state for one kernel, and whether what is built in is known at all."""
    base = f"/lib/modules/{release}"
    dep = guest.read_text(f"{base}/modules.dep")
    builtin_text = guest.read_text(f"{base}/modules.builtin") or ""
    config = guest.read_text(f"/boot/config-{release}") or ""
    installed = None
    if dep is not None:
        installed = {
            posixpath.basename(line.split(":", 1)[0]).split(".ko")[0].replace("-", "_")
            for line in dep.splitlines() if ":" in line
        }
    builtin = {posixpath.basename(line).removesuffix(".ko").replace("-", "_")
               for line in builtin_text.split()}
    symbols = dict(re.findall(r"^CONFIG_([A-Z0-9_]+)=([ym])$", config, re.M))
    out: dict[str, DriverState] = {}
    for driver, symbol in DRIVERS.items():
        is_builtin = driver in builtin or symbols.get(symbol) == "y" or (
            initrd is not None and driver in initrd.builtin)
        in_initrd = None
        if initrd is not None and initrd.error is None:
            in_initrd = driver in initrd.modules
        out[driver] = DriverState(
            is_builtin, None if installed is None else driver in installed, in_initrd,
        )
    known = bool(symbols or builtin_text.strip() or (initrd is not None and initrd.builtin_listed))
    return out, known


@dataclass(frozen=True)
class ExtractedBoot:
    """The default entry's kernel and initrd, copied out of the image (as pygrub does)."""

    entry: BootEntry
    kernel: Path
    initrd: Path | None
    cmdline: str


def find_boot_entry(image: Path, directory: Path | None = None) -> ExtractedBoot:
    """Read ``image``'s boot loader config and copy its default entry's kernel and initrd
    into ``directory`` (a new temporary directory when None). Raises InspectError."""
    report = inspect_image(image)
    entry = report.default_entry
    if entry is None:
        raise ImageFormatError(f"{image}: no default boot entry "
                               f"({'; '.join(report.notes) or 'boot loader has no entries'})")
    guest = _find_guest(image, ImageReport(str(image), report.size, report.table,
                                           list(report.filesystems)))
    if guest is None:
        raise ImageFormatError(f"{image}: no Linux root filesystem found")
    out = Path(tempfile.mkdtemp(prefix="pvhvm-boot-", dir=directory))
    try:
        return _extract(image, guest, entry, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # nothing half-made is left behind
        raise


def _extract(image: Path, guest: _Guest, entry: BootEntry, out: Path) -> ExtractedBoot:
    kernel = out / posixpath.basename(entry.kernel)
    source, inner = guest.locate(entry.kernel)
    if not source.dump(inner, kernel):
        raise ImageFormatError(f"{image}: boot entry {entry.title!r}: kernel {entry.kernel} "
                               "is not in the image")
    initrd: Path | None = None
    if entry.initrd:
        initrd = out / posixpath.basename(entry.initrd[-1])
        source, inner = guest.locate(entry.initrd[-1])
        if not source.dump(inner, initrd):
            raise ImageFormatError(f"{image}: boot entry {entry.title!r}: initrd "
                                   f"{entry.initrd[-1]} is not in the image")
    return ExtractedBoot(entry, kernel, initrd, entry.cmdline)


def partition_of(report: ImageReport, number: int | None) -> Partition | None:
    return next((p for p in report.table.partitions if p.number == number), None)
