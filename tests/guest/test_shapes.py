"""The installed-guest shapes (issue 17, item 3): their recipes, and what prepare plans for each
shape's files (LVM root, PARTUUID fallback, RESUME=, hvc0, gettys), with no appliance. The
shapes themselves are built, checked, prepared and booted in tests/e2e/test_shapes.py."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pvhvm.errors import GuestImageError
from pvhvm.guest import bootdisk, shapes
from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.guest.prepare import (
    GETTY_WANTS,
    RootFilesystem,
    plan_changes,
    resolver_for,
    rewrite_console,
    rewrite_crypttab,
    rewrite_inittab,
    rewrite_kernel_args,
    rewrite_resume_conf,
)
from pvhvm.inspect.deep import ApplianceReader
from pvhvm.inspect.partitions import probe_signature, read_table
from tests.guest.test_prepare import FakeGuest

DISK = RootFilesystem("/dev/pvhvm/root", 0, {1: "b00t-uuid", 2: "5wap-uuid"},
                      {1: "8f3a41c2-01", 2: "8f3a41c2-02", 3: "8f3a41c2-03"})


def test_every_item_of_issue_17_has_a_shape() -> None:
    summaries = " ".join(s.summary for s in shapes.RECIPES.values())
    for item in ("LVM", "XFS", "btrfs", "/boot", "dracut hostonly", "dracut not hostonly",
                 "GRUB_DISABLE_LINUX_UUID=true", "GRUB 2 with UUIDs", "extlinux",
                 "MODULES=list", "MODULES=dep", "menu.lst", "crypttab", "resume=", "RESUME=",
                 "swap", "hvc0", "xvda", "ext3"):
        assert item in summaries, item
    assert tuple(shapes.RECIPES) == shapes.SHAPES


def test_partitions_fit_the_disk_and_start_aligned() -> None:
    for shape in shapes.RECIPES.values():
        parts = shapes._partitions(shape)
        assert parts[0].start == 2048
        for before, after in itertools.pairwise(parts):
            assert after.start == before.end
        assert parts[-1].end <= shapes.DISK_MIB * 2048, shape.name
        assert sum(p.active for p in parts) == (0 if shape.loader == "pv" else 1)


def test_each_generator_is_run_as_on_the_original_hardware() -> None:
    """hostonly and MODULES=dep would look at the build host (virtio): the explicit
    equivalents, and the guest's own config left as the shape says."""
    lvm = shapes.RECIPES["lvm"].initramfs
    assert lvm[:2] == ("dracut", "-f") and "--no-hostonly" in lvm
    drivers = lvm[lvm.index("--drivers") + 1].split()
    assert {"ata_piix", "sd_mod", "ext4", "dm_mod"} <= set(drivers)
    assert not set(drivers) & set(shapes.VIRTIO_DRIVERS)
    assert set(shapes.VIRTIO_BOOT) <= set(lvm[lvm.index("--omit-drivers") + 1].split())
    assert shapes.RECIPES["btrfs"].initramfs == ("dracut", "-f", *shapes.DRACUT_OUT)
    assert shapes.RECIPES["btrfs"].generic
    assert shapes.RECIPES["xfs"].initramfs[0] == "update-initramfs"
    xenpv = shapes.RECIPES["xenpv"]
    assert xenpv.initramfs[:3] == ("mkinitramfs", "-d", "{confdir}")
    assert xenpv.dep_modules == ("ext3", "xen_blkfront")
    assert [s.name for s in shapes.RECIPES.values() if s.generic] == ["btrfs"]


def test_the_dep_pick_is_written_out_beside_the_guests_config(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "initramfs-tools"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "initramfs.conf").write_text("MODULES=dep\nCOMPRESS=zstd\n")
    (conf / "conf.d" / "resume").write_text("RESUME=/dev/xvda2\n")
    (conf / "modules").write_text("# none\n")
    confdir = shapes._fixture_confdir(tmp_path, shapes.RECIPES["xenpv"])
    assert confdir == tmp_path / shapes.FIXTURE_CONFDIR.lstrip("/")
    assert (confdir / "initramfs.conf").read_text() == "MODULES=dep\nCOMPRESS=zstd\n"
    assert (confdir / "conf.d" / "resume").read_text() == "RESUME=/dev/xvda2\n"
    override = (confdir / "conf.d" / "zz-pvhvm-fixture").read_text()
    assert override.splitlines()[-1] == "MODULES=list"
    hook = confdir / "hooks" / "pvhvm-fixture-dep"
    assert hook.stat().st_mode & stat.S_IXUSR
    assert "manual_add_modules ext3 xen_blkfront\n" in hook.read_text()
    assert hook.read_text().startswith("#!/bin/sh\n")
    # the guest's own configuration is untouched
    assert sorted(p.name for p in conf.rglob("*")) == ["conf.d", "initramfs.conf", "modules",
                                                        "resume"]


