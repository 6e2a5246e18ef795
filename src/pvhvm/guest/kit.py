"""The guest image kit: build it into a directory, or find out that it is already built.

``build_kit(DIR)`` writes::

    DIR/vmlinuz             the Debian kernel (linux-image-6.1.*-amd64)
    DIR/initramfs.cpio.gz   busybox + storage/ext4 modules; its /init mounts the root fs
    DIR/rootfs.ext4         ext4, label pvhvm-root; busybox init prints the device report
    DIR/boot.img            MBR + FAT/SYSLINUX partition + a copy of rootfs.ext4 (partition 2)
    DIR/manifest.json       packages, kernel release, modules, sizes and sha256 of each output
    DIR/debs/*.deb          the downloaded packages (a rebuild is offline)

Kernel command line conventions (initramfs /init and rootfs rcS):

    console=ttyS0           the report goes to ttyS0 in any case; the console should too
    root=/dev/vda | /dev/sda1 | LABEL=x | UUID=x   default: the first fs labelled pvhvm-root
    rootfstype=ext4         rootwait=<s> / pvhvm.rootwait=<s>  (default 30)
    pvhvm.poweroff=1        power off after the report (and on an initramfs failure)

boot.img's SYSLINUX default label ``pvhvm`` appends ``console=ttyS0,115200 root=LABEL=pvhvm-root``
and keeps running after the report; label ``pvhvm-poweroff`` also powers off.

A built kit is recognised by its manifest: when ``manifest.json`` names the same recipe
(:data:`RECIPE_VERSION` and the scripts' contents) and every output exists with its recorded
size, :func:`build_kit` returns at once without asking apt anything. ``force=True`` rebuilds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvhvm.errors import GuestImageError
from pvhvm.guest import bootdisk, debs, initramfs, rootfs
from pvhvm.guest.modules import ModuleInfo, ModuleSource, resolve
from pvhvm.hostfs import directory_lock

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
MANIFEST = "manifest.json"
OUTPUTS = ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img")
SCRIPT_FILES = ("init", "rcS", "report.sh", "inittab", "acpi-power", "uevent")

#: Modules the initramfs loads, in this order after their dependencies: disk controllers,
#: disks, CD-ROMs, the root filesystem. crc32c_generic satisfies ext4's ``softdep pre:
#: crypto-crc32c`` (crc32c-intel needs SSE4.2, which TCG's default CPU lacks). xen-blkfront
#: is the PV disk driver on Xen (a PV domU's xvda root, an HVM guest's PV disks).
STORAGE_MODULES = (
    "ata_piix", "ata_generic", "ahci", "sym53c8xx", "virtio_pci", "virtio_blk", "sd_mod", "sr_mod",
    "xen-blkfront", "crc32c_generic", "ext4",
)
#: Modules the root filesystem's rcS loads as well: NICs (8139cp before 8139too: QEMU's
#: rtl8139 is a C+ chip, which 8139too refuses anyway), af_packet (built in on Debian), and
#: the ACPI power button with evdev for acpid, and pvpanic-mmio, the driver of QEMU's ISA
#: pvpanic device (ACPI QEMU0001), so a kernel panic reaches the host as GUEST_PANICKED.
NET_MODULES = ("virtio_net", "8139cp", "8139too", "e1000", "ne2k-pci", "xen-netfront",
               "af_packet")
ACPI_MODULES = ("button", "evdev", "pvpanic-mmio")
#: virtio_balloon follows the balloon target ``pvhvm mem-set`` moves (a module on Debian; CPU
#: hotplug, ACPI_HOTPLUG_CPU, is built in)
MEMORY_MODULES = ("virtio_balloon",)

PACKAGES = ("busybox-static", "syslinux", "syslinux-common", "mtools")
BOOT_APPEND = f"console=ttyS0,115200 root=LABEL={rootfs.ROOT_LABEL}"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Kit:
    """The paths of a built kit."""

    directory: Path

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio.gz"

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.ext4"

    @property
    def bootdisk(self) -> Path:
        return self.directory / "boot.img"

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.manifest_path)


def read_manifest(path: Path) -> dict[str, Any]:
    """A built image's JSON manifest (the kit's, an installed guest's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GuestImageError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise GuestImageError(f"{path}: not a JSON object")
    return data


def recipe_digest() -> str:
    """A digest of everything that shapes the outputs besides the packages."""
    digest = hashlib.sha256()
    digest.update(repr((
        RECIPE_VERSION, STORAGE_MODULES, NET_MODULES, ACPI_MODULES, MEMORY_MODULES, PACKAGES,
        BOOT_APPEND,
        rootfs.ROOTFS_SIZE_MIB, bootdisk.BOOT_PARTITION_MIB,
    )).encode())
    for name in SCRIPT_FILES:
        digest.update(rootfs.guest_file(name))
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_built(kit: Kit) -> bool:
    """Whether ``kit`` holds complete outputs of the current recipe (sizes checked, not hashes)."""
    try:
        manifest = kit.manifest()
    except GuestImageError:
        return False
    if manifest.get("recipe") != recipe_digest():
        return False
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict):
        return False
    for name in OUTPUTS:
        record = outputs.get(name)
        path = kit.directory / name
        if not isinstance(record, dict) or not path.is_file():
            return False
        if path.stat().st_size != record.get("size"):
            return False
    return True


