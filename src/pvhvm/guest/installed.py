"""An installed Debian 12 guest, as the Debian installer would leave it on an IDE disk.

``build_installed(DIR, variant)`` writes::

    DIR/disk.img        raw, MBR-partitioned: GRUB (i386-pc) boot.img in the MBR, its core.img
                        in the gap before partition 1, partition 1 (active, type 0x83) ext4 root
    DIR/manifest.json   variant, kernel release, root UUID, root device, initramfs drivers,
                        package versions, recipe digest, size and sha256 of disk.img

The root filesystem comes from ``debootstrap`` (Debian's own installer of a base system, run as
root) with systemd, linux-image-amd64, initramfs-tools and GRUB, installed once into
``BASE/root`` (default ``~/.cache/pvhvm/installed/base``) and shared by every variant. Then, in
a copy of it:

- variant ``ide``: ``/etc/fstab`` and GRUB's ``root=`` name the root by device name,
  ``/dev/sda1`` (what an IDE install under libata calls it; hda1 before libata), with
  ``GRUB_DISABLE_LINUX_UUID=true``; variant ``full`` names it ``UUID=``, as Debian's installer
  and grub-mkconfig do by default;
- ``/boot/grub/grub.cfg`` as grub-mkconfig shapes it, the console on ttyS0 (GRUB's serial
  terminal and ``console=ttyS0,115200``); ``/etc/default/grub`` says the same;
- the initramfs is rebuilt by the guest's own ``update-initramfs -u -k all`` (chroot):
  variant ``ide`` with ``MODULES=list`` and the modules ``MODULES=dep`` picks on an IDE install
  (ata_piix, ata_generic, sd_mod, ext4): no virtio_pci, no virtio_blk (``MODULES=dep`` itself
  cannot be used in a chroot: it reads the *host's* root device); variant ``full`` keeps
  Debian's default ``MODULES=most``, which carries virtio;
- ``pvhvm-report.service`` prints the device report of :mod:`pvhvm.guest.report` on ttyS0
  once systemd has reached multi-user.target, after the line ``PVHVM-SYSTEMD multi-user``.

The filesystem is made with ``mke2fs -d`` into a file and spliced into the disk image at the
partition's offset; GRUB's core.img is made with the guest's ``grub-mkimage`` and written to
sectors 1.. with its blocklist patched, boot.img into sector 0, as grub-bios-setup does for an
MBR disk (grub-core/boot/i386/pc/boot.S, diskboot.S, util/setup.c). No loop device, no mount.

Built outputs are recognised by the manifest's recipe digest and disk size; a build holds
``DIR/.lock`` (and the base's ``BASE/.lock``) so concurrent builders wait for each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvhvm.errors import GuestImageError
from pvhvm.guest import bootdisk
from pvhvm.guest.debs import require_tool, run
from pvhvm.guest.kit import read_manifest
from pvhvm.guest.rootfs import guest_file
from pvhvm.hostfs import cache_home, directory_lock

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

RECIPE_VERSION = 2
VARIANTS = ("ide", "full")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: debootstrap --variant=minbase plus what an installed system needs to boot from its disk.
BASE_PACKAGES = (
    "systemd-sysv", "udev", "kmod", "linux-image-amd64", "initramfs-tools", "zstd",
    "grub-pc-bin", "grub2-common", "e2fsprogs",
)
#: What initramfs-tools' MODULES=dep includes for a root on ext4 behind QEMU's PIIX3 IDE.
IDE_INITRAMFS_MODULES = ("ata_piix", "ata_generic", "sd_mod", "ext4")
ROOT_DEVICE = "/dev/sda1"
KERNEL_CONSOLE = "console=tty0 console=ttyS0,115200"
DISK_MIB = 2048
GRUB_PREFIX = "(hd0,msdos1)/boot/grub"
GRUB_CORE_MODULES = ("biosdisk", "part_msdos", "ext2")
SYSTEMD_MARKER = "PVHVM-SYSTEMD multi-user"
MANIFEST = "manifest.json"
DISK = "disk.img"

# grub-core/boot/i386/pc/boot.S and include/grub/i386/pc/boot.h
_BOOT_KERNEL_SECTOR = 0x5C
_BOOT_DRIVE_CHECK = 0x66
_BOOT_CODE_END = 0x1B8  # the Windows NT disk signature and the partition table follow
_DISKBOOT_BLOCKLIST = 512 - 12  # struct grub_boot_blocklist {u64 start; u16 len; u16 segment}
_CORE_SEGMENT = 0x820  # GRUB_BOOT_I386_PC_KERNEL_SEG + 0x20


@dataclass(frozen=True)
class InstalledGuest:
    """The paths of a built installed guest."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / DISK

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.manifest_path)