def _initrd(root: Path, release: str, modules: list[str]) -> None:
    entries = [CpioEntry.directory("usr"), CpioEntry.directory("usr/lib"),
               CpioEntry.directory("usr/lib/modules"),
               CpioEntry.directory(f"usr/lib/modules/{release}")]
    entries += [CpioEntry.file(f"usr/lib/modules/{release}/kernel/{name.replace('_', '-')}.ko",
                               b"\x7fELF") for name in modules]
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"initrd.img-{release}").write_bytes(cpio_newc(entries))


def test_the_built_initramfs_is_checked_for_the_original_hardware(tmp_path: Path) -> None:
    release = "6.1.0-9-amd64"
    xfs, btrfs = shapes.RECIPES["xfs"], shapes.RECIPES["btrfs"]
    _initrd(tmp_path, release, ["ata_piix", "ata_generic", "sd_mod", "xfs", "libata"])
    assert shapes.initramfs_drivers(tmp_path, xfs, release) == [
        "ata_generic", "ata_piix", "libata", "sd_mod", "xfs"]
    with pytest.raises(GuestImageError, match="lacks btrfs"):
        shapes.initramfs_drivers(tmp_path, btrfs, release)
    _initrd(tmp_path, release, ["ata_piix", "ata_generic", "sd_mod", "xfs", "virtio_blk"])
    with pytest.raises(GuestImageError, match="carries virtio_blk, which its original"):
        shapes.initramfs_drivers(tmp_path, xfs, release)
    _initrd(tmp_path, release, ["ata_piix", "sd_mod", "btrfs"])
    with pytest.raises(GuestImageError, match="generic but lacks virtio"):
        shapes.initramfs_drivers(tmp_path, btrfs, release)
    _initrd(tmp_path, release, ["ata_piix", "sd_mod", "btrfs", "virtio_pci", "virtio_blk"])
    assert "virtio_blk" in shapes.initramfs_drivers(tmp_path, btrfs, release)
    (tmp_path / "boot" / f"initrd.img-{release}").write_bytes(b"not an initramfs")
    with pytest.raises(GuestImageError, match="cannot read the xfs initramfs"):
        shapes.initramfs_drivers(tmp_path, xfs, release)


def test_the_xenpv_disk_is_made_on_the_host(tmp_path: Path) -> None:
    """ext3 root (mke2fs -d) and swap (mkswap) in their partitions, the MBR's table kept."""
    shape = shapes.RECIPES["xenpv"]
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("pvhvm-xenpv\n")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as stream:
        stream.truncate(shapes.DISK_MIB << 20)
        stream.write(bootdisk.mbr(b"", shapes._partitions(shape), 0x1F720F7B))
    uuids = shapes._host_disk(shape, tree, disk)
    with open(disk, "rb") as stream:
        table = read_table(stream, disk.stat().st_size)
        assert stream.read(440) == bytes(440)  # pygrub reads the filesystem: no boot code
        parts = shapes._partitions(shape)
        assert [(p.start, p.size) for p in table.partitions] == [
            (p.offset, p.sectors * bootdisk.SECTOR) for p in parts]
        assert not any(p.bootable for p in table.partitions)
        root = probe_signature(stream, parts[0].offset)
        swap = probe_signature(stream, parts[1].offset)
    assert root is not None and (root.type, root.uuid) == ("ext3", uuids["root"])
    assert swap is not None and (swap.type, swap.uuid) == ("swap", uuids["swap"])
    assert table.disk_id == "1f720f7b"  # the table written before is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.img", "tree"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_chroot_tool_past_its_deadline_is_killed_with_its_children(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shapes, "TOOL_TIMEOUT", 1.0)
    marker = tmp_path / "started"
    with pytest.raises(GuestImageError, match="no end after 1 s; killed"):
        shapes._chroot(Path("/"), ["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"],
                       "a hanging hook")
    child = int(marker.read_text())
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    with pytest.raises(GuestImageError, match=r"a failing tool failed \(exit status 3\): out"):
        shapes._chroot(Path("/"), ["sh", "-c", "echo out >&2; exit 3"], "a failing tool")
    assert shapes._chroot(Path("/"), ["echo", "fine"], "echo") == "fine\n"


def test_build_steps_are_timed() -> None:
    lines: list[str] = []
    steps = shapes._Steps(lines.append)
    with steps.step("copy", "copying"):
        pass
    steps.say("more")
    assert list(steps.seconds) == ["copy"] and steps.seconds["copy"] >= 0
    assert lines[0].endswith("s] copying") and lines[1].endswith("s] more")