def _kernel_release(unpacked: Path) -> str:
    releases = sorted(p.name for p in (unpacked / "lib" / "modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise GuestImageError(f"expected one kernel release in the package, found {releases}")
    return releases[0]


def _builtin_modules(module_dir: Path) -> list[str]:
    path = module_dir / "modules.builtin"
    return path.read_text().split() if path.exists() else []


@contextlib.contextmanager
def _workdir(directory: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_kit(directory: Path, *, force: bool = False, progress: Progress | None = None) -> Kit:
    """Build the kit into ``directory`` (see the module docstring); a no-op when it is built.

    Outputs are made in a scratch directory inside ``directory`` and moved into place only when
    all of them exist, so a failed build leaves the previous kit (or nothing) behind. Concurrent
    builds of one directory (e.g. test workers) wait for each other through ``DIR/.lock``.
    """
    say = progress or (lambda message: log.info("%s", message))
    kit = Kit(directory.resolve())
    if not force and is_built(kit):
        say("kit is up to date")
        return kit
    try:
        kit.directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GuestImageError(f"cannot create {kit.directory}: {err}") from err
    with directory_lock(kit.directory):  # one build of a kit at a time
        if not force and is_built(kit):
            say("kit is up to date")
            return kit
        _build(kit, say)
    say(f"kit built in {kit.directory}")
    return kit


def _build(kit: Kit, say: Progress) -> None:
    cache = kit.directory / "debs"

    say("resolving the kernel package")
    kernel_package = debs.resolve_kernel_package(cache)
    packages = [kernel_package, *PACKAGES]
    say(f"fetching {', '.join(packages)}")
    fetched = debs.fetch(packages, cache)

    with _workdir(kit.directory) as work:
        unpacked = work / "unpacked"
        for package in packages:
            say(f"unpacking {package}")
            debs.unpack(fetched[package], unpacked)
        release = _kernel_release(unpacked)
        module_dir = unpacked / "lib" / "modules" / release
        vmlinuz_src = unpacked / "boot" / f"vmlinuz-{release}"
        busybox = unpacked / "bin" / "busybox"
        mbr_bin = unpacked / "usr" / "lib" / "syslinux" / "mbr" / "mbr.bin"
        syslinux = unpacked / "usr" / "bin" / "syslinux"
        mtools_bin = unpacked / "usr" / "bin"
        for needed in (vmlinuz_src, busybox, mbr_bin, syslinux, mtools_bin / "mformat"):
            if not needed.exists():
                missing = needed.relative_to(unpacked)
                raise GuestImageError(f"the unpacked packages have no {missing}")

        say(f"resolving kernel modules for {release}")
        source = ModuleSource(module_dir)
        builtin = _builtin_modules(module_dir)
        storage = resolve(STORAGE_MODULES, source, builtin=builtin)
        everything = resolve(
            (*STORAGE_MODULES, *NET_MODULES, *ACPI_MODULES, *MEMORY_MODULES), source,
            builtin=builtin,
        )
        applets = rootfs.busybox_applets(busybox)
        out = work / "out"
        out.mkdir()

        say("writing initramfs.cpio.gz")
        stage = work / "initramfs"
        rootfs.stage_busybox(stage, busybox, applets)
        rootfs.stage_modules(stage, module_dir, release, storage, {"initramfs": storage})
        for name in ("dev", "proc", "sys", "newroot"):
            (stage / name).mkdir(parents=True, exist_ok=True)
        rootfs.write(stage / "init", rootfs.guest_file("init"), 0o755)
        initramfs.write_initramfs(
            stage, out / "initramfs.cpio.gz", extra=initramfs.console_nodes(),
        )

        say("writing rootfs.ext4")
        stage = work / "rootfs"
        rootfs.stage_busybox(stage, busybox, applets)
        rootfs.stage_modules(
            stage, module_dir, release, everything,
            {"initramfs": storage, "rootfs": everything},
        )
        rootfs.stage_rootfs_files(stage)
        rootfs.make_ext4(stage, out / "rootfs.ext4")

        shutil.copyfile(vmlinuz_src, out / "vmlinuz")

        say("writing boot.img")
        bootdisk.build_bootdisk(
            out / "boot.img", vmlinuz=out / "vmlinuz", initramfs=out / "initramfs.cpio.gz",
            rootfs=out / "rootfs.ext4", mbr_bin=mbr_bin, syslinux=syslinux,
            mtools_bin=mtools_bin, append=BOOT_APPEND,
        )

        say("writing manifest.json")
        manifest = _manifest(out, fetched, release, storage, everything)
        with contextlib.suppress(FileNotFoundError):
            kit.manifest_path.unlink()
        for name in OUTPUTS:
            os.replace(out / name, kit.directory / name)
        tmp_manifest = kit.directory / (MANIFEST + ".tmp")
        tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_manifest, kit.manifest_path)


def _manifest(
    out: Path, fetched: dict[str, debs.Deb], release: str, storage: list[ModuleInfo],
    everything: list[ModuleInfo],
) -> dict[str, Any]:
    return {
        "recipe": recipe_digest(),
        "recipe_version": RECIPE_VERSION,
        "kernel_release": release,
        "root_label": rootfs.ROOT_LABEL,
        "boot_append": BOOT_APPEND,
        "packages": {
            name: {"version": deb.version, "file": deb.path.name, "sha256": sha256_file(deb.path)}
            for name, deb in fetched.items()
        },
        "modules": {
            "initramfs": [m.name for m in storage],
            "rootfs": [m.name for m in everything],
        },
        "outputs": {
            name: {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
            for name in OUTPUTS
        },
    }
