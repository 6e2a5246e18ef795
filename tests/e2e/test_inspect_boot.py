"""guest check's verdicts against real boots of the installed Debian guest (TCG).

The kernel, initrd and command line come out of the guest's own grub.cfg, as pygrub takes
them (find_boot_entry), and boot directly: that skips the firmware, and ``rootdelay=`` keeps
the failing boot short. The "full" variant carries virtio in its initramfs, so:

* root disk PV, ``root=/dev/sda1`` as an IDE install names it: check says fatal, the disk
  is /dev/vda;
  the real boot stops in the initramfs with ``ALERT!  /dev/sda1 does not exist``;
* the same plan with ``root=UUID=`` of the root filesystem: check passes (the prepared guest
  of tests/e2e/test_installed_guest.py boots such a plan to multi-user on virtio_blk).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pvhvm.guest.installed import build_installed, copy_disk
from pvhvm.inspect.image import find_boot_entry, inspect_image
from tests.e2e.conftest import BOOT_TIMEOUT, Pvhvm

pytestmark = pytest.mark.e2e

IDE = 0x0101
ALERT = "ALERT!  /dev/sda1 does not exist"


def _wait_console(pvhvm: Pvhvm, name: str, needle: str) -> str:
    log = pvhvm.console_log(name)
    deadline = time.monotonic() + BOOT_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} not on {name}'s console:\n{text[-3000:]}")


def test_check_predicts_pv_boot_of_installed_guest(
    pvhvm: Pvhvm, domain: list[str], tmp_path: Path,
) -> None:
    disk = copy_disk(build_installed(variant="full"), tmp_path / "full.img")
    boot = find_boot_entry(disk, tmp_path)
    assert boot.initrd is not None and boot.entry.argument("root") is not None
    report = inspect_image(disk)
    assert report.root is not None and report.root.signature is not None
    uuid = report.root.signature.uuid

    def with_root(root: str) -> str:
        return " ".join(f"root={root}" if arg.startswith("root=") else arg
                        for arg in boot.cmdline.split())

    def config(name: str, cmdline: str) -> Path:
        cfg = tmp_path / f"{name}.cfg"
        cfg.write_text(
            f'name = "{name}"\nmemory = 512\nkernel = "{boot.kernel}"\n'
            f'ramdisk = "{boot.initrd}"\nextra = "{cmdline} rootdelay=3"\n'
            f'disk = [ "{disk},raw,hda,w,type=xenbus" ]\nvif = [ "" ]\n'
        )
        return cfg

    failing = config("inst-sda1", with_root("/dev/sda1"))  # as an IDE install names it
    checked = pvhvm.run("guest", "check", str(failing), check=False)
    assert checked.returncode == 1
    fatal = [line for line in checked.stderr.splitlines() if line.startswith("fatal:")]
    assert len(fatal) == 1 and fatal[0].startswith(
        "fatal: root=/dev/sda1: /dev/sda1 will not exist: on this plan the root disk hda is "
        "/dev/vda, so its partition 1 is /dev/vda1"), checked.stderr
    refused = pvhvm.run("create", str(failing), "--accel", "tcg", check=False)
    assert refused.returncode == 1 and "will not boot as planned" in refused.stderr
    domain.append("inst-sda1")
    pvhvm.run("create", str(failing), "--accel", "tcg", "--no-check")
    text = _wait_console(pvhvm, "inst-sda1", ALERT)
    assert "virtio_blk" in text and "vda: vda1" in text  # the driver was there; the name not
    pvhvm.run("destroy", "inst-sda1")

    fixed = config("inst-uuid", with_root(f"UUID={uuid}"))
    checked = pvhvm.run("guest", "check", str(fixed), "--json", check=False)
    assert checked.returncode == 0, checked.stdout
    # That a root=UUID= plan then boots to multi-user on virtio_blk is the end of
    # tests/e2e/test_installed_guest.py's walk (a prepared guest); not booted twice here.