def cache_root() -> Path:
    """``$PVHVM_INSTALLED_DIR`` or pvhvm's cache's ``installed`` (``~/.cache/pvhvm/installed``
    unless ``$XDG_CACHE_HOME`` says otherwise)."""
    configured = os.environ.get("PVHVM_INSTALLED_DIR")
    return Path(configured) if configured else cache_home() / "installed"


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def base_recipe() -> str:
    return _digest(RECIPE_VERSION, SUITE, MIRROR, BASE_PACKAGES)


def recipe_digest(variant: str) -> str:
    """Everything that shapes a variant's disk besides the packages."""
    return _digest(
        base_recipe(), variant, IDE_INITRAMFS_MODULES, ROOT_DEVICE, KERNEL_CONSOLE, DISK_MIB,
        GRUB_PREFIX, GRUB_CORE_MODULES, REPORT_TTY, REPORT_UNIT, DEFAULT_GRUB,
        guest_file("report.sh"),
    )


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise GuestImageError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def is_built(guest: InstalledGuest, variant: str) -> bool:
    """Whether ``guest`` holds a complete disk of the current recipe (size checked)."""
    try:
        manifest = guest.manifest()
    except GuestImageError:
        return False
    return (
        manifest.get("recipe") == recipe_digest(variant)
        and guest.disk.is_file()
        and guest.disk.stat().st_size == manifest.get("disk", {}).get("size")
    )


# -- the shared debootstrap base ------------------------------------------------------------


