"""Installed guests of every shape issue 17 (item 3) names, derived from the one debootstrap base.

Four shapes cover the list with as few images as can (each a cached image keyed by its recipe,
``~/.cache/pvhvm/installed/shape-NAME``; ``pvhvm image build-installed --variant shape-NAME``):

=======  ==========================================================================================
lvm      root on LVM (ext4 LV), a separate /boot (ext2, partition 1, named ``/dev/sda1`` in fstab),
         swap on an LV named by its device path in fstab and ``resume=``; GRUB 2 with
         ``GRUB_DISABLE_LINUX_UUID=true`` (grub.cfg says ``root=/dev/mapper/pvhvm-root``); dracut
         with ``hostonly="yes"``
xfs      XFS root (partition 2) and a separate /boot (ext2, partition 1), both named by
         ``/dev/sdX`` in fstab; extlinux (``/boot/extlinux/extlinux.conf``, SYSLINUX's mbr.bin);
         initramfs-tools ``MODULES=list``; a crypttab entry for an encrypted swap (plain
         dm-crypt with a random key on partition 3: no header, so no UUID)
btrfs    btrfs root in the subvolume ``@`` (``rootflags=subvol=@``), GRUB 2 with UUIDs (grub.cfg
         ``search --fs-uuid``, fstab ``UUID=``); dracut with ``hostonly="no"``
xenpv    a Xen PV guest moved to QEMU: ext3 root, ``/dev/xvda1`` in fstab and ``root=``, swap
         ``/dev/xvda2`` in fstab, ``resume=`` and initramfs-tools' ``conf.d/resume``
         (``RESUME=``), ``console=hvc0`` with a getty on hvc0, ``MODULES=dep``, pygrub's
         ``/boot/grub/menu.lst`` and no boot code in the MBR (a PV guest has none)
=======  ==========================================================================================

(The ``ide``/``full`` variants of :mod:`pvhvm.guest.installed` are the ext4 + initramfs-tools
``MODULES=list|most`` + GRUB 2 shapes.)

How one is built (root: these are fixtures we make from Debian's packages, not images handed
to us, so the guest's own tools may run natively in a host chroot, as for the ide/full variants):

1. the cached base tree is copied (``cp -a --reflink=auto``) and the shape's extra packages are
   installed into the copy with the guest's own apt from the base's mirror (``chroot``; no
   second debootstrap); the shape's files are written into the tree;
2. the guest's own initramfs generator runs in the chroot, natively (seconds; under TCG in an
   appliance it took 8-30 minutes), for the shape's *original* hardware (below); pvhvm's own
   initramfs reader then checks the image carries that hardware's drivers and, unless the
   generator is generic, neither virtio_pci nor virtio_blk (what prepare has to add);
3. the disk: its MBR partition table from the host (:func:`pvhvm.guest.bootdisk.mbr`); then
   ``xenpv`` (ext3 and swap) on the host (``mke2fs -d``, ``mkswap``), as
   :mod:`pvhvm.guest.installed` makes its ext4 disk; the others in libguestfs's appliance
   (:mod:`pvhvm.guest.appliance`, one launch): LVM, the filesystems (mkfs there: the host
   needs no lvm2/xfsprogs/btrfs-progs), the tree (``tar-in``), the files that name UUIDs, and
   extlinux;
4. on the host: the MBR's boot code (GRUB's boot.img and core.img from the guest's own
   grub-mkimage, as :mod:`pvhvm.guest.installed` does; or SYSLINUX's mbr.bin).

The initramfs, and exactly how it differs from one the same generator and config make on the
original machine (the guest's own configuration is left as the shape says, for prepare):

- ``xfs`` (initramfs-tools ``MODULES=list``: ata_piix ata_generic sd_mod xfs) and ``btrfs``
  (dracut ``hostonly="no"``: a generic image, every storage driver, virtio_blk included, as on
  any machine): ``update-initramfs -u`` / ``dracut -f`` as configured; neither looks at the
  running machine (initramfs-tools' resume hook skips its /proc/swaps scan in a chroot; on the
  machine the one swap is the random-key dm-crypt one, which it rejects too). No difference.
- ``lvm`` (dracut ``hostonly="yes"``): in a chroot hostonly would inspect the *build host*,
  whose disk is virtio. Made with ``dracut -f --no-hostonly --no-hostonly-cmdline --drivers
  LIST --omit-drivers VIRTIO``: LIST is what hostonly's kernel-modules step takes on the
  installed IDE machine (:data:`LVM_HOSTONLY_DRIVERS`: the drivers it always adds, the PIIX
  IDE/SCSI disk stack, ext4 for the root LV and the ext2 /boot, dm_mod); VIRTIO
  (:data:`VIRTIO_DRIVERS`) keeps out the virtio drivers that dracut modules such as qemu and
  virtiofs add unfiltered (hostonly adds only those loaded, and an IDE machine loads none).
  Differences: the dracut modules are every one whose tools are installed (non-hostonly's
  choice: also qemu, nvdimm, overlay-root, virtiofs, ... without their virtio drivers), not
  only those the machine's devices need; the dm/lvm modules' own drivers (drivers/md, the dm
  targets and their crypto) are not filtered to the loaded ones; and no hostonly marker or
  hostonly copies of the machine's configuration are in the image.
- ``xenpv`` (initramfs-tools ``MODULES=dep``): dep needs the running machine's /sys and
  /proc/mounts. Made with ``mkinitramfs -d CONFDIR``, CONFDIR a copy of the guest's
  /etc/initramfs-tools plus ``conf.d/zz-pvhvm-fixture`` (``MODULES=list``) and a hook that
  adds what dep picks on the Xen PV domU (:data:`XENPV_DEP_MODULES`: ext3, whose driver is ext4,
  and xen_blkfront for xvda1 and the resume device xvda2) with ``manual_add_modules``, as
  dep_add_modules does. Differences: the image's ``conf/conf.d/zz-pvhvm-fixture`` says
  ``MODULES=list`` (``conf/initramfs.conf`` says ``dep``, as the guest's; init ignores both);
  the modules dep would add from its sysfs walk of other device classes (keyboards, rtc,
  backlight, ...) are not there: a Xen PV domU without a framebuffer has none.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvhvm.errors import GuestImageError
from pvhvm.guest import bootdisk, installed
from pvhvm.guest.appliance import Appliance, Timeouts
from pvhvm.guest.debs import require_tool, run
from pvhvm.guest.rootfs import guest_file
from pvhvm.hostfs import directory_lock
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.inspect.errors import InspectError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SHAPE_RECIPE_VERSION = 2
SHAPES = ("lvm", "xfs", "btrfs", "xenpv")
VARIANT_PREFIX = "shape-"
SHAPE_VARIANTS = tuple(VARIANT_PREFIX + name for name in SHAPES)
DISK_MIB = 2048
BOOT_MIB = 256
SWAP_MIB = 64
VG = "pvhvm"
CONSOLE = installed.KERNEL_CONSOLE
IDE_DRIVERS = ("ata_piix", "ata_generic", "sd_mod")
#: a partition's MBR type ids (partition types of fdisk)
TYPE_LINUX, TYPE_SWAP, TYPE_LVM = 0x83, 0x82, 0x8E
#: what dracut hostonly's kernel-modules step takes on the lvm shape's installed IDE machine:
#: the drivers it adds whatever the machine (hid_generic, unix, sg, sr_mod, sd_mod, ata_piix),
#: the loaded drivers of the root's disk (ata_generic besides) and filesystems (ext4 serves the
#: root LV's ext4 and the /boot ext2), and dm_mod for the LVs
LVM_HOSTONLY_DRIVERS = ("hid_generic", "unix", "sg", "sr_mod", "sd_mod", "ata_piix",
                        "ata_generic", "ext4", "dm_mod")
#: virtio drivers that dracut modules add without the hostonly filter (qemu, virtiofs,
#: nvdimm, ...); a machine installed on IDE has none loaded, so hostonly would take none
VIRTIO_DRIVERS = ("virtio", "virtio_ring", "virtio_pci", "virtio_pci_legacy_dev",
                  "virtio_pci_modern_dev", "virtio_mmio", "virtio_blk", "virtio_scsi",
                  "virtio_net", "virtio_console", "virtio_balloon", "virtio_rng",
                  "virtio_input", "virtio_mem", "virtio_pmem", "nd_virtio", "virtiofs",
                  "9pnet_virtio", "virtio_gpu", "virtio_crypto", "virtio_dma_buf",
                  "vmw_vsock_virtio_transport", "vmw_vsock_virtio_transport_common")
#: what initramfs-tools' MODULES=dep picks on the xenpv shape's Xen PV domU: the root's
#: filesystem (ext3: the ext4 driver) and the driver of xvda (root and resume device);
#: no SCSI, IDE, virtio bus, keyboard or framebuffer is there to add more
XENPV_DEP_MODULES = ("ext3", "xen_blkfront")
#: virtio drivers the PV boot needs (what prepare adds to an initramfs that lacks them)
VIRTIO_BOOT = ("virtio_pci", "virtio_blk")
#: where the xenpv build's initramfs-tools configuration is made (in the tree, removed after)
FIXTURE_CONFDIR = "/tmp/pvhvm-initramfs-conf"
#: deadline of one guest tool run in the chroot (apt, the initramfs generator, grub-mkimage)
TOOL_TIMEOUT = 1200.0


@dataclass(frozen=True)
class Part:
    """One MBR partition of a shape: MiB (0: the rest of the disk), type, active."""

    mib: int
    type_id: int = TYPE_LINUX
    active: bool = False


@dataclass(frozen=True)
class Shape:
    """One shape's recipe (every field is part of its cache key)."""

    name: str
    summary: str
    packages: tuple[str, ...]
    parts: tuple[Part, ...]
    #: "grub2", "extlinux" or "pv" (no boot code: pygrub reads menu.lst)
    loader: str
    #: GRUB's prefix and core modules (grub2 only)
    grub_prefix: str = ""
    grub_modules: tuple[str, ...] = ()
    #: the guest's own initramfs generator, run in a chroot of the tree ({release} and
    #: {confdir} filled in): the explicit equivalent of the guest's config on its original
    #: hardware (see the module docstring)
    initramfs: tuple[str, ...] = ()
    #: initramfs-tools MODULES=dep's pick on the original hardware, added at build time
    dep_modules: tuple[str, ...] = ()
    #: drivers the original hardware's boot needs, checked in the built initramfs
    carries: tuple[str, ...] = ()
    #: the generator's config is generic (dracut hostonly="no"): virtio_blk is in it anyway
    generic: bool = False
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def variant(self) -> str:
        return VARIANT_PREFIX + self.name


