"""A real guest whose root disk is an emulated SCSI disk (issue 20): an untyped ``sda`` in an
HVM guest, as xl (libxl_dm.c) and xend emulate it, booted by SeaBIOS from the lsi53c895a
(bootindex) and driven by the guest's stock sym53c8xx driver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Pvhvm, json_of

pytestmark = pytest.mark.e2e

SCSI, IDE, SATA = 0x0100, 0x0101, 0x0106
LSI_VENDOR, LSI_53C895A = 0x1000, 0x0012


def test_root_on_an_emulated_scsi_disk_boots_from_firmware(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "scsi.cfg"
    cfg.write_text(
        'name = "scsi"\nbuilder = "hvm"\nmemory = 256\nboot = "c"\n'
        f'disk = [ "{imagedir}/boot.img,raw,sda,rw" ]\n'
    )
    planned = json_of(pvhvm.run("create", str(cfg), "--dry-run", "--json"))
    assert planned["scsi_controller"] == "lsi53c895a" and not planned["ide_controller"]
    disks = planned["disks"]
    assert isinstance(disks, list) and len(disks) == 1
    assert (disks[0]["type"], disks[0]["scsi_unit"], disks[0]["bootindex"]) == ("ioemu", 0, 0)
    # wide enough that no cell wraps (a table fits COLUMNS, 120 when piped, folding the long
    # pytest paths and wrapping the other cells to make room)
    table = subprocess.run([sys.executable, "-m", "pvhvm", "create", str(cfg), "--dry-run"],
                           capture_output=True, text=True, env={**pvhvm.env(), "COLUMNS": "250"},
                           timeout=120, check=True).stdout
    assert "SCSI disk (lsi53c895a)" in table

    domain.append("scsi")
    pvhvm.run("create", str(cfg), "--accel", "tcg")
    report = pvhvm.wait_report("scsi")
    controllers = [f for f in report.pci if f.pci_class == SCSI]
    assert [(f.vendor, f.device, f.driver) for f in controllers] == [
        (LSI_VENDOR, LSI_53C895A, "sym53c8xx")]
    assert not report.has_class(IDE) and not report.has_class(SATA)  # q35: SCSI only
    assert {b.name: b.driver for b in report.blocks} == {"sda": "sym53c8xx"}
    assert report.root.startswith("/dev/sda")
