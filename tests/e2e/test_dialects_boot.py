"""Real guests from configs in Xen's shapes: an xl-dialect HVM guest, a Xen PV guest config,
and the xl.cfg keys pvhvm realises, as the running QEMU shows them (QMP)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.qemu.qmp import execute
from tests.e2e.conftest import EXAMPLES, Pvhvm

pytestmark = pytest.mark.e2e

IDE, SATA, USB, AUDIO, VGA = 0x0101, 0x0106, 0x0C03, 0x0403, 0x0300


def test_xl_hvm_untyped_devices_are_emulated_as_xl_emulates_them(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    """type="hvm": xvda with no type= is xl's emulated IDE disk, the untyped vif an
    rtl8139; the guest's own report says so (firmware boot from the IDE disk)."""
    domain.append("xl-hvm")
    pvhvm.run("create", str(EXAMPLES / "xl-hvm.cfg"), f"imagedir={imagedir}", "--accel", "tcg")
    report = pvhvm.wait_report("xl-hvm")
    assert report.has_class(IDE) and report.has_class(USB)
    assert report.root is not None and report.root.startswith("/dev/sda")
    assert {b.name: b.driver for b in report.blocks if not b.name.startswith("sr")} == {
        "sda": "ata_piix"}
    assert [n.driver for n in report.nets] in (["8139cp"], ["8139too"])


def test_pv_guest_config_runs_on_pv_devices_only(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    """No type= or builder=: a PV guest, so the untyped xvda and vif are PV and there is
    no IDE controller."""
    domain.append("pv-guest")
    pvhvm.run("create", str(EXAMPLES / "pv-guest.cfg"), f"imagedir={imagedir}", "--accel", "tcg")
    report = pvhvm.wait_report("pv-guest")
    assert not report.has_class(IDE) and not report.has_class(SATA)
    assert report.root == "/dev/vda"
    assert [n.driver for n in report.nets] == ["virtio_net"]


def test_xl_keys_reach_the_running_qemu(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    """vnc, stdvga, usb tablet, soundhw, maxmem, maxvcpus, hpet=0, parallel: QEMU accepts the
    argv pvhvm makes of them, and QMP shows each device."""
    cfg = tmp_path / "keys.cfg"
    cfg.write_text(
        'type = "hvm"\nname = "keys"\nmemory = 256\nmaxmem = 512\nvcpus = 1\nmaxvcpus = 2\n'
        f'kernel = "{imagedir}/vmlinuz"\nramdisk = "{imagedir}/initramfs.cpio.gz"\n'
        'extra = "console=ttyS0 root=/dev/vda"\n'
        f'disk = [ "format=raw, vdev=xvda, access=rw, type=xenbus, target={imagedir}/rootfs.ext4" ]\n'
        'vnc = 1\nvnclisten = "127.0.0.1"\nvncdisplay = 40\nvncunused = 1\nstdvga = 1\n'
        'vncpasswd = "s3cret-pw"\n'
        'usb = 1\nusbdevice = "tablet"\nsoundhw = "hda"\nhpet = 0\nparallel = "pty"\n'
        'rtc_timeoffset = 3600\nviridian = 1\n'
    )
    domain.append("keys")
    created = pvhvm.run("create", str(cfg), "--accel", "tcg", "--paused")
    assert "viridian is a setting of the Xen hypervisor" in created.stderr
    control = pvhvm.state / "domains" / "keys" / "ctl.sock"
    classes = [
        device["class_info"]["class"]
        for bus in execute(control, "query-pci") for device in bus["devices"]
    ]
    assert VGA in classes and USB in classes and AUDIO in classes and IDE not in classes
    vnc = execute(control, "query-vnc")
    assert vnc["enabled"] and vnc["host"] == "127.0.0.1" and int(vnc["service"]) >= 5940
    assert vnc["auth"] == "vnc"  # vncpasswd: from a 0600 file, never on QEMU's command line
    directory = pvhvm.state / "domains" / "keys"
    assert (directory / "vnc.secret").stat().st_mode & 0o777 == 0o600
    assert "s3cret-pw" not in (directory / "record.json").read_text()
    cpus = execute(control, "query-hotpluggable-cpus")
    assert len(cpus) == 2
    # maxmem is what QEMU boots with; the balloon holds all but memory back (as xl's HVM)
    memory = execute(control, "query-memory-size-summary")
    assert memory["base-memory"] == 512 << 20
    assert execute(control, "query-balloon")["actual"] == 512 << 20  # paused: not yet taken


def test_pygrub_config_boots_the_kernel_in_its_disk(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    """An xm PV config with bootloader = "pygrub" and no kernel=: pvhvm reads the disk's own
    boot loader config (the kit's extlinux), boots that kernel, every device PV."""
    cfg = tmp_path / "pygrub.cfg"
    cfg.write_text(f'name = "pygrub"\nbootloader = "pygrub"\nmemory = 512\n'
                   f'disk = [ "file:{imagedir}/boot.img,xvda,w" ]\nvif = [ "" ]\n')
    domain.append("pygrub")
    created = pvhvm.run("create", str(cfg), "--accel", "tcg")
    assert "as pygrub would" in created.stderr
    report = pvhvm.wait_report("pygrub")
    assert not report.has_class(IDE) and not report.has_class(SATA)
    assert report.root is not None and report.root.startswith("/dev/vda")


def test_bios_ovmf_boots_the_guest_under_uefi_firmware(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    """bios = "ovmf" (Debian's OVMF): the firmware QEMU runs is OVMF and the guest comes up."""
    cfg = tmp_path / "ovmf.cfg"
    cfg.write_text(
        'type = "hvm"\nname = "ovmf"\nmemory = 512\nbios = "ovmf"\n'
        f'kernel = "{imagedir}/vmlinuz"\nramdisk = "{imagedir}/initramfs.cpio.gz"\n'
        'extra = "console=ttyS0 root=/dev/vda"\n'
        f'disk = [ "format=raw, vdev=xvda, access=rw, type=xenbus, target={imagedir}/rootfs.ext4" ]\n'
    )
    domain.append("ovmf")
    pvhvm.run("create", str(cfg), "--accel", "tcg")
    argv = (pvhvm.state / "domains" / "ovmf" / "record.json").read_text()
    assert "/usr/share/ovmf/OVMF.fd" in argv
    report = pvhvm.wait_report("ovmf")
    assert report.root == "/dev/vda" and not report.has_class(IDE)
