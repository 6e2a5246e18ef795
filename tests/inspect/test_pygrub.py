"""bootloader = "pygrub" on the qemu platform: the kernel is found in the guest's disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.config.domain import config_from_text
from pvhvm.errors import ConfigError
from pvhvm.guest.kit import Kit
from pvhvm.inspect.pygrub import run_bootloader
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.xen.xlcfg import export_xl


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