DRACUT_OUT = ("/boot/initrd.img-{release}", "{release}")

RECIPES: dict[str, Shape] = {
    "lvm": Shape(
        "lvm", "root on LVM (ext4), /boot ext2 by /dev/sda1, swap LV, resume=, GRUB 2 with "
        "GRUB_DISABLE_LINUX_UUID=true, dracut hostonly",
        ("lvm2", "dracut"), (Part(BOOT_MIB, active=True), Part(0, TYPE_LVM)), "grub2",
        "(hd0,msdos1)/grub", ("biosdisk", "part_msdos", "ext2"),
        ("dracut", "-f", "--no-hostonly", "--no-hostonly-cmdline",
         "--drivers", " ".join(LVM_HOSTONLY_DRIVERS),
         "--omit-drivers", " ".join(VIRTIO_DRIVERS), *DRACUT_OUT),
        carries=(*IDE_DRIVERS, "ext4", "dm_mod")),
    "xfs": Shape(
        "xfs", "XFS root and /boot ext2 by /dev/sdX, extlinux, initramfs-tools MODULES=list, "
        "crypttab: encrypted swap by /dev/sda3",
        ("xfsprogs", "extlinux", "cryptsetup-bin"),
        (Part(BOOT_MIB, active=True), Part(DISK_MIB - BOOT_MIB - SWAP_MIB - 2),
         Part(SWAP_MIB, TYPE_SWAP)), "extlinux",
        initramfs=("update-initramfs", "-u", "-k", "{release}"),
        carries=(*IDE_DRIVERS, "xfs")),
    "btrfs": Shape(
        "btrfs", "btrfs root in subvolume @, GRUB 2 with UUIDs, dracut not hostonly",
        ("btrfs-progs", "dracut"), (Part(0, active=True),), "grub2",
        "(hd0,msdos1)/@/boot/grub", ("biosdisk", "part_msdos", "btrfs"),
        ("dracut", "-f", *DRACUT_OUT),
        carries=("ata_piix", "sd_mod", "btrfs"), generic=True),
    "xenpv": Shape(
        "xenpv", "Xen PV guest: ext3, /dev/xvda names, console=hvc0 + getty, RESUME=, "
        "MODULES=dep, pygrub's menu.lst",
        (), (Part(DISK_MIB - SWAP_MIB - 2), Part(SWAP_MIB, TYPE_SWAP)), "pv",
        initramfs=("mkinitramfs", "-d", "{confdir}", "-o", *DRACUT_OUT),
        dep_modules=XENPV_DEP_MODULES, carries=("xen_blkfront", "ext4")),
}


