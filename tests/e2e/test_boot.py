"""Real guests under QEMU (TCG): each asserts from the guest's own device report.

PCI class 0x0101 is an IDE controller, 0x0106 a SATA controller; virtio-blk is 0x0100.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pvhvm.guest.report import DeviceReport
from tests.e2e.conftest import EXAMPLES, Pvhvm, json_of

pytestmark = pytest.mark.e2e

IDE, SATA = 0x0101, 0x0106


def boot(pvhvm: Pvhvm, domain: list[str], imagedir: Path, example: str, name: str,
         *extra: str) -> DeviceReport:
    domain.append(name)
    pvhvm.run("create", str(EXAMPLES / example), f"imagedir={imagedir}", f"name={name}",
              "--accel", "tcg", *extra)
    return pvhvm.wait_report(name)


def drivers(report: DeviceReport) -> dict[str, str | None]:
    return {b.name: b.driver for b in report.blocks if not b.name.startswith("sr")}


def test_pv_only_direct_kernel_boot(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    report = boot(pvhvm, domain, imagedir, "pv-only.cfg", "pv-direct")
    assert not report.has_class(IDE) and not report.has_class(SATA)
    assert report.root == "/dev/vda"
    assert drivers(report) == {"vda": "virtio_blk"}
    assert [n.driver for n in report.nets] == ["virtio_net"]
    shown = json_of(pvhvm.run("report", "pv-direct", "--json"))
    assert shown["ide_controller"] is False and shown["root"] == "/dev/vda"


def test_pv_only_firmware_boot_from_pv_disk(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    report = boot(pvhvm, domain, imagedir, "pv-only-firmware.cfg", "pv-firmware")
    assert not report.has_class(IDE) and not report.has_class(SATA)
    assert report.root is not None and report.root.startswith("/dev/vda")
    assert drivers(report) == {"vda": "virtio_blk"}
    assert [n.driver for n in report.nets] == ["virtio_net"]


def test_default_config_is_emulated(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    report = boot(pvhvm, domain, imagedir, "default.cfg", "default")
    assert report.has_class(IDE)
    assert report.root is not None and report.root.startswith("/dev/sda")
    assert drivers(report) == {"sda": "ata_piix"}
    assert [n.driver for n in report.nets] in (["8139cp"], ["8139too"])


def test_mixed_each_disk_seen_once(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    report = boot(pvhvm, domain, imagedir, "mixed.cfg", "mixed")
    assert report.has_class(IDE)
    assert report.root == "/dev/sda"
    # hda behind the IDE controller, xvdb on virtio only: two disks, each seen once.
    assert drivers(report) == {"sda": "ata_piix", "vda": "virtio_blk"}
    assert sorted(n.driver or "" for n in report.nets) == ["e1000", "virtio_net"]


def test_create_returns_running_and_destroy_cleans(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    domain.append("lifecycle")
    record = json_of(pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                               "name=lifecycle", "--accel", "tcg", "--json"))
    assert record["state"] == "running" and record["accel"] == "tcg"
    assert pvhvm.leftovers("lifecycle")
    pvhvm.run("destroy", "lifecycle")
    assert not pvhvm.leftovers("lifecycle")
    again = pvhvm.run("destroy", "lifecycle", check=False)
    assert again.returncode == 1 and "no domain named 'lifecycle'" in again.stderr


def _write_cfg(directory: Path, body: str) -> Path:
    cfg = directory / "broken.cfg"
    cfg.write_text(body)
    return cfg


def test_failed_create_missing_kernel(pvhvm: Pvhvm, tmp_path: Path) -> None:
    cfg = _write_cfg(tmp_path, 'name="nokernel"\nkernel="/nonexistent/vmlinuz"\n')
    proc = pvhvm.run("create", str(cfg), "--accel", "tcg", check=False)
    assert proc.returncode == 1
    assert "kernel '/nonexistent/vmlinuz' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not pvhvm.leftovers("nokernel")


def test_failed_create_port_in_use(pvhvm: Pvhvm, imagedir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                         "name=busyport", f"serial='tcp:127.0.0.1:{port}'", "--accel", "tcg",
                         check=False)
    assert proc.returncode == 1, proc.stderr
    assert "did not start" in proc.stderr and "Address already in use" in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pvhvm: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert not pvhvm.leftovers("busyport")


def test_failed_create_qemu_refuses_locked_image(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path
) -> None:
    boot(pvhvm, domain, imagedir, "pv-only.cfg", "holder")
    proc = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                     "name=second", "--accel", "tcg", check=False)
    assert proc.returncode == 1
    # pvhvm refuses before QEMU's own image lock would: the image is holder's, and a writable
    # image is shared only when every user says w!
    assert "in use by domain 'holder'" in proc.stderr and "w!" in proc.stderr
    assert not pvhvm.leftovers("second")


def test_two_creates_of_one_name(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    boot(pvhvm, domain, imagedir, "pv-only.cfg", "twice")
    proc = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                     "name=twice", "--accel", "tcg", check=False)
    assert proc.returncode == 1 and "domain 'twice' already exists" in proc.stderr


def test_many_pv_disks(pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path) -> None:
    """More PV disks than the root PCI bus has slots: they sit behind PCI bridges."""
    extra = []
    for i in range(1, 40):
        image = tmp_path / f"d{i}.img"
        image.write_bytes(b"")
        with open(image, "r+b") as handle:
            handle.truncate(1 << 20)
        extra.append(f"{image},raw,xvd{chr(97 + i // 26) if i >= 26 else ''}{chr(97 + i % 26)},rw")
    cfg = tmp_path / "many.cfg"
    cfg.write_text(
        f'name="many"\nkernel="{imagedir}/vmlinuz"\nramdisk="{imagedir}/initramfs.cpio.gz"\n'
        f'extra="console=ttyS0 root=/dev/vda"\n'
        f'disk=["{imagedir}/rootfs.ext4,raw,xvda,rw"] + {extra!r}\n'
    )
    domain.append("many")
    pvhvm.run("create", str(cfg), "--accel", "tcg")
    report = pvhvm.wait_report("many")
    assert len(report.blocks) == 40
    assert {b.driver for b in report.blocks} == {"virtio_blk"}
    assert not report.has_class(IDE)
