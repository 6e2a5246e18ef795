"""check_guest on installed-looking images against real plans (config file → make_plan)."""

from __future__ import annotations

from pathlib import Path

from pvhvm.config.domain import Dialect, load_config
from pvhvm.inspect.check import Problem, Severity, check_plan, guest_disk_names
from pvhvm.plan.plan import Plan, Platform, make_plan
from tests.inspect.conftest import (
    IDE_MODULES,
    PV_MODULES,
    ROOT_UUID,
    InstalledImage,
    installed_image,
)


def plan_for(tmp_path: Path, disks: list[str], *, platform: Platform = Platform.QEMU,
             extra: str = "", vif: str = '[""]', dialect: Dialect = Dialect.XEND_302) -> Plan:
    cfg = tmp_path / "guest.cfg"
    cfg.write_text(f'name = "g"\nbuilder = "hvm"\nboot = "c"\ndisk = {disks!r}\nvif = {vif}\n{extra}')
    # written with the RFC's defaults (an untyped xvd disk is PV): xend 3.0.2 (issue 20)
    return make_plan(load_config(cfg, {}, dialect), platform)


def lines(problems: list[Problem], severity: Severity | None = None) -> list[str]:
    return [p.line() for p in problems if severity is None or p.severity is severity]


def test_ide_install_boots_on_ide(ide_install: InstalledImage, tmp_path: Path) -> None:
    plan = plan_for(tmp_path, [f"file:{ide_install.path},hda,w"],
                    vif='["type=ioemu, model=e1000"]')
    result = check_plan(plan)
    assert not result.fatal, lines(result.problems)
    assert result.report is not None and result.disk is not None
    assert result.disk.vdev == "hda"


def test_an_emulated_scsi_root_needs_sym53c8xx(tmp_path: Path) -> None:
    """sd* is emulated as SCSI on the lsi53c895a (issue 20): an IDE install's initramfs has
    ata_piix but not sym53c8xx, so that root disk is not found; one that has it boots."""
    scsi = "drivers/scsi/sym53c8xx_2/sym53c8xx"
    for modules, fatal in (((), True), ((scsi,), False)):
        image = installed_image(tmp_path / f"scsi{len(modules)}",
                                modules=(*IDE_MODULES, *modules))
        plan = plan_for(tmp_path, [f"file:{image.path},sda,w"], vif='["type=xenbus"]',
                        dialect=Dialect.XM)
        assert plan.disks[0].scsi_unit == 0
        found = lines(check_plan(plan).problems, Severity.FATAL)
        assert any("emulated SCSI" in line and "sym53c8xx" in line for line in found) is fatal


def test_ide_install_on_pv_disk_names_driver_and_devices(ide_install: InstalledImage,
                                                         tmp_path: Path) -> None:
    plan = plan_for(tmp_path, [f"{ide_install.path},raw,hda,w,type=xenbus"])
    result = check_plan(plan)
    assert result.fatal
    fatal = lines(result.problems, Severity.FATAL)
    driver = [line for line in fatal if "lacks" in line]
    assert len(driver) == 1  # one problem: the PV disk's drivers
    assert "lacks virtio_pci and virtio_blk" in driver[0]
    assert "(built by initramfs-tools with MODULES=dep)" in driver[0]
    assert "initrd.img-6.1.0-99-amd64" in driver[0]
    assert "pvhvm guest prepare" in driver[0]
    root = [line for line in fatal if line.startswith("fatal: root=/dev/sda2")]
    assert root and "/dev/vda" in root[0] and f"UUID={ROOT_UUID}" in root[0]
    boot = [line for line in fatal if "fstab line 3 (/boot)" in line]
    assert boot and "/dev/sda1 will not exist" in boot[0] and "/dev/vda1" in boot[0]
    notes = lines(result.problems, Severity.NOTE)
    assert any("fstab line 2 (/)" in n for n in notes)  # root: mounted by root= already
    assert any("fstab line 4 (none)" in n for n in notes)  # swap: wanted, not required


def test_full_initramfs_with_uuids_passes_at_once(tmp_path: Path) -> None:
    image = installed_image(tmp_path / "full", modules=(*IDE_MODULES, *PV_MODULES),
                            root=f"UUID={ROOT_UUID}", fstab_boot="LABEL=boot",
                            compression="gzip")
    pv = check_plan(plan_for(tmp_path, [f"{image.path},raw,xvda,w"]))
    assert not pv.fatal, lines(pv.problems)
    # only the swap partition's /dev/sda5 is left, as a note: swap is wanted, not required
    assert [p.subject for p in pv.problems] == ["fstab line 4 (none)"]
    ide = check_plan(plan_for(tmp_path, [f"file:{image.path},hda,w"]))
    assert ide.problems == []