def shape_of(variant: str) -> Shape | None:
    """The shape a ``shape-NAME`` variant names (None for other variants)."""
    if not variant.startswith(VARIANT_PREFIX):
        return None
    shape = RECIPES.get(variant[len(VARIANT_PREFIX):])
    if shape is None:
        raise GuestImageError(f"unknown shape {variant!r}; choose one of "
                              f"{', '.join(VARIANT_PREFIX + s for s in SHAPES)}")
    return shape


def recipe_digest(shape: Shape) -> str:
    """The cache key: the base's recipe, the shape's, and the source of every step that
    shapes the disk (so a change to one of them rebuilds, and nothing else does)."""
    steps = "".join(inspect.getsource(step) for step in (
        install_packages, common_files, default_grub, grub_cfg, _initramfs_modules,
        tree_files, uuid_files, make_initramfs, _fixture_confdir, initramfs_drivers,
        _partitions, _in_appliance, _host_disk, _boot_code, _build))
    return hashlib.sha256(repr((
        installed.base_recipe(), SHAPE_RECIPE_VERSION, shape, DISK_MIB, CONSOLE, VG,
        installed.REPORT_TTY, installed.REPORT_UNIT, guest_file("report.sh"),
        hashlib.sha256(steps.encode()).hexdigest(),
    )).encode()).hexdigest()


def is_built(guest: installed.InstalledGuest, shape: Shape) -> bool:
    try:
        manifest = guest.manifest()
    except GuestImageError:
        return False
    return (manifest.get("recipe") == recipe_digest(shape) and guest.disk.is_file()
            and guest.disk.stat().st_size == manifest.get("disk", {}).get("size"))