def test_recipes_are_keyed_apart() -> None:
    digests = {shapes.recipe_digest(s) for s in shapes.RECIPES.values()}
    assert len(digests) == len(shapes.RECIPES)
    assert shapes.shape_of("shape-lvm") is shapes.RECIPES["lvm"]
    assert shapes.shape_of("ide") is None


def test_tree_files_of_each_shape(tmp_path: Path) -> None:
    release = "6.1.0-9-amd64"
    for name, shape in shapes.RECIPES.items():
        root = tmp_path / name
        (root / "etc" / "initramfs-tools").mkdir(parents=True)
        (root / "etc" / "initramfs-tools" / "initramfs.conf").write_text("MODULES=most\n")
        shapes.tree_files(root, shape, release)
        assert (root / "etc" / "hostname").read_text() == f"pvhvm-{name}\n"
    lvm = tmp_path / "lvm"
    assert "/dev/sda1\t/boot\text2" in (lvm / "etc" / "fstab").read_text()
    assert "GRUB_DISABLE_LINUX_UUID=true\n" in (lvm / "etc" / "default" / "grub").read_text()
    assert 'hostonly="yes"' in (lvm / "etc" / "dracut.conf.d" / "10-installed.conf").read_text()
    grub = (lvm / "boot" / "grub" / "grub.cfg").read_text()
    assert f"linux\t/vmlinuz-{release} root=/dev/mapper/pvhvm-root ro" in grub
    assert "resume=/dev/mapper/pvhvm-swap" in grub
    xfs = tmp_path / "xfs"
    assert "MODULES=list" in (xfs / "etc" / "initramfs-tools" / "initramfs.conf").read_text()
    assert "/dev/sda3" in (xfs / "etc" / "crypttab").read_text()
    assert "APPEND root=/dev/sda2" in (xfs / "boot" / "extlinux" / "extlinux.conf").read_text()
    xen = tmp_path / "xenpv"
    assert (xen / "etc" / "initramfs-tools" / "conf.d" / "resume").read_text() == \
        "RESUME=/dev/xvda2\n"
    assert "console=hvc0" in (xen / "boot" / "grub" / "menu.lst").read_text()
    assert (xen / GETTY_WANTS.lstrip("/") / "serial-getty@hvc0.service").is_symlink()
    btrfs = shapes.uuid_files(shapes.RECIPES["btrfs"], release, {"root": "0b7f5"})
    assert "UUID=0b7f5\t/\tbtrfs\tdefaults,subvol=@" in btrfs["/etc/fstab"]
    assert "search --no-floppy --fs-uuid --set=root 0b7f5" in btrfs["/boot/grub/grub.cfg"]
    assert "linux\t/@/boot/vmlinuz-" in btrfs["/boot/grub/grub.cfg"]


def test_an_lvm_root_takes_the_disk_from_the_other_names() -> None:
    """root=/dev/mapper/...: the /boot partition's /dev/sda1 is still this disk's."""
    resolve = resolver_for(DISK, "/dev/mapper/pvhvm-root", ("/dev/sda1", "/dev/sdb1"))
    _text, changes = rewrite_crypttab("data /dev/sdb1 none luks\n", resolve)
    assert changes == []  # another disk
    plan = plan_changes(FakeGuest({
        "/usr/bin/dracut": "", "/etc/debian_version": "12\n",
        "/boot/vmlinuz-6.1.0-9-amd64": "", "/boot/initrd.img-6.1.0-9-amd64": "",
        "/etc/fstab": "/dev/mapper/pvhvm-root / ext4 defaults 0 1\n"
                      "/dev/sda1 /boot ext2 defaults 0 2\n/dev/pvhvm/swap none swap sw 0 0\n",
        "/boot/grub/grub.cfg": "linux /vmlinuz-6.1.0-9-amd64 root=/dev/mapper/pvhvm-root ro "
                               "resume=/dev/mapper/pvhvm-swap\n",
    }), DISK, "disk.img", regenerate=True)
    assert plan.edits["/etc/fstab"][1].splitlines()[1] == "UUID=b00t-uuid /boot ext2 defaults 0 2"
    assert "/boot/grub/grub.cfg" not in plan.edits  # LVM names do not change with the bus
    # the drivers go to dracut's conf.d either way; --regenerate-initramfs runs its dracut
    assert plan.commands[0][0][:2] == ["/usr/bin/dracut", "-f"]


def test_a_partition_without_a_filesystem_uuid_gets_its_partuuid() -> None:
    resolve = resolver_for(DISK, "/dev/sda2")
    text, changes = rewrite_crypttab(
        "cswap\t/dev/sda3\t/dev/urandom\tswap,plain\n", resolve)
    assert text == "cswap\tPARTUUID=8f3a41c2-03\t/dev/urandom\tswap,plain\n"
    assert len(changes) == 1


