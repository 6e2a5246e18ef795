"""fstab, crypttab, shell fragments and inittab as guests have them."""

from __future__ import annotations

from pvhvm.inspect.etcfiles import (
    Naming,
    classify,
    parse_crypttab,
    parse_fstab,
    parse_inittab_gettys,
    parse_shell_assignments,
)


def test_classify_every_naming() -> None:
    cases = {
        "/dev/sda1": (Naming.KERNEL_NAME, "sda1", "sda", 1),
        "/dev/hda": (Naming.KERNEL_NAME, "hda", "hda", None),
        "/dev/xvdb3": (Naming.KERNEL_NAME, "xvdb3", "xvdb", 3),
        "/dev/vdaa2": (Naming.KERNEL_NAME, "vdaa2", "vdaa", 2),
        "UUID=abcd-1234": (Naming.UUID, "abcd-1234", "", None),
        'LABEL="root fs"': (Naming.LABEL, "root fs", "", None),
        "PARTUUID=1234abcd-02": (Naming.PARTUUID, "1234abcd-02", "", None),
        "/dev/disk/by-uuid/abcd": (Naming.UUID, "abcd", "", None),
        "/dev/mapper/vg-root": (Naming.MAPPER, "/dev/mapper/vg-root", "", None),
        "/dev/vg0/root": (Naming.MAPPER, "/dev/vg0/root", "", None),
        "/dev/md0": (Naming.OTHER_PATH, "/dev/md0", "", None),
        "tmpfs": (Naming.NONE, "tmpfs", "", None),
    }
    for spec, (naming, value, disk, partition) in cases.items():
        device = classify(spec)
        assert (device.naming, device.value, device.disk, device.partition) == (
            naming, value, disk, partition), spec


def test_fstab() -> None:
    text = (
        "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
        "/dev/hda1 / ext3 errors=remount-ro 0 1\n"
        "UUID=1111-2222 /boot/efi vfat umask=0077 0 1\n"
        "LABEL=data /srv/my\\040data ext4 defaults,nofail 0 2\n"
        "proc /proc proc defaults 0 0\n"
        "tmpfs /tmp tmpfs defaults 0 0\n"
        "/dev/sda5 none swap sw 0 0\n"
        "broken-line\n"
    )
    entries = parse_fstab(text)
    assert [(e.line, e.device.naming, e.mountpoint) for e in entries] == [
        (2, Naming.KERNEL_NAME, "/"), (3, Naming.UUID, "/boot/efi"),
        (4, Naming.LABEL, "/srv/my data"), (7, Naming.KERNEL_NAME, "none"),
    ]
    assert entries[2].nofail and not entries[0].nofail
    assert entries[0].passno == 1 and entries[3].fstype == "swap"


def test_crypttab() -> None:
    entries = parse_crypttab("# comment\nsda3_crypt /dev/sda3 none luks,discard\n"
                             "home UUID=abc /etc/key\n")
    assert [(e.name, e.device.spec, e.options) for e in entries] == [
        ("sda3_crypt", "/dev/sda3", ("luks", "discard")), ("home", "UUID=abc", ()),
    ]


def test_shell_assignments() -> None:
    values = parse_shell_assignments(
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet splash"\n'
        "GRUB_CMDLINE_LINUX='root=/dev/sda1 console=ttyS0'  # serial\n"
        'export GRUB_TERMINAL=serial\nGRUB_X="$GRUB_TERMINAL more"\n'
        "if [ -x /x ]; then\n  :\nfi\n"
    )
    assert values["GRUB_CMDLINE_LINUX_DEFAULT"] == "quiet splash"
    assert values["GRUB_CMDLINE_LINUX"] == "root=/dev/sda1 console=ttyS0"
    assert values["GRUB_X"] == "serial more"
    assert "if" not in values


def test_inittab_gettys() -> None:
    text = ("id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n"
            "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n"
            "#T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100\n"
            "hvc0::respawn:/sbin/getty -L hvc0 9600\n"
            "::respawn:/bin/cttyhack /bin/sh -l\n")
    assert parse_inittab_gettys(text) == ["tty1", "ttyS0", "hvc0"]
