"""Guest images built in the tests with the real tools a distribution uses: mke2fs -d for
ext4, sfdisk for MBR and GPT tables, cpio -H newc and gzip/xz/zstd/lz4 for initramfs images
(an uncompressed early-microcode archive first, as update-initramfs and dracut make them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

RELEASE = "6.1.0-99-amd64"
MIB = 1 << 20
ROOT_UUID = "2f1f5c6e-0d2a-4c55-9b43-1f3a5c7e9d01"
BOOT_UUID = "7b0e3a1c-52d4-4e8a-a0c4-33b1d2f6e802"

#: a Debian-like IDE install's initramfs (MODULES=dep): no virtio
IDE_MODULES = ("drivers/ata/ata_piix", "drivers/ata/libata", "drivers/ata/ata_generic",
               "drivers/scsi/sd_mod", "drivers/scsi/scsi_mod", "fs/ext4/ext4")
#: what MODULES=most adds on top: virtio and xen frontends
PV_MODULES = ("drivers/virtio/virtio_pci", "drivers/virtio/virtio", "drivers/virtio/virtio_ring",
              "drivers/block/virtio_blk", "drivers/net/virtio_net",
              "drivers/block/xen-blkfront", "drivers/net/xen-netfront")
ALL_MODULES = (*IDE_MODULES, *PV_MODULES, "drivers/net/ethernet/intel/e1000/e1000",
               "drivers/net/ethernet/realtek/8139cp", "drivers/net/ethernet/realtek/8139too")


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(f"/usr/sbin/{name}") or shutil.which(f"/sbin/{name}")
    if path is None:
        pytest.fail(f"{name} is not installed (dev/setup installs it)")
    return path


def run(*argv: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run([tool(argv[0]), *argv[1:]], input=stdin, capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise AssertionError(f"{argv}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Files under ``root``; a value ``"-> target"`` is a symlink."""
    for name, content in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("-> "):
            os.symlink(content[3:], path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def make_ext4(path: Path, tree: Path, size_mib: int, *, label: str = "",
              uuid: str = "") -> Path:
    args = ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree)]
    if label:
        args += ["-L", label]
    if uuid:
        args += ["-U", uuid]
    with open(path, "wb") as stream:
        stream.truncate(size_mib * MIB)
    run(*args, str(path))
    return path


def partitioned(path: Path, label: str, parts: list[tuple[Path | None, int, str]],
                disk_id: str = "") -> Path:
    """An image with an sfdisk table (``label`` dos or gpt); each part is (filesystem image
    or None, size MiB, sfdisk type), 1 MiB aligned, filesystems copied into place."""
    total = 1 + sum(size for _, size, _ in parts) + 1
    with open(path, "wb") as stream:
        stream.truncate(total * MIB)
    lines = [f"label: {label}"]
    if disk_id:
        lines.append(f"label-id: {disk_id}")
    start = 1
    for _fs, size, ptype in parts:
        lines.append(f"start={start * 2048}, size={size * 2048}, type={ptype}")
        start += size
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path),
        stdin=("\n".join(lines) + "\n").encode())
    start = 1
    with open(path, "r+b") as stream:
        for fs, size, _ in parts:
            if fs is not None:
                stream.seek(start * MIB)
                stream.write(fs.read_bytes())
            start += size
    return path


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: run("gzip", "-9", "-n", "-c", stdin=data),
    "xz": lambda data: run("xz", "--check=crc32", "-c", stdin=data),
    "zstd": lambda data: run("zstd", "-q", "-c", "-1", stdin=data),
    "lz4": lambda data: run("lz4", "-l", "-q", "-c", stdin=data),
    "bzip2": lambda data: run("bzip2", "-c", stdin=data),
    "none": lambda data: data,
}


def cpio_of(tree: Path) -> bytes:
    """``find . | cpio -o -H newc`` in ``tree``, as mkinitramfs does."""
    names = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    done = subprocess.run([tool("cpio"), "--quiet", "-o", "-H", "newc"], cwd=tree, input=names,
                          capture_output=True, check=True)
    return done.stdout


