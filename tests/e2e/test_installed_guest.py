"""An installed Debian guest (its own GRUB, initramfs-tools, systemd) moved to PV disks.

Real QEMU (TCG), the real pvhvm CLI, the guest's own bootloader and initramfs. The sequence
of issue 10's "Done when": IDE boot → check of the PV plan names what is missing → a real PV
boot fails the way check said → ``guest prepare`` (the guest's own update-initramfs run in the
libguestfs appliance, issue 17) → PV boot with no IDE controller → IDE boot again. One guest at a time; each boot of Debian under TCG takes about a minute here.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pvhvm.guest.installed import SYSTEMD_MARKER, InstalledGuest, build_installed, copy_disk
from pvhvm.guest.report import IDE_CLASS, SATA_CLASS, DeviceReport
from tests.e2e.conftest import EXAMPLES, Pvhvm, json_of

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("installed-guest")]

BOOT_TIMEOUT = float(os.environ.get("PVHVM_INSTALLED_BOOT_TIMEOUT", "480"))
MULTI_USER = f"{SYSTEMD_MARKER}.target active"


def _build(variant: str) -> InstalledGuest:
    if os.geteuid() != 0:
        pytest.skip("building the installed guest needs root (debootstrap, chroot)")
    return build_installed(variant=variant)


@pytest.fixture(scope="session")
def installed_ide() -> InstalledGuest:
    return _build("ide")


@pytest.fixture(scope="session")
def installed_full() -> InstalledGuest:
    return _build("full")


def wait_console(pvhvm: Pvhvm, name: str, pattern: str, timeout: float = BOOT_TIMEOUT) -> str:
    """The console log of ``name`` once ``pattern`` (a regex) appears in it."""
    log = pvhvm.console_log(name)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"{name}: no {pattern!r} on the console after {timeout:.0f}s:\n"
                         f"{text[-3000:]}")


def boot_to_report(pvhvm: Pvhvm, domains: list[str], cfg: str, imagedir: Path, name: str,
                   while_running: Callable[[], None] | None = None,
                   ) -> tuple[DeviceReport, str, float]:
    domains.append(name)
    started = time.monotonic()
    pvhvm.run("create", str(EXAMPLES / cfg), f"imagedir={imagedir}", f"name={name}",
              "--accel", "tcg")
    log = wait_console(pvhvm, name, r"PVHVM-REPORT-END")
    seconds = time.monotonic() - started
    report = pvhvm.wait_report(name, timeout=10)
    if while_running is not None:
        while_running()
    pvhvm.run("destroy", name)
    return report, log, seconds


def disk_drivers(report: DeviceReport) -> dict[str, str | None]:
    return {b.name: b.driver for b in report.blocks if not b.name.startswith("sr")}


def test_installed_ide_guest_moves_to_pv_disks(
    pvhvm: Pvhvm, domains: list[str], installed_ide: InstalledGuest, tmp_path: Path,
) -> None:
    imagedir = tmp_path / "images"
    imagedir.mkdir()
    disk = copy_disk(installed_ide, imagedir / "disk.img")
    timings: dict[str, float] = {}

    plan = ("installed-pv.cfg", f"imagedir={imagedir}")

    def prepare_is_refused() -> None:
        refused = pvhvm.run("guest", "prepare", str(EXAMPLES / plan[0]), plan[1], check=False)
        assert refused.returncode == 1
        assert "in use by running domain inst-ide" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr

    # 1. The default config (untyped hda: emulated IDE) boots from the guest's own GRUB;
    #    prepare refuses to touch the image while it runs.
    report, log, timings["ide"] = boot_to_report(pvhvm, domains, "installed.cfg", imagedir,
                                                 "inst-ide", prepare_is_refused)
    assert "GNU GRUB" in log and MULTI_USER in log
    assert report.has_class(IDE_CLASS)
    assert report.root == "/dev/sda1" and report.rootfstype == "ext4"
    assert disk_drivers(report) == {"sda": "ata_piix"}

    # 2. check on the PV plan names the missing driver and the device name.
    checked = pvhvm.run("guest", "check", str(EXAMPLES / plan[0]), plan[1], check=False)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert re.search(r"lacks [^:]*virtio_blk", checked.stderr), checked.stderr
    assert "/dev/sda1 will not exist" in checked.stderr
    refused = pvhvm.run("create", str(EXAMPLES / plan[0]), plan[1], "name=inst-refused",
                        "--accel", "tcg", check=False)
    assert refused.returncode == 1 and "will not boot" in refused.stderr
    assert not pvhvm.leftovers("inst-refused")

    # 3. A real boot of that plan fails as check said: the initramfs cannot find /dev/sda1.
    domains.append("inst-pv-fail")
    started = time.monotonic()
    pvhvm.run("create", str(EXAMPLES / plan[0]), plan[1], "name=inst-pv-fail", "--accel",
              "tcg", "--no-check")
    log = wait_console(pvhvm, "inst-pv-fail", r"ALERT!\s+/dev/sda1 does not exist")
    timings["pv-fail"] = time.monotonic() - started
    assert "Gave up waiting for root file system device" in log
    assert "PVHVM-REPORT-BEGIN" not in log
    pvhvm.run("destroy", "inst-pv-fail")

    # 4. prepare: dry run first (changes nothing), then for real.
    before = disk.stat().st_mtime_ns
    listed = json_of(pvhvm.run("guest", "prepare", str(EXAMPLES / plan[0]), plan[1],
                               "--dry-run", "--json"))
    assert disk.stat().st_mtime_ns == before
    changes = listed["changes"]
    assert isinstance(changes, list)
    kinds = {change["kind"] for change in changes}
    assert kinds == {"initramfs", "fstab", "bootloader"}
    started = time.monotonic()
    done = json_of(pvhvm.run("guest", "prepare", str(EXAMPLES / plan[0]), plan[1], "--json",
                             timeout=600))
    timings["prepare"] = time.monotonic() - started
    written = done["written"]
    assert isinstance(written, list)
    for path in ("/etc/fstab", "/etc/initramfs-tools/modules", "/boot/grub/grub.cfg",
                 "/etc/default/grub"):
        assert path in written and path + ".pre-pvhvm" in written
    assert any(p.startswith("/boot/initrd.img-") and p.endswith(".pre-pvhvm") for p in written)
    again = pvhvm.run("guest", "check", str(EXAMPLES / plan[0]), plan[1], check=False)
    assert again.returncode == 0, again.stderr

    # 5. The PV plan now boots from the guest's GRUB with root on virtio_blk and no IDE.
    report, log, timings["pv"] = boot_to_report(pvhvm, domains, plan[0], imagedir, "inst-pv")
    assert "GNU GRUB" in log and MULTI_USER in log
    assert not report.has_class(IDE_CLASS) and not report.has_class(SATA_CLASS)
    assert report.root == "/dev/vda1"
    assert disk_drivers(report) == {"vda": "virtio_blk"}
    assert [n.driver for n in report.nets] == ["virtio_net"]

    # 6. ...and it still boots on IDE (root=UUID= finds /dev/sda1 there).
    report, log, timings["ide-again"] = boot_to_report(pvhvm, domains, "installed.cfg",
                                                       imagedir, "inst-ide-again")
    assert MULTI_USER in log and report.has_class(IDE_CLASS)
    assert report.root == "/dev/sda1" and disk_drivers(report) == {"sda": "ata_piix"}
    print("installed guest timings (s):", {k: round(v, 1) for k, v in timings.items()})


def test_full_initramfs_variant_passes_check_at_once(
    pvhvm: Pvhvm, installed_full: InstalledGuest,
) -> None:
    """MODULES=most carries virtio and the root is named by UUID=, as Debian's installer
    writes it: the PV plan needs no prepare."""
    checked = pvhvm.run("guest", "check", str(EXAMPLES / "installed-pv.cfg"),
                        f"imagedir={installed_full.directory}", check=False)
    assert checked.returncode == 0, checked.stderr
    assert "lacks virtio" not in checked.stderr