def test_xen_platform_needs_xen_blkfront(ide_install: InstalledImage, tmp_path: Path) -> None:
    plan = plan_for(tmp_path, [f"{ide_install.path},raw,xvda,w"], platform=Platform.XEN)
    fatal = lines(check_plan(plan).problems, Severity.FATAL)
    assert any("xen_blkfront" in line for line in fatal)
    assert any(line.startswith("fatal: root=/dev/sda2: /dev/sda2 will not exist")
               and "/dev/xvda2" in line for line in fatal)


def test_console_and_nic_notes(tmp_path: Path) -> None:
    image = installed_image(tmp_path / "hvc", cmdline="console=hvc0",
                            modules=(*IDE_MODULES, *PV_MODULES))
    plan = plan_for(tmp_path, [f"file:{image.path},hda,w"], vif='["type=ioemu, model=ne2k_pci"]')
    problems = check_plan(plan).problems
    subjects = {p.subject: p for p in problems}
    assert subjects["console=hvc0"].severity is Severity.NOTE
    assert "ttyS0" in subjects["console"].line()
    assert "no ne2k_pci module" in subjects["vif 0"].message


def test_a_pv_guest_xen_runs_has_hvc0_as_its_console(tmp_path: Path) -> None:
    """A PV domU on Xen has Xen's PV console (hvc0) and no serial port: nothing is said of
    console=hvc0 there; the same guest on QEMU (run as HVM) is told about ttyS0."""
    image = installed_image(tmp_path / "hvc", cmdline="console=hvc0",
                            modules=(*IDE_MODULES, *PV_MODULES))
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 4096)
    cfg = tmp_path / "pv.cfg"
    cfg.write_text(f'name = "g"\nkernel = "{kernel}"\nextra = "console=hvc0 root=/dev/xvda1"\n'
                   f'disk = ["{image.path},raw,xvda,w"]\n')
    xen = check_plan(make_plan(load_config(cfg, {}), Platform.XEN)).problems
    assert not [p for p in xen if p.subject.startswith("console")], lines(xen)
    qemu = check_plan(make_plan(load_config(cfg, {}), Platform.QEMU)).problems
    assert {"console=hvc0", "console"} <= {p.subject for p in qemu}, lines(qemu)


def test_guest_disk_names(tmp_path: Path, ide_install: InstalledImage) -> None:
    other = tmp_path / "data.img"
    other.write_bytes(b"\0" * 4096)
    plan = plan_for(tmp_path, [
        f"file:{other},hdb,w!", f"{other},raw,xvdc,w!,type=xenbus",
        f"file:{ide_install.path},hda,w!", f"{other},raw,sdb,w!", ",hdc:cdrom,r",
    ])
    assert guest_disk_names(plan) == {
        "hda": "sda", "hdb": "sdb", "hdc": "sr0", "xvdc": "vda", "sdb": "vdb",
    }
    xen = plan_for(tmp_path, [f"{other},raw,xvdc,w!", f"{other},raw,hda,w!,type=xenbus"],
                   platform=Platform.XEN)
    assert guest_disk_names(xen) == {"xvdc": "xvdc", "hda": "xvda"}


def test_unreadable_images_are_notes(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * 65536)
    result = check_plan(plan_for(tmp_path, [f"{blank},raw,xvda,w"]))
    assert not result.fatal and result.report is None
    assert "no Linux root filesystem" in result.problems[0].message
    qcow = tmp_path / "g.qcow2"
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 512)
    result = check_plan(plan_for(tmp_path, [f"{qcow},qcow2,xvda,w"]))
    assert not result.fatal and "qcow2 image is not inspected" in result.problems[0].message


def test_what_firmware_boots_first_decides(ide_install: InstalledImage, tmp_path: Path) -> None:
    """A guest booting an installer CD or the network first, or with no disk at all, is not
    refused for what its hard disk holds."""
    pv = f"{ide_install.path},raw,hda,w,type=xenbus"
    iso = tmp_path / "installer.iso"
    iso.write_bytes(b"\0" * 4096)
    for disks, boot in (([pv, f"{iso},raw,hdc:cdrom,r"], "dc"), ([pv], "nc"), ([], "n")):
        result = check_plan(plan_for(tmp_path, disks, extra=f'boot = "{boot}"\n'))
        assert not result.fatal, (disks, boot, lines(result.problems))
        assert len(result.problems) == 1
    assert check_plan(plan_for(tmp_path, [pv], extra='boot = "cd"\n')).fatal