def test_resume_conf_names_the_swap_by_uuid() -> None:
    resolve = resolver_for(DISK, "/dev/xvda1")
    path = "/etc/initramfs-tools/conf.d/resume"
    text, changes = rewrite_resume_conf("# comment\nRESUME=/dev/xvda2\n", resolve, path)
    assert text == "# comment\nRESUME=UUID=5wap-uuid\n"
    assert [c.kind for c in changes] == ["resume"]
    assert rewrite_resume_conf('RESUME="UUID=x"\n', resolve, path) == ('RESUME="UUID=x"\n', [])
    assert rewrite_resume_conf("RESUME=none\n", resolve, path)[1] == []


def test_xen_console_moves_to_the_serial_port() -> None:
    text, changes = rewrite_console("kernel /vmlinuz root=/dev/xvda1 console=hvc0 quiet\n"
                                    "kernel /x console=xvc0,9600 xconsole=hvc0\n", "menu.lst")
    assert text == ("kernel /vmlinuz root=/dev/xvda1 console=ttyS0,115200 quiet\n"
                    "kernel /x console=ttyS0,115200 xconsole=hvc0\n")
    assert len(changes) == 2
    inittab, changed = rewrite_inittab("id:2:initdefault:\n"
                                       "hvc0:2345:respawn:/sbin/getty 38400 hvc0\n"
                                       "#x:1:respawn:/sbin/getty hvc0\n")
    assert inittab.splitlines()[1] == "ttyS0:2345:respawn:/sbin/getty 38400 ttyS0"
    assert inittab.splitlines()[2] == "#x:1:respawn:/sbin/getty hvc0" and len(changed) == 1


def test_the_hvc0_getty_link_is_replaced_by_a_ttys0_one() -> None:
    files: dict[str, str | None] = {
        "/usr/sbin/update-initramfs": "", "/etc/initramfs-tools": None,
        "/boot/vmlinuz-6.1.0-9-amd64": "", "/etc/fstab": "/dev/xvda1 / ext3 defaults 0 1\n",
        f"{GETTY_WANTS}/serial-getty@hvc0.service": None, f"{GETTY_WANTS}/getty@tty1.service":
        None, "/lib/systemd/system/serial-getty@.service": "",
        "/boot/grub/menu.lst": "title x\nkernel /boot/vmlinuz-6.1.0-9-amd64 root=/dev/xvda1 "
                               "console=hvc0 resume=/dev/xvda2\n",
        "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/xvda2\n",
    }
    plan = plan_changes(FakeGuest(files), DISK, "disk.img")
    assert plan.unlinks == [f"{GETTY_WANTS}/serial-getty@hvc0.service"]
    assert plan.links == {f"{GETTY_WANTS}/serial-getty@ttyS0.service":
                          "/lib/systemd/system/serial-getty@.service"}
    menu = plan.edits["/boot/grub/menu.lst"][1]
    assert "root=UUID=b00t-uuid" in menu and "resume=UUID=5wap-uuid" in menu
    assert "console=ttyS0,115200" in menu
    assert plan.edits["/etc/initramfs-tools/conf.d/resume"][1] == "RESUME=UUID=5wap-uuid\n"
    assert {c.kind for c in plan.changes} >= {"console", "resume", "fstab", "bootloader"}


class _NoAppliance:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the path mapping called the appliance ({name})")


def test_deep_reader_maps_boot_and_subvolume_paths() -> None:
    boot = ApplianceReader(_NoAppliance(), Path("/nonexistent"), "/boot")  # type: ignore[arg-type]
    assert boot._guest_path("/grub/grub.cfg") == "/boot/grub/grub.cfg"
    assert boot._guest_path("/../../etc/shadow") == "/etc/shadow"  # stays in the guest
    root = ApplianceReader(_NoAppliance(), Path("/nonexistent"),  # type: ignore[arg-type]
                           subvolume="@")
    assert root._guest_path("/@/boot/vmlinuz-1") == "/boot/vmlinuz-1"
    assert root._guest_path("/boot/x") == "/boot/x"


def test_comments_that_name_old_devices_are_left_as_they_are() -> None:
    resolve = resolver_for(DISK, "/dev/sda1")
    text = ("# the installer wrote root=/dev/sda1 console=hvc0\n"
            'GRUB_CMDLINE_LINUX="root=/dev/sda1 console=hvc0"\n')
    out, changes = rewrite_kernel_args(text, resolve, "/etc/default/grub")
    out, more = rewrite_console(out, "/etc/default/grub")
    assert out.splitlines() == ["# the installer wrote root=/dev/sda1 console=hvc0",
                                'GRUB_CMDLINE_LINUX="root=UUID=b00t-uuid console=ttyS0,115200"']
    assert [c.detail.split(":")[0] for c in changes + more] == ["line 2", "line 2"]