class _Steps:
    """Progress lines with the seconds since the build began; each step's duration is kept
    for the manifest (``build_seconds``)."""

    def __init__(self, say: Progress) -> None:
        self._say = say
        self._started = time.monotonic()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str, message: str) -> Iterator[None]:
        began = time.monotonic()
        self._say(f"[{began - self._started:6.1f} s] {message}")
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - began, 1)

    def say(self, message: str) -> None:
        self._say(f"[{time.monotonic() - self._started:6.1f} s] {message}")


# -- the tree (host, chroot: our own base) ----------------------------------------------------


def _write(root: Path, path: str, text: str | bytes, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_bytes(text.encode() if isinstance(text, str) else text)
    target.chmod(mode)


def _link(root: Path, path: str, target: str) -> None:
    link = root / path.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


def _chroot(root: Path, argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """One of the tree's own programs in a chroot (our own fixture), in a process group of
    its own that is killed at the deadline."""
    env = env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    try:
        child = subprocess.Popen(["chroot", str(root), *argv], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except OSError as err:
        raise GuestImageError(f"{what}: cannot run chroot: {err}") from err
    try:
        stdout, stderr = child.communicate(timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise GuestImageError(f"{what}: no end after {TOOL_TIMEOUT:.0f} s; killed") from err
    if child.returncode != 0:
        output = (stderr or stdout).strip().splitlines()[-5:]
        raise GuestImageError(f"{what} failed (exit status {child.returncode}): "
                              + " | ".join(output))
    return stdout


def install_packages(root: Path, packages: tuple[str, ...], say: Progress) -> None:
    """The guest's own apt, from the base's mirror, in a chroot (no daemon may start)."""
    if not packages:
        return
    say(f"apt-get install {' '.join(packages)} in the guest tree")
    policy = root / "usr" / "sbin" / "policy-rc.d"
    resolv = root / "etc" / "resolv.conf"
    with contextlib.suppress(FileNotFoundError):
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # the initramfs is made once, by make_initramfs: no package trigger makes one here
    update_conf = root / "etc" / "initramfs-tools" / "update-initramfs.conf"
    saved = update_conf.read_text() if update_conf.is_file() else None
    if saved is not None:
        update_conf.write_text(saved.replace("update_initramfs=yes", "update_initramfs=no"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive",
           "INITRD": "No"}  # the kernel hooks (dracut's too) make no initramfs now
    try:
        _chroot(root, ["apt-get", "update", "-q"], "the guest's apt-get update", env)
        _chroot(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                "the guest's apt-get install", env)
        _chroot(root, ["apt-get", "clean"], "the guest's apt-get clean", env)
    finally:
        policy.unlink()
        if saved is not None:
            update_conf.write_text(saved)
        resolv.unlink()
        resolv.write_text("")
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    (root / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)


def common_files(root: Path, shape: Shape) -> None:
    """Hostname, the device report at multi-user (as the installed variants)."""
    hostname = f"pvhvm-{shape.name}"
    _write(root, "/etc/hostname", hostname + "\n")
    _write(root, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n")
    _write(root, "/usr/local/sbin/pvhvm-report", guest_file("report.sh"), 0o755)
    _write(root, "/usr/local/sbin/pvhvm-report-tty", installed.REPORT_TTY, 0o755)
    _write(root, "/etc/systemd/system/pvhvm-report.service", installed.REPORT_UNIT)
    _link(root, "/etc/systemd/system/multi-user.target.wants/pvhvm-report.service",
          "/etc/systemd/system/pvhvm-report.service")
    # under TCG on a loaded host udevd can start more than 90 s (systemd's default device
    # timeout) after the jobs for fstab's and crypttab's devices: they then fail, whatever the
    # names, and a /boot mount takes the guest to emergency mode
    _write(root, "/etc/systemd/system.conf.d/pvhvm-tcg.conf",
           "[Manager]\nDefaultTimeoutStartSec=900s\n")


def default_grub(cmdline: str, disable_uuid: bool) -> str:
    """/etc/default/grub for a serial console."""
    text = installed.DEFAULT_GRUB.replace(
        f'GRUB_CMDLINE_LINUX="{CONSOLE}"', f'GRUB_CMDLINE_LINUX="{cmdline}"')
    if not disable_uuid:
        text = text.replace("GRUB_DISABLE_LINUX_UUID=true", "#GRUB_DISABLE_LINUX_UUID=true")
    return text


def grub_cfg(release: str, *, search: str, prefix: str, cmdline: str, modules: str) -> str:
    """grub.cfg in grub-mkconfig's shape; ``prefix`` is the kernel's directory as GRUB sees
    it on its root partition."""
    return (
        "# Written by pvhvm in the shape of grub-mkconfig's output.\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "set default=0\n"
        "set timeout=1\n"
        "menuentry 'Debian GNU/Linux' --class debian --class gnu-linux {\n"
        "\tinsmod gzio\n"
        f"\tinsmod part_msdos\n\tinsmod {modules}\n"
        f"\t{search}\n"
        f"\techo\t'Loading Linux {release} ...'\n"
        f"\tlinux\t{prefix}/vmlinuz-{release} {cmdline}\n"
        "\techo\t'Loading initial ramdisk ...'\n"
        f"\tinitrd\t{prefix}/initrd.img-{release}\n"
        "}\n"
    )


def _initramfs_modules(root: Path, policy: str, modules: tuple[str, ...]) -> None:
    conf = root / "etc" / "initramfs-tools" / "initramfs.conf"
    lines = conf.read_text().splitlines()
    conf.write_text("\n".join(f"MODULES={policy}" if ln.startswith("MODULES=") else ln
                              for ln in lines) + "\n")
    if modules:
        with open(root / "etc" / "initramfs-tools" / "modules", "a") as stream:
            stream.write("# the storage drivers this system was installed on (IDE)\n")
            stream.write("".join(f"{name}\n" for name in modules))


def tree_files(root: Path, shape: Shape, release: str) -> None:
    """The shape's configuration files that name no UUID (the others: :func:`uuid_files`)."""
    common_files(root, shape)
    if shape.name == "lvm":
        cmdline = f"{CONSOLE} resume=/dev/mapper/{VG}-swap"
        _write(root, "/etc/fstab", (
            "# /etc/fstab: static file system information.\n"
            f"/dev/mapper/{VG}-root\t/\text4\terrors=remount-ro\t0\t1\n"
            "/dev/sda1\t/boot\text2\tdefaults\t0\t2\n"
            f"/dev/{VG}/swap\tnone\tswap\tsw\t0\t0\n"))
        _write(root, "/etc/default/grub", default_grub(cmdline, disable_uuid=True))
        _write(root, "/boot/grub/grub.cfg", grub_cfg(
            release, search="set root='hd0,msdos1'", prefix="", modules="ext2",
            cmdline=f"root=/dev/mapper/{VG}-root ro {cmdline}"))
        _write(root, "/etc/dracut.conf.d/10-installed.conf", (
            "# as the installer left it: an initramfs for this machine only\n"
            'hostonly="yes"\nhostonly_cmdline="no"\n'
            "# the disk drivers hostonly found on the machine this was installed on (IDE)\n"
            f'add_drivers+=" {" ".join(IDE_DRIVERS)} "\n'
            'add_dracutmodules+=" lvm resume "\n'))
    elif shape.name == "xfs":
        _write(root, "/etc/fstab", (
            "# /etc/fstab: static file system information.\n"
            "/dev/sda2\t/\txfs\tdefaults\t0\t0\n"
            "/dev/sda1\t/boot\text2\tdefaults\t0\t2\n"
            "/dev/mapper/cswap\tnone\tswap\tsw\t0\t0\n"))
        _write(root, "/etc/crypttab", (
            "# <target name> <source device> <key file> <options>\n"
            "cswap\t/dev/sda3\t/dev/urandom\tswap,plain,cipher=aes-xts-plain64,size=256\n"))
        _write(root, "/boot/extlinux/extlinux.conf", (
            "SERIAL 0 115200\n"
            "# extlinux.conf, as syslinux's extlinux-update would write it\n"
            "DEFAULT debian\nTIMEOUT 10\nPROMPT 0\n\n"
            "LABEL debian\n"
            f"\tMENU LABEL Debian GNU/Linux, kernel {release}\n"
            f"\tLINUX /vmlinuz-{release}\n"
            f"\tAPPEND root=/dev/sda2 ro {CONSOLE}\n"
            f"\tINITRD /initrd.img-{release}\n"))
        _initramfs_modules(root, "list", (*IDE_DRIVERS, "xfs"))
    elif shape.name == "btrfs":
        _write(root, "/etc/default/grub", default_grub(f"{CONSOLE} rootflags=subvol=@",
                                                       disable_uuid=False))
        _write(root, "/etc/dracut.conf.d/10-installed.conf", (
            "# a generic initramfs: every storage driver\n"
            'hostonly="no"\n'))
    elif shape.name == "xenpv":
        _write(root, "/etc/fstab", (
            "# /etc/fstab: static file system information.\n"
            "/dev/xvda1\t/\text3\terrors=remount-ro\t0\t1\n"
            "/dev/xvda2\tnone\tswap\tsw\t0\t0\n"))
        _write(root, "/etc/initramfs-tools/conf.d/resume", "RESUME=/dev/xvda2\n")
        _write(root, "/boot/grub/menu.lst", (
            "# menu.lst for pygrub (GRUB legacy syntax)\n"
            "default\t\t0\ntimeout\t\t1\n\n"
            f"title\t\tDebian GNU/Linux, kernel {release}\n"
            "root\t\t(hd0,0)\n"
            f"kernel\t\t/boot/vmlinuz-{release} root=/dev/xvda1 ro console=hvc0 "
            "resume=/dev/xvda2\n"
            f"initrd\t\t/boot/initrd.img-{release}\n"))
        _link(root, "/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service",
              "/lib/systemd/system/serial-getty@.service")
        _initramfs_modules(root, "dep", ())


def uuid_files(shape: Shape, release: str, uuids: dict[str, str]) -> dict[str, str]:
    """Files written in the appliance once the filesystems exist (they name UUIDs)."""
    if shape.name != "btrfs":
        return {}
    root = uuids["root"]
    return {
        "/etc/fstab": ("# /etc/fstab: static file system information.\n"
                       f"UUID={root}\t/\tbtrfs\tdefaults,subvol=@\t0\t0\n"),
        "/boot/grub/grub.cfg": grub_cfg(
            release, search=f"search --no-floppy --fs-uuid --set=root {root}", prefix="/@/boot",
            modules="btrfs", cmdline=f"root=UUID={root} ro {CONSOLE} rootflags=subvol=@"),
    }



# -- the initramfs (host, chroot: our own fixture, natively) ----------------------------------


def _fixture_confdir(root: Path, shape: Shape) -> Path:
    """A copy of the guest's /etc/initramfs-tools in which MODULES=dep's pick on the original
    hardware is written out: ``MODULES=list`` in a conf.d file (``initramfs.conf`` keeps the
    guest's ``dep``) and a hook that adds the picked modules as dep_add_modules does."""
    confdir = root / FIXTURE_CONFDIR.lstrip("/")
    shutil.rmtree(confdir, ignore_errors=True)
    shutil.copytree(root / "etc" / "initramfs-tools", confdir, symlinks=True)
    _write(root, f"{FIXTURE_CONFDIR}/conf.d/zz-pvhvm-fixture", (
        "# pvhvm's fixture build (pvhvm.guest.shapes): MODULES=dep reads the running\n"
        "# machine's /sys; what it picks on this guest's original hardware is added by\n"
        "# the hook pvhvm-fixture-dep instead\n"
        "MODULES=list\n"))
    _write(root, f"{FIXTURE_CONFDIR}/hooks/pvhvm-fixture-dep", (
        "#!/bin/sh\n"
        "# MODULES=dep's pick on this guest's original hardware (pvhvm.guest.shapes)\n"
        '[ "$1" = prereqs ] && exit 0\n'
        ". /usr/share/initramfs-tools/hook-functions\n"
        f"manual_add_modules {' '.join(shape.dep_modules)}\n"), 0o755)
    return confdir


def make_initramfs(root: Path, shape: Shape, release: str) -> None:
    """The guest's own generator in a chroot of the tree, for the original hardware (see the
    module docstring); the guest's configuration is left as the shape wrote it."""
    confdir = _fixture_confdir(root, shape) if shape.dep_modules else None
    argv = [a.format(release=release, confdir=FIXTURE_CONFDIR) for a in shape.initramfs]
    try:
        _chroot(root, argv, f"the guest's {argv[0]}")
    finally:
        if confdir is not None:
            shutil.rmtree(confdir)


def initramfs_drivers(root: Path, shape: Shape, release: str) -> list[str]:
    """The kernel modules the built initramfs carries (pvhvm's own bounded reader); an error
    unless it has every driver of :attr:`Shape.carries` and, unless the generator is generic,
    neither virtio_pci nor virtio_blk."""
    image = root / "boot" / f"initrd.img-{release}"
    try:
        modules = read_initramfs(image.read_bytes()).module_files()
    except (OSError, InspectError) as err:
        raise GuestImageError(f"cannot read the {shape.name} initramfs {image}: {err}") from err
    missing = [name for name in shape.carries if name not in modules]
    virtio = [name for name in VIRTIO_BOOT if name in modules]
    if missing:
        raise GuestImageError(f"the {shape.name} initramfs lacks {', '.join(missing)}, which "
                              "its original hardware needs")
    if shape.generic and len(virtio) < len(VIRTIO_BOOT):
        raise GuestImageError(f"the {shape.name} initramfs is generic but lacks virtio")
    if virtio and not shape.generic:
        raise GuestImageError(f"the {shape.name} initramfs carries {', '.join(virtio)}, which "
                              "its original hardware does not have")
    return sorted(modules)


# -- the disk ---------------------------------------------------------------------------------


def _partitions(shape: Shape) -> list[bootdisk.Partition]:
    start = bootdisk.ALIGN_SECTORS
    total = DISK_MIB * 2048
    out = []
    for part in shape.parts:
        sectors = part.mib * 2048 if part.mib else total - start
        out.append(bootdisk.Partition(start, sectors, part.type_id, part.active))
        start += sectors
    return out


def _in_appliance(shape: Shape, disk: Path, tarball: Path, release: str, workdir: Path,
                  steps: _Steps) -> dict[str, str]:
    """LVM, filesystems, the tree, extlinux (one appliance, on the partitions the host wrote
    into the MBR); the UUIDs made."""
    app = Appliance(disk, readonly=False, tmpdir=workdir, progress=steps.say,
                    timeouts=Timeouts(step=1800.0, tool=3600.0))
    try:
        with steps.step("launch", "starting the libguestfs appliance"):
            app.launch()
        uuids = _fill_disk(app, shape, tarball, release, steps)
        with steps.step("shutdown", "unmounting, syncing, stopping the appliance"):
            app.shutdown()
    except BaseException:
        app.kill()
        raise
    return uuids


def _fill_disk(app: Appliance, shape: Shape, tarball: Path, release: str,
               steps: _Steps) -> dict[str, str]:
    uuids: dict[str, str] = {}
    call = app.call
    g = app.g
    with steps.step("filesystems", "LVM, filesystems"):
        mounts: list[tuple[str, str, str]] = []  # (device, mount point, options)
        if shape.name == "lvm":
            call("pvcreate", g.pvcreate, "/dev/sda2")
            call("vgcreate", g.vgcreate, VG, ["/dev/sda2"])
            call("lvcreate", g.lvcreate, "swap", VG, SWAP_MIB)
            call("lvcreate", g.lvcreate_free, "root", VG, 100)
            call("mkfs", g.mkfs, "ext2", "/dev/sda1")
            call("mkfs", g.mkfs, "ext4", f"/dev/{VG}/root")
            call("mkswap", g.mkswap, f"/dev/{VG}/swap")
            mounts = [(f"/dev/{VG}/root", "/", ""), ("/dev/sda1", "/boot", "")]
        elif shape.name == "xfs":
            call("mkfs", g.mkfs, "ext2", "/dev/sda1")
            call("mkfs", g.mkfs, "xfs", "/dev/sda2")
            mounts = [("/dev/sda2", "/", ""), ("/dev/sda1", "/boot", "")]
        elif shape.name == "btrfs":
            call("mkfs", g.mkfs, "btrfs", "/dev/sda1")
            call("mount", g.mount, "/dev/sda1", "/")
            call("subvolume", g.btrfs_subvolume_create, "/@")
            call("umount", g.umount, "/")
            mounts = [("/dev/sda1", "/", "subvol=@")]
        else:
            raise GuestImageError(f"the {shape.name} shape is not made in the appliance")
        uuids["root"] = str(call("uuid", g.vfs_uuid, mounts[0][0]))
        for device, point, options in mounts:
            if point != "/":
                call("mkdir", g.mkdir_p, point)
            call(f"mounting {device}", g.mount_options, options, device, point)
    with steps.step("tar-in", "copying the tree into the guest's filesystems (tar-in)"):
        call("tar-in", g.tar_in, str(tarball), "/", xattrs=True, acls=True)
    with steps.step("finishing", "the files that name UUIDs, the boot loader, sync"):
        for path, text in uuid_files(shape, release, uuids).items():
            call(f"writing {path}", g.write, path, text.encode())
        if shape.loader == "extlinux":
            call("extlinux", g.extlinux, "/boot/extlinux")
        call("sync", g.sync)
    return uuids


def _host_disk(shape: Shape, root: Path, disk: Path) -> dict[str, str]:
    """The xenpv disk on the host, as :mod:`pvhvm.guest.installed` makes its ext4 one: the
    ext3 root with ``mke2fs -d`` straight into its partition (``-E offset``) and the swap
    with ``mkswap`` (the MBR's table is written before, and a PV guest has no boot code)."""
    root_part, swap_part = _partitions(shape)
    uuids = {"root": str(uuidlib.uuid4()), "swap": str(uuidlib.uuid4())}
    run([require_tool("mke2fs", "e2fsprogs"), "-q", "-F", "-t", "ext3", "-d", str(root),
         "-U", uuids["root"], "-E", f"root_owner=0:0,offset={root_part.offset},nodiscard",
         str(disk), f"{root_part.sectors // 2}k"])
    swap = disk.with_name("swap.img")  # util-linux 2.38's mkswap has no --offset
    with open(swap, "wb") as stream:
        stream.truncate(swap_part.sectors * bootdisk.SECTOR)
    run([require_tool("mkswap", "util-linux"), "-U", uuids["swap"], str(swap)])
    bootdisk.copy_sparse(swap, disk, swap_part.offset)
    swap.unlink()
    if disk.stat().st_size != DISK_MIB << 20:
        raise GuestImageError(f"mke2fs or mkswap changed the size of {disk}")
    return uuids


def _tar(root: Path, tarball: Path) -> None:
    run(["tar", "--numeric-owner", "--xattrs", "--acls", "-C", str(root), "-cf", str(tarball),
         "."])


def _boot_code(shape: Shape, root: Path, disk: Path) -> None:
    """GRUB's boot.img + core.img, or SYSLINUX's mbr.bin, into the MBR (and the gap)."""
    if shape.loader == "pv":
        return
    with open(disk, "r+b") as stream:
        if shape.loader == "extlinux":
            mbr_bin = (root / "usr" / "lib" / "EXTLINUX" / "mbr.bin").read_bytes()
            stream.write(mbr_bin[:440])
            return
        out = "/tmp/pvhvm-core.img"
        _chroot(root, ["grub-mkimage", "-O", "i386-pc", "-o", out, "-p", shape.grub_prefix,
                       *shape.grub_modules], "the guest's grub-mkimage")
        core_path = root / out.lstrip("/")
        core = installed.patch_core(core_path.read_bytes())
        core_path.unlink()
        if len(core) > (bootdisk.ALIGN_SECTORS - 1) * bootdisk.SECTOR:
            raise GuestImageError(f"GRUB core.img ({len(core)} bytes) does not fit before "
                                  "partition 1")
        boot_img = (root / "usr" / "lib" / "grub" / "i386-pc" / "boot.img").read_bytes()
        stream.write(installed.patch_boot(boot_img))
        stream.seek(bootdisk.SECTOR)
        stream.write(core)


def build_shape(shape: Shape, directory: Path | None = None, *, base: Path | None = None,
                force: bool = False, progress: Progress | None = None,
                ) -> installed.InstalledGuest:
    """Build ``shape`` into ``directory`` (default ``cache_root()/shape-NAME``) from the
    cached debootstrap base; a no-op when the cached image has this recipe."""
    say = progress or (lambda message: log.info("%s", message))
    guest = installed.InstalledGuest(
        (directory or installed.cache_root() / shape.variant).resolve())
    if not force and is_built(guest, shape):
        say(f"installed guest {shape.variant} is up to date")
        return guest
    if os.geteuid() != 0:
        raise GuestImageError("building an installed guest shape needs root (chroot, apt)")
    guest.directory.mkdir(parents=True, exist_ok=True)
    with directory_lock(guest.directory):
        if not force and is_built(guest, shape):
            return guest
        base_root = installed.build_base(
            (base or installed.cache_root() / "base").resolve(), say)
        with installed.build_workdir(guest.directory) as work:
            _build(guest, shape, base_root, work, _Steps(say))
    say(f"installed guest {shape.variant} built in {guest.directory}")
    return guest


def _build(guest: installed.InstalledGuest, shape: Shape, base_root: Path, work: Path,
           steps: _Steps) -> None:
    root = work / "root"
    with steps.step("copy", "copying the debootstrap base"):
        run(["cp", "-a", "--reflink=auto", str(base_root), str(root)])
    with steps.step("apt", f"the shape's packages: {' '.join(shape.packages) or 'none'}"):
        install_packages(root, shape.packages, steps.say)
    release = installed.kernel_release(root)
    tree_files(root, shape, release)
    if shape.loader == "grub2":  # grub-install copies the platform's modules beside grub.cfg
        target = root / "boot" / "grub" / "i386-pc"
        target.mkdir(parents=True, exist_ok=True)
        for source in (root / "usr" / "lib" / "grub" / "i386-pc").iterdir():
            if source.suffix in (".mod", ".lst"):
                shutil.copy2(source, target / source.name)
    with steps.step("initramfs", f"the guest's {shape.initramfs[0]}, natively in a chroot"):
        make_initramfs(root, shape, release)
        drivers = initramfs_drivers(root, shape, release)
    packages = _chroot(root, ["dpkg-query", "-W", "-f", "${Package} ${Version}\n"],
                       "the guest's dpkg-query")
    disk = work / installed.DISK
    with open(disk, "wb") as stream:  # the MBR's partition table; its boot code comes last
        stream.truncate(DISK_MIB << 20)
        stream.write(bootdisk.mbr(b"", _partitions(shape), int.from_bytes(os.urandom(4))))
    if shape.loader == "pv":
        with steps.step("disk", "mke2fs -d, mkswap and the MBR, on the host"):
            uuids = _host_disk(shape, root, disk)
    else:
        tarball = work / "root.tar"
        with steps.step("tar", "tar of the guest tree"):
            _tar(root, tarball)
        uuids = _in_appliance(shape, disk, tarball, release, work, steps)
        tarball.unlink()
    with steps.step("boot-code", "the MBR's boot code"):
        _boot_code(shape, root, disk)
    manifest: dict[str, Any] = {
        "recipe": recipe_digest(shape), "variant": shape.variant, "shape": shape.name,
        "summary": shape.summary, "kernel_release": release, "root_uuid": uuids["root"],
        "initramfs_modules": drivers,
        "packages": dict(line.split(" ", 1) for line in packages.splitlines() if line),
        "disk": {"size": disk.stat().st_size},
        "build_seconds": steps.seconds,
    }
    with contextlib.suppress(FileNotFoundError):
        guest.manifest_path.unlink()
    os.replace(disk, guest.disk)
    tmp = guest.directory / (installed.MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, guest.manifest_path)


def build_shapes(names: tuple[str, ...] = SHAPES, *, progress: Progress | None = None,
                 ) -> dict[str, installed.InstalledGuest]:
    """Build several shapes one after another (each holds its own lock: parallel callers
    building different shapes do not wait for each other)."""
    return {name: build_shape(RECIPES[name], progress=progress) for name in names}