def make_initramfs(work: Path, modules: tuple[str, ...], compression: str,
                   microcode: bool = False, release: str = RELEASE,
                   generator: str = "initramfs-tools") -> bytes:
    """An initramfs as ``generator`` (initramfs-tools, dracut, or "busybox": an init of its
    own) lays it out, carrying ``modules`` under lib/modules."""
    main = work / f"main-{compression}-{len(modules)}-{generator}"
    files: dict[str, bytes | str] = {"init": "#!/bin/sh\n", "bin/sh": b"\x7fELF"}
    if generator == "initramfs-tools":
        files.update({"conf/initramfs.conf": "MODULES=dep\n", "scripts/functions": "# \n",
                      "scripts/local": "# \n"})
    elif generator == "dracut":
        files.update({"usr/lib/dracut/build-parameter.txt": "--kver 6.1\n",
                      "usr/lib/dracut/modules.txt": "base\n"})
    for module in modules:
        files[f"usr/lib/modules/{release}/kernel/{module}.ko"] = b"\x7fELF module"
    files["lib"] = "-> usr/lib"
    files[f"usr/lib/modules/{release}/modules.builtin"] = "kernel/drivers/block/loop.ko\n"
    archive = COMPRESSORS[compression](cpio_of(write_tree(main, files)))
    if not microcode:
        return archive
    early = write_tree(work / f"early-{compression}", {
        "kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 4096,
        "kernel/x86/microcode/.enuineIntel.align.0123456789abc": b"",
    })
    return cpio_of(early) + archive


GRUB_CFG = """\
# DO NOT EDIT (grub-mkconfig)
if [ -s $prefix/grubenv ]; then
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
else
   set default="{default}"
fi
function load_video {{
  insmod all_video
}}
set timeout=5
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-{uuid}' {{
	load_video
	insmod ext2
	set root='hd0,msdos1'
	search --no-floppy --fs-uuid --set=root {uuid}
	echo	'Loading Linux {release} ...'
	linux	/vmlinuz-{release} root={root} ro {cmdline}
	echo	'Loading initial ramdisk ...'
	initrd	/initrd.img-{release}
}}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-{uuid}' {{
	menuentry 'Debian GNU/Linux, with Linux {release}' --class debian $menuentry_id_option 'gnulinux-{release}-advanced-{uuid}' {{
		linux	/vmlinuz-{release} root={root} ro {cmdline}
		initrd	/initrd.img-{release}
	}}
	menuentry 'Debian GNU/Linux, with Linux {release} (recovery mode)' --class debian $menuentry_id_option 'gnulinux-{release}-recovery-{uuid}' {{
		linux	/vmlinuz-{release} root={root} ro single
		initrd	/initrd.img-{release}
	}}
}}
"""


@dataclass(frozen=True)
class InstalledImage:
    """An installed-looking Debian disk: /boot on sda1, / on sda2, swap on sda5 (logical)."""

    path: Path
    kernel: bytes
    initrd: bytes


