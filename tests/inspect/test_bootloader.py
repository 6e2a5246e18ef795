"""Boot loader configurations written here the way grub-mkconfig, GRUB legacy's
update-grub and extlinux installs leave them."""

from __future__ import annotations

from pvhvm.inspect.bootloader import (
    parse_bls,
    parse_extlinux,
    parse_grub1,
    parse_grub2,
    parse_grubenv,
)
from tests.inspect.conftest import GRUB_CFG, RELEASE, ROOT_UUID


def _grub(default: str, env: str = "") -> tuple[int | None, list[str]]:
    text = GRUB_CFG.format(release=RELEASE, uuid=ROOT_UUID, root="/dev/sda2",
                           cmdline="console=ttyS0", default=default)
    config = parse_grub2(text, "/boot/grub/grub.cfg", parse_grubenv(env))
    return config.default, [e.title for e in config.entries]


def test_grub2_entries_and_submenu() -> None:
    text = GRUB_CFG.format(release=RELEASE, uuid=ROOT_UUID, root="/dev/sda2",
                           cmdline="console=ttyS0,115200 quiet", default="0")
    config = parse_grub2(text, "/boot/grub/grub.cfg")
    assert config.loader == "grub2"
    assert len(config.entries) == 3
    entry = config.default_entry
    assert entry is not None
    assert entry.title == "Debian GNU/Linux"
    assert entry.kernel == f"/vmlinuz-{RELEASE}"
    assert entry.initrd == (f"/initrd.img-{RELEASE}",)
    assert entry.cmdline == "root=/dev/sda2 ro console=ttyS0,115200 quiet"
    assert entry.argument("root") == "/dev/sda2"
    assert config.entries[2].cmdline.endswith("single")


def test_grub2_default_forms() -> None:
    titles = _grub("0")[1]
    assert _grub("0")[0] == 0
    assert _grub("1>1")[0] == 2  # submenu 1, its entry 1: recovery mode
    assert _grub("1")[0] == 1  # a submenu: its first entry
    assert _grub(f"gnulinux-{RELEASE}-recovery-{ROOT_UUID}")[0] == 2  # by --id
    assert _grub("Debian GNU/Linux")[0] == titles.index("Debian GNU/Linux")
    assert _grub("${saved_entry}", "saved_entry=1>0\n")[0] == 1
    assert _grub("${saved_entry}", "")[0] == 0
    default, _ = _grub("no such entry")
    assert default == 0


def test_grub1_menu_lst() -> None:
    text = """\
# menu.lst - See: grub(8), info grub
default		1
timeout		5
title		Debian GNU/Linux, kernel 2.6.18-6-xen-686
root		(hd0,0)
kernel		/boot/vmlinuz-2.6.18-6-xen-686 root=/dev/hda1 ro console=hvc0
initrd		/boot/initrd.img-2.6.18-6-xen-686

title		Debian GNU/Linux, kernel 2.6.18-6-686
root		(hd0,0)
kernel		(hd0,0)/boot/vmlinuz-2.6.18-6-686 root=/dev/hda1 ro
initrd		(hd0,0)/boot/initrd.img-2.6.18-6-686
savedefault
"""
    config = parse_grub1(text, "/boot/grub/menu.lst")
    assert [e.title for e in config.entries] == [
        "Debian GNU/Linux, kernel 2.6.18-6-xen-686", "Debian GNU/Linux, kernel 2.6.18-6-686",
    ]
    entry = config.default_entry
    assert entry is not None
    assert entry.kernel == "/boot/vmlinuz-2.6.18-6-686"
    assert entry.initrd == ("/boot/initrd.img-2.6.18-6-686",)
    assert entry.cmdline == "root=/dev/hda1 ro"
    assert config.entries[0].argument("console") == "hvc0"


def test_extlinux_labels_default_and_relative_paths() -> None:
    text = """\
DEFAULT linux
PROMPT 0
TIMEOUT 50
APPEND ro
LABEL rescue
  MENU LABEL Rescue shell
  KERNEL vmlinuz-rescue
  APPEND init=/bin/sh
label linux
	menu label Debian
	linux /boot/vmlinuz-6.1.0-18-amd64
	append initrd=/boot/initrd.img-6.1.0-18-amd64 root=UUID=abc ro console=ttyS0
label other
  kernel /boot/vmlinuz-old
  initrd /boot/initrd-old,/boot/extra.img
"""
    config = parse_extlinux(text, "/boot/extlinux/extlinux.conf")
    assert [e.title for e in config.entries] == ["Rescue shell", "Debian", "other"]
    entry = config.default_entry
    assert entry is not None
    assert entry.kernel == "/boot/vmlinuz-6.1.0-18-amd64"
    assert entry.initrd == ("/boot/initrd.img-6.1.0-18-amd64",)
    assert entry.cmdline == "root=UUID=abc ro console=ttyS0"
    assert config.entries[0].kernel == "/boot/extlinux/vmlinuz-rescue"
    assert config.entries[2].initrd == ("/boot/initrd-old", "/boot/extra.img")
    assert config.entries[2].cmdline == "ro"  # the global APPEND


def test_extlinux_menu_default_wins() -> None:
    text = "DEFAULT a\nLABEL a\n KERNEL /a\nLABEL b\n MENU DEFAULT\n KERNEL /b\n"
    entry = parse_extlinux(text, "/extlinux.conf").default_entry
    assert entry is not None and entry.kernel == "/b"


def test_empty_configs() -> None:
    assert parse_grub2("", "g").default_entry is None
    assert parse_grub1("default 0\n", "m").default_entry is None
    assert parse_extlinux("DEFAULT x\n", "e").default_entry is None


def test_bls_entries_fedora_style() -> None:
    entries = {
        "abc-6.5.6-300.fc39.x86_64.conf":
            "title Fedora Linux (6.5.6-300.fc39.x86_64) 39\nversion 6.5.6-300.fc39.x86_64\n"
            "linux /vmlinuz-6.5.6-300.fc39.x86_64\ninitrd /initramfs-6.5.6-300.fc39.x86_64.img\n"
            "options $kernelopts\ngrub_users $grub_users\n",
        "abc-6.10.3-200.fc39.x86_64.conf":
            "title Fedora Linux (6.10.3-200.fc39.x86_64) 39\nversion 6.10.3-200.fc39.x86_64\n"
            "linux /vmlinuz-6.10.3-200.fc39.x86_64\n"
            "initrd /initramfs-6.10.3-200.fc39.x86_64.img\noptions root=UUID=r ro rhgb\n",
        "notes.conf": "title no kernel here\n",
    }
    env = parse_grubenv("kernelopts=root=/dev/xvda2 ro console=hvc0\n")
    config = parse_bls(entries, "/boot/loader/entries", env)
    assert config.loader == "grub2-bls"
    assert [e.title for e in config.entries] == [
        "Fedora Linux (6.10.3-200.fc39.x86_64) 39", "Fedora Linux (6.5.6-300.fc39.x86_64) 39",
    ]
    assert config.default == 0  # the highest version, 6.10 above 6.5
    assert config.entries[1].cmdline == "root=/dev/xvda2 ro console=hvc0"
    saved = parse_bls(entries, "e", {**env, "saved_entry": "abc-6.5.6-300.fc39.x86_64"})
    assert saved.default_entry is not None
    assert saved.default_entry.kernel == "/vmlinuz-6.5.6-300.fc39.x86_64"
