"""pvhvm guest inspect / check and create's check, through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pvhvm.guest.kit import Kit
from tests import jsonout
from tests.cli_run import run
from tests.inspect.conftest import ROOT_UUID, InstalledImage

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"




def _cfg(tmp_path: Path, disk: str, name: str = "inst") -> Path:
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nbuilder = "hvm"\nmemory = 256\nboot = "c"\ndisk = [ "{disk}" ]\n'
                   'vif = [ "" ]\n')
    return cfg


def test_inspect_json_and_tables(capsys: pytest.CaptureFixture[str],
                                 ide_install: InstalledImage) -> None:
    code, out, err = run(capsys, "guest", "inspect", str(ide_install.path), "--json")
    assert code == 0, err
    document = jsonout.result(out)
    assert document["partition_table"]["scheme"] == "mbr"
    assert document["os"]["ID"] == "debian"
    assert document["bootloader"]["entries"][0]["cmdline"].startswith("root=/dev/sda2")
    assert "virtio_blk" not in document["kernels"][0]["initrd"]["drivers"]
    code, out, err = run(capsys, "guest", "inspect", str(ide_install.path))
    assert code == 0, err
    assert "Debian GNU/Linux 12 (bookworm)" in out and ROOT_UUID in out
    assert "zstd + microcode" in out
    assert max(len(line) for line in out.splitlines()) <= 120  # a pipe: fixed width


@pytest.mark.parametrize("make", ["missing", "directory", "qcow2"])
def test_inspect_bad_image_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       make: str) -> None:
    path = tmp_path / "img"
    if make == "directory":
        path.mkdir()
    elif make == "qcow2":
        path.write_bytes(b"QFI\xfb" + b"\0" * 64)
    code, out, err = run(capsys, "guest", "inspect", str(path))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"pvhvm: error: {path}: ")


def test_check_pv_plan_fails_and_names_the_driver(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path,
                                                  ide_install: InstalledImage) -> None:
    ide = _cfg(tmp_path, f"file:{ide_install.path},hda,w")
    code, out, err = run(capsys, "guest", "check", str(ide))
    assert code == 0, err
    assert "inst: boots" in out
    pv = _cfg(tmp_path, f"{ide_install.path},raw,hda,w,type=xenbus", "pv")
    code, out, err = run(capsys, "guest", "check", str(pv))
    assert code == 1
    assert "pv: will not boot" in out
    fatal = [line for line in err.splitlines() if line.startswith("fatal:")]
    assert any("lacks virtio_pci and virtio_blk" in line for line in fatal)
    assert any("root=/dev/sda2" in line and "/dev/vda2" in line for line in fatal)
    code, out, _ = run(capsys, "guest", "check", str(pv), "--json")
    assert code == 1
    document = jsonout.result(out)
    assert document["boots"] is False and document["disk"] == "hda"
    assert document["verdict"] == "will-not-boot"
    assert any("lacks virtio_pci and virtio_blk" in r for r in document["reasons"])
    assert {p["severity"] for p in document["problems"]} == {"fatal", "note"}


def test_check_bad_config_is_one_line(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('name = "x"\ndisk = [ open("/etc/passwd") ]\n')
    code, _, err = run(capsys, "guest", "check", str(cfg))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"pvhvm: error: {cfg}:2:")


def test_create_refuses_a_guest_that_will_not_boot(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, ide_install: InstalledImage,
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("PVHVM_STATE_DIR", str(state))
    pv = _cfg(tmp_path, f"{ide_install.path},raw,hda,w,type=xenbus", "pv")
    code, out, err = run(capsys, "create", str(pv), "--accel", "tcg")
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1] == (
        "pvhvm: error: pv will not boot as planned (3 fatal problems above); fix them "
        "(pvhvm guest prepare) or use --no-check to create it anyway"
    )
    assert "lacks virtio_pci and virtio_blk" in err
    assert not state.exists() or not any(p for p in state.rglob("*") if p.is_file()), sorted(state.rglob("*"))
    assert not any(name.startswith("pv") for name in os.listdir(tmp_path)
                   if name.endswith(".sock"))


def test_kit_examples_pass(capsys: pytest.CaptureFixture[str], kit: Kit) -> None:
    """The kit's direct-boot and firmware-boot guests: the host ramdisk and boot.img read."""
    for cfg in ("pv-only.cfg", "pv-only-firmware.cfg", "default.cfg"):
        code, out, err = run(capsys, "guest", "check", str(EXAMPLES / cfg),
                             f"imagedir={kit.directory}", "--json")
        assert code == 0, err
        document = jsonout.result(out)
        assert document["boots"] is True and document["problems"] == [], (cfg, document)
    # the kit's root= names the disk: on a PV disk /dev/sda will not exist
    code, out, err = run(capsys, "guest", "check", str(EXAMPLES / "pv-only.cfg"),
                         f"imagedir={kit.directory}", "extra=console=ttyS0 root=/dev/sda")
    assert code == 1
    assert "fatal: root=/dev/sda: /dev/sda will not exist: on this plan the root disk xvda " \
           "is /dev/vda" in err


def test_boot_entry(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                    ide_install: InstalledImage) -> None:
    code, out, err = run(capsys, "guest", "boot-entry", str(ide_install.path), "--json")
    assert code == 0, err
    assert jsonout.result(out)["cmdline"] == "root=/dev/sda2 ro console=ttyS0,115200"
    code, out, err = run(capsys, "guest", "boot-entry", str(ide_install.path),
                         "--extract", str(tmp_path), "--json")
    assert code == 0, err
    document = jsonout.result(out)
    assert Path(document["kernel_file"]).read_bytes() == ide_install.kernel
    assert Path(document["initrd_file"]).read_bytes() == ide_install.initrd
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 65536)
    before = sorted(tmp_path.iterdir())
    code, out, err = run(capsys, "guest", "boot-entry", str(blank), "--extract", str(tmp_path))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no default boot entry" in err
    assert sorted(tmp_path.iterdir()) == before  # nothing half-made
