"""guest prepare's pure rewriting: fstab, crypttab, bootloader arguments, initramfs modules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.guest.prepare import (
    DRACUT_CONF,
    DRACUT_CONF_TEXT,
    INITRAMFS_MODULES_FILE,
    VIRTIO_MODULES,
    PrepareError,
    RootFilesystem,
    add_initramfs_modules,
    plan_changes,
    resolver_for,
    rewrite_crypttab,
    rewrite_default_grub,
    rewrite_fstab,
    rewrite_kernel_args,
    root_spec_of,
)

ROOT = RootFilesystem(device="/dev/sda1", partition=1, uuids={1: "1111-root", 2: "2222-swap"})
RESOLVE = resolver_for(ROOT, "/dev/sda1")

FSTAB = """\
# /etc/fstab: static file system information.
/dev/sda1  /      ext4  errors=remount-ro  0  1
/dev/sda2  none   swap  sw                 0  0
/dev/sdb1  /data  ext4  defaults,nofail    0  2
UUID=abcd  /srv   ext4  defaults           0  2
proc       /proc  proc  defaults           0  0
/dev/sda3  /x     ext4  defaults           0  2   # no such partition on this disk
"""


def test_fstab_kernel_names_of_the_root_disk_become_uuids() -> None:
    text, changes = rewrite_fstab(FSTAB, RESOLVE)
    lines = text.splitlines()
    assert lines[0] == "# /etc/fstab: static file system information."
    assert lines[1] == "UUID=1111-root  /      ext4  errors=remount-ro  0  1"
    assert lines[2].startswith("UUID=2222-swap  none   swap")
    assert lines[3].startswith("/dev/sdb1  /data")  # another disk: not this image
    assert lines[4].startswith("UUID=abcd") and lines[5].startswith("proc")
    assert lines[6].startswith("/dev/sda3")  # no filesystem known there: left alone
    assert [c.detail for c in changes] == [
        "line 2: /dev/sda1 -> UUID=1111-root", "line 3: /dev/sda2 -> UUID=2222-swap",
    ]
    assert all(c.kind == "fstab" for c in changes)


def test_hd_and_xvd_names_resolve_on_their_own_disk() -> None:
    for name in ("/dev/hda1", "/dev/xvda1", "/dev/vda1"):
        resolve = resolver_for(ROOT, name)
        text, changes = rewrite_fstab(f"{name} / ext4 defaults 0 1\n", resolve)
        assert text == "UUID=1111-root / ext4 defaults 0 1\n" and len(changes) == 1


def test_crypttab_rewrites_the_device_field() -> None:
    text, changes = rewrite_crypttab("cr_home /dev/sda2 none luks\n", RESOLVE)
    assert text == "cr_home UUID=2222-swap none luks\n"
    assert changes[0].path == "/etc/crypttab"


def test_kernel_args_root_and_resume_only() -> None:
    cfg = ("\tlinux /boot/vmlinuz root=/dev/sda1 ro resume=/dev/sda2 console=ttyS0\n"
           "\tlinux /boot/vmlinuz myroot=/dev/sda1 root=UUID=x\n")
    text, changes = rewrite_kernel_args(cfg, RESOLVE, "/boot/grub/grub.cfg")
    assert "root=UUID=1111-root ro resume=UUID=2222-swap console=ttyS0" in text
    assert "myroot=/dev/sda1 root=UUID=x" in text
    assert [c.detail.split(":")[0] for c in changes] == ["line 1", "line 1"]


def test_default_grub_stops_naming_devices() -> None:
    text, changes = rewrite_default_grub(
        'GRUB_CMDLINE_LINUX="root=/dev/sda1 console=ttyS0"\nGRUB_DISABLE_LINUX_UUID=true\n',
        RESOLVE)
    assert 'GRUB_CMDLINE_LINUX="root=UUID=1111-root console=ttyS0"' in text
    assert "#GRUB_DISABLE_LINUX_UUID=true" in text
    assert len(changes) == 2


def test_initramfs_modules_appended_in_virt_v2v_order_once() -> None:
    text, added = add_initramfs_modules("# comment\nata_piix\nvirtio-pci\n")
    assert added == [m for m in VIRTIO_MODULES if m != "virtio_pci"]
    assert text.splitlines()[-len(added):] == added
    again, none = add_initramfs_modules(text)
    assert again == text and none == []


def test_root_spec_from_fstab_else_bootloader() -> None:
    assert root_spec_of(FSTAB, None) == "/dev/sda1"
    assert root_spec_of("", "linux /vmlinuz root=/dev/hda1 ro") == "/dev/hda1"
    assert root_spec_of(None, None) is None


_names = st.sampled_from(["/dev/sda1", "/dev/sda2", "/dev/sdb1", "UUID=abc", "LABEL=root",
                          "proc", "tmpfs", "/dev/mapper/vg-root", "#", "/dev/hda1"])
_line = st.lists(st.one_of(_names, st.sampled_from(["/", "/x", "ext4", "defaults", "0"])),
                 min_size=0, max_size=6).map(" ".join)


@given(st.lists(_line, max_size=8))
def test_fstab_rewrite_touches_only_kernel_names(lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    out, changes = rewrite_fstab(text, RESOLVE)
    assert len(out.splitlines()) == len(lines)
    changed = [a for a, b in zip(text.splitlines(), out.splitlines(), strict=True) if a != b]
    assert len(changed) == len(changes)
    for before, after in zip(text.splitlines(), out.splitlines(), strict=True):
        if before != after:
            assert before.split()[0] in ("/dev/sda1", "/dev/sda2")
            assert after.split()[0].startswith("UUID=")
            assert before.split()[1:] == after.split()[1:]
    again, more = rewrite_fstab(out, RESOLVE)
    assert again == out and more == []



class FakeGuest:
    """A guest's files as a dict (path → text; None: a path that exists but is not a regular
    file, such as a directory), for plan_changes without an appliance."""

    def __init__(self, files: dict[str, str | None]) -> None:
        self.files = files

    def exists(self, path: str) -> bool:
        return path in self.files

    def listdir(self, path: str) -> list[str] | None:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/")[0] for p in self.files if p.startswith(prefix)})

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)


DEBIAN = {
    "/usr/sbin/update-initramfs": "#!/bin/sh\n",
    "/boot/vmlinuz-6.1.0-9-amd64": "", "/boot/initrd.img-6.1.0-9-amd64": "",
    "/etc/fstab": "/dev/sda1 / ext4 defaults 0 1\n/dev/sda2 /boot ext4 defaults 0 2\n",
    "/boot/grub/grub.cfg": "linux /vmlinuz-6.1.0-9-amd64 root=/dev/sda1 ro\n",
}


def test_plan_with_a_separate_boot_rewrites_both_names() -> None:
    plan = plan_changes(FakeGuest(dict(DEBIAN)), ROOT, "disk.img")
    assert plan.commands == []  # by default no guest program runs: the drivers are appended
    assert any(c.kind == "initramfs" and "appended" in c.detail for c in plan.changes)
    regenerated = plan_changes(FakeGuest(dict(DEBIAN)), ROOT, "disk.img", regenerate=True)
    assert regenerated.commands == [(["/usr/sbin/update-initramfs", "-u", "-k", "all"],
                                     "update-initramfs")]
    assert regenerated.edits == plan.edits
    assert plan.kernels == ["6.1.0-9-amd64"]
    assert plan.edits["/etc/fstab"][1].splitlines() == [
        "UUID=1111-root / ext4 defaults 0 1", "UUID=2222-swap /boot ext4 defaults 0 2"]
    assert "root=UUID=1111-root" in plan.edits["/boot/grub/grub.cfg"][1]
    assert plan.edits[INITRAMFS_MODULES_FILE][1].splitlines()[-5:] == list(VIRTIO_MODULES)


def test_plan_leaves_a_modules_file_that_is_no_regular_file_alone() -> None:
    plan = plan_changes(FakeGuest({**DEBIAN, INITRAMFS_MODULES_FILE: None}), ROOT, "disk.img")
    assert INITRAMFS_MODULES_FILE not in plan.edits
    assert any("not a regular file" in note for note in plan.notes)


def test_plan_for_a_dracut_guest_adds_a_conf_file_and_rebuilds_each_kernel() -> None:
    files = {k: v for k, v in DEBIAN.items() if "update-initramfs" not in k}
    files.update({"/usr/bin/dracut": "", "/boot/vmlinuz-5.14.0-1.el9": "",
                  "/boot/initramfs-5.14.0-1.el9.img": ""})
    assert plan_changes(FakeGuest(files), ROOT, "disk.img").commands == []
    plan = plan_changes(FakeGuest(files), ROOT, "disk.img", regenerate=True)
    assert plan.edits[DRACUT_CONF] == ("", DRACUT_CONF_TEXT)
    assert 'add_drivers+=" virtio virtio_ring virtio_pci virtio_blk virtio_net "' in \
        DRACUT_CONF_TEXT
    assert plan.commands == [
        (["/usr/bin/dracut", "-f", "/boot/initramfs-5.14.0-1.el9.img", "5.14.0-1.el9"],
         "dracut"),
        (["/usr/bin/dracut", "-f", "/boot/initrd.img-6.1.0-9-amd64", "6.1.0-9-amd64"],
         "dracut"),
    ]
    again = plan_changes(FakeGuest({**files, DRACUT_CONF: DRACUT_CONF_TEXT}), ROOT, "d")
    assert DRACUT_CONF not in again.edits


def test_plan_refuses_a_guest_without_initramfs_tools_or_dracut() -> None:
    files = {k: v for k, v in DEBIAN.items() if "update-initramfs" not in k}
    with pytest.raises(PrepareError, match="neither initramfs-tools nor dracut"):
        plan_changes(FakeGuest(files), ROOT, "disk.img")
