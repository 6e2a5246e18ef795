"""bootloader = "pygrub" on the qemu platform: the kernel is found in the guest's disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.config.domain import config_from_text
from pvhvm.errors import ConfigError
from pvhvm.guest.kit import Kit
from pvhvm.inspect.pygrub import INITRD_NAME, KERNEL_NAME, run_bootloader
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.qemu.argv import RunPaths, qemu_argv
from pvhvm.xen.xlcfg import export_xl
from tests.inspect.conftest import make_ext4, write_tree


def pygrub_config(disk: str, extra: str = "") -> str:
    return f'name = "pg"\nbootloader = "pygrub"\ndisk = [ "file:{disk},xvda,w" ]\n{extra}'


def test_finds_the_default_entry_of_the_kits_boot_disk(kit: Kit, tmp_path: Path) -> None:
    config = config_from_text(pygrub_config(str(kit.directory / "boot.img"), 'extra = "quiet"'),
                              "g.cfg")
    booted = run_bootloader(config, tmp_path)
    assert booted.kernel is not None and Path(booted.kernel).is_file()
    assert booted.ramdisk is not None and Path(booted.ramdisk).is_file()
    assert booted.cmdline is not None and booted.cmdline.endswith(" quiet")
    assert "root=" in booted.cmdline and any("as pygrub would" in w for w in booted.warnings)
    plan = make_plan(booted)
    assert plan.direct_kernel_boot and not plan.ide_controller
    # a second create replaces the copies: one folder per domain
    run_bootloader(config, tmp_path)
    assert len(list((tmp_path / "pg").iterdir())) == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (pygrub_config("/nonexistent.img"), "is not a file or block device"),
        ('name="pg"\nbootloader="pygrub"\n', "no disk to boot from"),
        ('name="pg"\nbootloader="/usr/bin/grub-legacy"\ndisk=["file:/a,xvda,w"]',
         "as pygrub does"),
    ],
)
def test_what_cannot_be_booted_is_one_line(text: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_bootloader(config_from_text(text, "g.cfg"), tmp_path)
    assert words in str(info.value) and str(info.value).startswith("g.cfg")
    assert not list(tmp_path.rglob("vmlinuz*"))


def test_an_image_with_no_boot_loader_leaves_nothing(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(ConfigError, match="bootloader = 'pygrub': "):
        run_bootloader(config_from_text(pygrub_config(str(blank)), "g.cfg"), tmp_path / "c")
    assert not (tmp_path / "c" / "pg").exists()


def test_the_xen_platform_and_export_keep_the_bootloader() -> None:
    plan = make_plan(config_from_text(pygrub_config("/srv/g.img"), "g.cfg"), Platform.XEN,
                     check_files=False)
    text = export_xl(plan).text
    assert 'type = "pv"' in text and 'bootloader = "pygrub"' in text


def test_a_guest_chosen_initrd_name_never_reaches_argv(tmp_path: Path) -> None:
    """Issue 18: a guest's boot entry names an initrd with a comma; QEMU's -initrd splits at
    commas, so that name on argv would load a second (host) file as a multiboot module.
    The copies get pvhvm's own names, and the guest's names are nowhere on argv."""
    kernel, initrd = b"KERNEL-BYTES" * 100, b"INITRD-BYTES" * 100
    tree = write_tree(tmp_path / "t", {
        "etc/fstab": "/dev/xvda / ext4 defaults 0 1\n",
        "boot/grub/grub.cfg": ("menuentry 'evil' {\n linux /boot/vm,linuz root=/dev/xvda\n"
                               " initrd /boot/initrd.img,vmlinuz\n}\n"),
        "boot/vm,linuz": kernel,
        "boot/initrd.img,vmlinuz": initrd,
    })
    image = make_ext4(tmp_path / "guest.img", tree, 8)
    config = config_from_text(pygrub_config(str(image)), "g.cfg")
    booted = run_bootloader(config, tmp_path / "cache")
    assert booted.kernel is not None and booted.ramdisk is not None
    assert Path(booted.kernel).name == KERNEL_NAME and Path(booted.ramdisk).name == INITRD_NAME
    assert Path(booted.kernel).read_bytes() == kernel
    assert Path(booted.ramdisk).read_bytes() == initrd
    argv = qemu_argv(make_plan(booted), RunPaths(
        qmp_socket=tmp_path / "q", control_socket=tmp_path / "c",
        console_socket=tmp_path / "s", console_log=tmp_path / "l"))
    assert argv[argv.index("-initrd") + 1] == booted.ramdisk
    assert not any("initrd.img," in item or "vm,linuz" in item for item in argv)
    # one folder of pvhvm's own for the domain, nothing else left in it
    (extracted,) = (tmp_path / "cache" / "pg").iterdir()
    assert sorted(p.name for p in extracted.iterdir()) == [INITRD_NAME, KERNEL_NAME]