def _base_built(base: Path) -> bool:
    try:
        stamp = json.loads((base / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("recipe") == base_recipe() and (
        base / "root" / "boot").is_dir()


def build_base(base: Path, say: Progress) -> Path:
    """``debootstrap`` the base system into ``base/root`` once; returns that directory."""
    if _base_built(base):
        return base / "root"
    if os.geteuid() != 0:
        raise GuestImageError("building the installed guest needs root (debootstrap, chroot)")
    debootstrap = require_tool("debootstrap", "debootstrap")
    with directory_lock(base):
        if _base_built(base):
            return base / "root"
        staging = base / "root.new"
        shutil.rmtree(staging, ignore_errors=True)
        say(f"debootstrap {SUITE} with {', '.join(BASE_PACKAGES)} (a few minutes)")
        run([
            debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
            str(staging), MIRROR,
        ])
        # debootstrap leaves its package cache behind; an installed system has it cleaned.
        for deb in (staging / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        shutil.rmtree(base / "root", ignore_errors=True)
        os.replace(staging, base / "root")
        (base / "stamp.json").write_text(json.dumps({"recipe": base_recipe()}) + "\n")
    return base / "root"


# -- the disk -------------------------------------------------------------------------------


def _chroot(root: Path, *argv: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    return run(["chroot", str(root), *argv], env=env)


def kernel_release(root: Path) -> str:
    releases = sorted(p.name for p in (root / "usr" / "lib" / "modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise GuestImageError(f"expected one installed kernel, found {releases}")
    return releases[0]


def grub_cfg(release: str, root_arg: str, cmdline: str) -> str:
    """/boot/grub/grub.cfg in the shape Debian's grub-mkconfig writes (10_linux), serial too."""
    return (
        "# Written by pvhvm in the shape of grub-mkconfig's output.\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "set default=0\n"
        "set timeout=1\n"
        "insmod part_msdos\n"
        "insmod ext2\n"
        f"menuentry 'Debian GNU/Linux' --class debian --class gnu-linux {{\n"
        "\tinsmod gzio\n"
        "\tinsmod part_msdos\n"
        "\tinsmod ext2\n"
        "\tset root='hd0,msdos1'\n"
        f"\techo\t'Loading Linux {release} ...'\n"
        f"\tlinux\t/boot/vmlinuz-{release} root={root_arg} ro {cmdline}\n"
        "\techo\t'Loading initial ramdisk ...'\n"
        f"\tinitrd\t/boot/initrd.img-{release}\n"
        "}\n"
    )


DEFAULT_GRUB = (
    "# /etc/default/grub (update-grub reads it)\n"
    "GRUB_DEFAULT=0\n"
    "GRUB_TIMEOUT=1\n"
    "GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n"
    'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
    f'GRUB_CMDLINE_LINUX="{KERNEL_CONSOLE}"\n'
    "GRUB_TERMINAL=serial\n"
    'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n'
    "# the installer was told to name the root by device: grub.cfg says root=/dev/sda1\n"
    "GRUB_DISABLE_LINUX_UUID=true\n"
)

#: agetty on ttyS0 calls vhangup(), which cuts off a write already under way: retry until the
#: whole report went out (pvhvm.guest.report takes the last complete block).
REPORT_TTY = f"""#!/bin/sh
# pvhvm: print the device report on ttyS0 once systemd has reached multi-user.target.
state="$(systemctl is-active multi-user.target)"
/usr/local/sbin/pvhvm-report >/run/pvhvm-report.txt 2>&1
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    {{ echo "{SYSTEMD_MARKER}.target $state"; cat /run/pvhvm-report.txt; }} \\
        >/dev/ttyS0 2>/dev/null && exit 0
    sleep 1
done
exit 1
"""

REPORT_UNIT = (
    "[Unit]\n"
    "Description=pvhvm device report on ttyS0\n"
    "After=multi-user.target serial-getty@ttyS0.service\n"
    "\n"
    "[Service]\n"
    "Type=oneshot\n"
    "ExecStart=/usr/local/sbin/pvhvm-report-tty\n"
    "\n"
    "[Install]\n"
    "WantedBy=multi-user.target\n"
)


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)


def root_spec(variant: str, uuid: str) -> str:
    """How the variant's fstab and root= name the root filesystem."""
    return ROOT_DEVICE if variant == "ide" else f"UUID={uuid}"


def customise(root: Path, variant: str, uuid: str, say: Progress) -> str:
    """Turn a copy of the base into the installed system of ``variant``; returns the kernel."""
    release = kernel_release(root)
    spec = root_spec(variant, uuid)
    hostname = f"pvhvm-{variant}"
    _write(root / "etc" / "hostname", hostname + "\n")
    _write(root / "etc" / "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    _write(root / "etc" / "fstab", (
        "# /etc/fstab: static file system information.\n"
        "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        f"{spec}\t/\text4\terrors=remount-ro\t0\t1\n"
    ))
    default_grub = DEFAULT_GRUB if variant == "ide" else DEFAULT_GRUB.replace(
        "GRUB_DISABLE_LINUX_UUID=true", "#GRUB_DISABLE_LINUX_UUID=true")
    _write(root / "etc" / "default" / "grub", default_grub)
    _write(root / "boot" / "grub" / "grub.cfg", grub_cfg(release, spec, KERNEL_CONSOLE))
    # grub-install copies the platform's modules next to grub.cfg; normal.mod etc. load from there.
    modules_dir = root / "boot" / "grub" / "i386-pc"
    modules_dir.mkdir(parents=True, exist_ok=True)
    for source in (root / "usr" / "lib" / "grub" / "i386-pc").iterdir():
        if source.suffix in (".mod", ".lst"):
            shutil.copy2(source, modules_dir / source.name)
    _write(root / "usr" / "local" / "sbin" / "pvhvm-report", guest_file("report.sh"), 0o755)
    _write(root / "usr" / "local" / "sbin" / "pvhvm-report-tty", REPORT_TTY, 0o755)
    _write(root / "etc" / "systemd" / "system" / "pvhvm-report.service", REPORT_UNIT)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "pvhvm-report.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/pvhvm-report.service")

    conf = root / "etc" / "initramfs-tools" / "initramfs.conf"
    modules_file = root / "etc" / "initramfs-tools" / "modules"
    lines = conf.read_text().splitlines()
    want = "MODULES=list" if variant == "ide" else "MODULES=most"
    conf.write_text("\n".join(want if ln.startswith("MODULES=") else ln for ln in lines) + "\n")
    if variant == "ide":
        with open(modules_file, "a") as stream:
            stream.write("# the storage drivers this system was installed on (IDE)\n")
            stream.write("".join(f"{name}\n" for name in IDE_INITRAMFS_MODULES))
    say(f"update-initramfs -u -k all in the guest ({want})")
    _chroot(root, "update-initramfs", "-u", "-k", "all")
    return release


def initramfs_modules(root: Path, release: str) -> list[str]:
    """Module names in the guest's initramfs, listed by the guest's own lsinitramfs."""
    listing = _chroot(root, "lsinitramfs", f"/boot/initrd.img-{release}")
    names = []
    for line in listing.splitlines():
        if line.endswith(".ko") or line.endswith(".ko.xz") or line.endswith(".ko.zst"):
            names.append(Path(line).name.split(".ko")[0].replace("-", "_"))
    return sorted(set(names))


def grub_core(root: Path) -> bytes:
    """core.img from the guest's grub-mkimage: biosdisk, msdos partitions, ext2/3/4."""
    out = "/tmp/pvhvm-core.img"
    _chroot(root, "grub-mkimage", "-O", "i386-pc", "-o", out, "-p", GRUB_PREFIX,
            *GRUB_CORE_MODULES)
    path = root / out.lstrip("/")
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def patch_core(core: bytes, first_sector: int = 1) -> bytes:
    """core.img with diskboot's blocklist naming the rest of core: one contiguous extent."""
    sectors = -(-len(core) // bootdisk.SECTOR)
    padded = bytearray(core.ljust(sectors * bootdisk.SECTOR, b"\0"))
    struct.pack_into("<QHH", padded, _DISKBOOT_BLOCKLIST, first_sector + 1, sectors - 1,
                     _CORE_SEGMENT)
    return bytes(padded)


def patch_boot(boot_img: bytes, core_sector: int = 1) -> bytes:
    """boot.img's first 440 bytes: core's sector, and the hard-disk drive check nop'ed."""
    if len(boot_img) != bootdisk.SECTOR:
        raise GuestImageError(f"boot.img is {len(boot_img)} bytes, not 512")
    code = bytearray(boot_img[:_BOOT_CODE_END])
    struct.pack_into("<Q", code, _BOOT_KERNEL_SECTOR, core_sector)
    code[_BOOT_DRIVE_CHECK:_BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(code)


def assemble_disk(output: Path, *, rootfs: Path, boot_img: bytes, core_img: bytes,
                  disk_id: int) -> bootdisk.Partition:
    """MBR + GRUB core in the post-MBR gap + the root filesystem as partition 1."""
    root = bootdisk.Partition(bootdisk.ALIGN_SECTORS, rootfs.stat().st_size // bootdisk.SECTOR,
                              bootdisk.TYPE_LINUX, active=True)
    core = patch_core(core_img)
    if len(core) > (root.start - 1) * bootdisk.SECTOR:
        raise GuestImageError(f"GRUB core.img ({len(core)} bytes) does not fit before "
                              "partition 1")
    with open(output, "wb") as disk:
        disk.truncate(root.end * bootdisk.SECTOR)
    bootdisk.copy_sparse(rootfs, output, root.offset)
    with open(output, "r+b") as disk:
        disk.write(bootdisk.mbr(patch_boot(boot_img), [root], disk_id))
        disk.seek(bootdisk.SECTOR)
        disk.write(core)
    return root


def filesystem_uuid(image: Path) -> str:
    for line in run([require_tool("dumpe2fs", "e2fsprogs"), "-h", str(image)]).splitlines():
        if line.startswith("Filesystem UUID:"):
            return line.split(":", 1)[1].strip()
    raise GuestImageError(f"dumpe2fs found no UUID in {image}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def build_workdir(directory: Path) -> Iterator[Path]:
    """A private ``.build-*`` directory in ``directory`` for one build, gone afterwards."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_installed(
    directory: Path | None = None, variant: str = "ide", *, base: Path | None = None,
    force: bool = False, progress: Progress | None = None,
) -> InstalledGuest:
    """Build the installed guest ``variant`` into ``directory`` (default
    ``cache_root()/<variant>``); a no-op when it is built. See the module docstring."""
    _check_variant(variant)
    say = progress or (lambda message: log.info("%s", message))
    guest = InstalledGuest((directory or cache_root() / variant).resolve())
    if not force and is_built(guest, variant):
        say(f"installed guest {variant} is up to date")
        return guest
    try:
        guest.directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GuestImageError(f"cannot create {guest.directory}: {err}") from err
    with directory_lock(guest.directory):
        if not force and is_built(guest, variant):
            say(f"installed guest {variant} is up to date")
            return guest
        base_root = build_base((base or cache_root() / "base").resolve(), say)
        _build(guest, variant, base_root, say)
    say(f"installed guest {variant} built in {guest.directory}")
    return guest


def _build(guest: InstalledGuest, variant: str, base_root: Path, say: Progress) -> None:
    with build_workdir(guest.directory) as work:
        root = work / "root"
        say("copying the debootstrap base")
        run(["cp", "-a", "--reflink=auto", str(base_root), str(root)])
        uuid = str(uuidlib.uuid4())
        release = customise(root, variant, uuid, say)
        modules = initramfs_modules(root, release)
        virtio = {"virtio_pci", "virtio_blk"} <= set(modules)
        if virtio != (variant == "full"):
            raise GuestImageError(
                f"the {variant} initramfs {'has' if virtio else 'lacks'} virtio_pci/virtio_blk")
        say("grub-mkimage core.img")
        core = grub_core(root)
        boot_img = (root / "usr" / "lib" / "grub" / "i386-pc" / "boot.img").read_bytes()
        packages = _chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\n")
        say("mke2fs -d: the root filesystem")
        rootfs = work / "root.ext4"
        run([
            require_tool("mke2fs", "e2fsprogs"), "-q", "-F", "-t", "ext4", "-d", str(root),
            "-E", "root_owner=0:0", "-U", uuid, str(rootfs), f"{DISK_MIB - 1}M",
        ])
        if filesystem_uuid(rootfs) != uuid:
            raise GuestImageError(f"mke2fs did not give {rootfs} the UUID {uuid}")
        say("writing disk.img (MBR, GRUB, partition 1)")
        disk = work / DISK
        part = assemble_disk(disk, rootfs=rootfs, boot_img=boot_img, core_img=core,
                             disk_id=int(uuid.replace("-", "")[:8], 16))
        manifest = {
            "recipe": recipe_digest(variant),
            "variant": variant,
            "kernel_release": release,
            "root_device": root_spec(variant, uuid),
            "root_uuid": uuid,
            "partition": {"start": part.start, "sectors": part.sectors},
            "initramfs_modules": modules,
            "packages": dict(line.split(" ", 1) for line in packages.splitlines() if line),
            "disk": {"size": disk.stat().st_size, "sha256": _sha256(disk)},
        }
        with contextlib.suppress(FileNotFoundError):
            guest.manifest_path.unlink()
        os.replace(disk, guest.disk)
        tmp = guest.directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, guest.manifest_path)


def copy_disk(guest: InstalledGuest, target: Path) -> Path:
    """A private copy of the guest's disk (sparse, reflinked where the fs can)."""
    try:
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(guest.disk),
                        str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise GuestImageError(f"cannot copy {guest.disk} to {target}: {err}") from err
    return target