def installed_image(work: Path, *, modules: tuple[str, ...] = IDE_MODULES,
                    root: str = "/dev/sda2", fstab_boot: str = "/dev/sda1",
                    compression: str = "zstd", cmdline: str = "console=ttyS0,115200",
                    default: str = "0", extra_fstab: str = "", generator: str = "initramfs-tools",
                    builtin: tuple[str, ...] = (), pretty_name: str = "Debian GNU/Linux 12 (bookworm)",
                    title: str = "Debian GNU/Linux") -> InstalledImage:
    """Build the image (partitions, filesystems, initramfs) in ``work``; ``builtin``: Kconfig
    symbols the kernel config says are built in (=y)."""
    work.mkdir(parents=True, exist_ok=True)
    kernel = b"MZ fake bzImage " + os.urandom(64)
    initrd = make_initramfs(work, modules, compression, microcode=True, generator=generator)
    symbols = {name: "m" for name in (
        "VIRTIO", "VIRTIO_PCI", "VIRTIO_BLK", "ATA", "ATA_PIIX", "XEN_BLKDEV_FRONTEND",
        "BLK_DEV_SD", "E1000", "VIRTIO_NET")}
    symbols["EXT4_FS"] = "y"
    symbols.update({name: "y" for name in builtin})
    config = "".join(f"CONFIG_{name}={value}\n" for name, value in symbols.items())
    boot = write_tree(work / "boot-tree", {
        f"vmlinuz-{RELEASE}": kernel, f"initrd.img-{RELEASE}": initrd,
        f"config-{RELEASE}": config, f"System.map-{RELEASE}": "",
        "grub/grub.cfg": GRUB_CFG.format(release=RELEASE, uuid=ROOT_UUID, root=root,
                                         cmdline=cmdline, default=default).replace(
                                             "menuentry 'Debian GNU/Linux' ",
                                             f"menuentry '{title}' "),
        "grub/grubenv": "# GRUB Environment Block\nsaved_entry=1>1\n" + "#" * 900,
    })
    deps = "".join(f"kernel/{m}.ko: \n" for m in ALL_MODULES)
    rootfs = write_tree(work / "root-tree", {
        "etc/os-release": f'PRETTY_NAME="{pretty_name}"\nNAME="Debian GNU/Linux"\n'
                          'VERSION_ID="12"\nID=debian\n',
        "etc/fstab": f"# /etc/fstab: static file system information.\n"
                     f"{root}\t/\text4\terrors=remount-ro 0 1\n"
                     f"{fstab_boot}\t/boot\text4\tdefaults\t0 2\n"
                     f"/dev/sda5\tnone\tswap\tsw\t0 0\n"
                     f"/dev/sr0\t/media/cdrom0\tudf,iso9660 user,noauto 0 0\n"
                     f"proc /proc proc defaults 0 0\n{extra_fstab}",
        "etc/crypttab": "# <target name> <source device> <key file> <options>\n",
        "etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n'
                            'GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n'
                            'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
                            f'GRUB_CMDLINE_LINUX="{cmdline}"\n',
        "etc/systemd/system/getty.target.wants/getty@tty1.service":
            "-> /lib/systemd/system/getty@.service",
        "usr/lib/systemd/system/getty@.service": "[Unit]\n",
        "lib": "-> usr/lib",
        f"usr/lib/modules/{RELEASE}/modules.dep": deps,
        f"usr/lib/modules/{RELEASE}/modules.builtin": "kernel/drivers/block/loop.ko\n",
        "boot/.keep": "",
    })
    boot_fs = make_ext4(work / "boot.ext4", boot, 24, uuid=BOOT_UUID, label="boot")
    root_fs = make_ext4(work / "root.ext4", rootfs, 16, uuid=ROOT_UUID, label="root")
    swap = work / "swap.img"
    with open(swap, "wb") as stream:
        stream.truncate(4 * MIB)
    run("mkswap", "-q", "-L", "swap0", "-U", "1d2c3b4a-0000-4000-8000-00000000abcd", str(swap))
    image = work / "disk.img"
    # sda1 boot, sda2 root, sda3 extended holding sda5 (swap), as debian-installer lays it out
    total = 1 + 24 + 16 + 6 + 1
    with open(image, "wb") as stream:
        stream.truncate(total * MIB)
    table = (
        "label: dos\nlabel-id: 0x1234abcd\n"
        "start=2048, size=49152, type=83, bootable\n"
        "start=51200, size=32768, type=83\n"
        "start=83968, size=12288, type=5\n"
        "start=86016, size=8192, type=82\n"
    )
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image), stdin=table.encode())
    with open(image, "r+b") as stream:
        for offset, fs in ((2048, boot_fs), (51200, root_fs), (86016, swap)):
            stream.seek(offset * 512)
            stream.write(fs.read_bytes())
    return InstalledImage(image, kernel, initrd)


@pytest.fixture
def ide_install(tmp_path: Path) -> InstalledImage:
    return installed_image(tmp_path / "ide")
