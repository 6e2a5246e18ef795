"""w! means every user of an image said w! (xend's forced mode), with two real QEMU guests.

QEMU's image lock is off for a w! disk, so without pvhvm's own check a second domain asking
w! would start beside one that opened the image rw and never agreed to share it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Pvhvm

pytestmark = pytest.mark.e2e


def _config(directory: Path, imagedir: Path, name: str, mode: str) -> Path:
    cfg = directory / f"{name}.cfg"
    cfg.write_text(
        f'builder = "hvm"\nname = "{name}"\nmemory = 128\n'
        f'kernel = "{imagedir}/vmlinuz"\nramdisk = "{imagedir}/initramfs.cpio.gz"\n'
        'extra = "console=ttyS0 root=/dev/vda"\n'
        f'disk = [ "{imagedir}/rootfs-{name}.ext4,raw,xvda,w,type=xenbus",\n'
        f'         "{imagedir}/data.img,raw,xvdb,{mode},type=xenbus" ]\n'
    )
    (imagedir / f"rootfs-{name}.ext4").write_bytes((imagedir / "rootfs.ext4").read_bytes())
    return cfg


@pytest.mark.parametrize(("first", "second"), [("w", "w!"), ("w!", "w"), ("w!", "r")])
def test_a_writable_image_is_shared_only_when_every_user_says_w_bang(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path, first: str, second: str
) -> None:
    domain += ["share-a", "share-b"]
    pvhvm.run("create", str(_config(tmp_path, imagedir, "share-a", first)), "--paused",
              "--accel", "tcg", "--no-check")
    refused = pvhvm.run("create", str(_config(tmp_path, imagedir, "share-b", second)),
                        "--paused", "--accel", "tcg", "--no-check", check=False)
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("pvhvm: error")]
    assert len(errors) == 1 and "in use by domain 'share-a'" in errors[0], refused.stderr
    assert "every domain using it says w!" in errors[0]
    assert not pvhvm.leftovers("share-b")


def test_two_domains_that_both_say_w_bang_share_the_image(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    domain += ["bang-a", "bang-b"]
    for name in ("bang-a", "bang-b"):
        pvhvm.run("create", str(_config(tmp_path, imagedir, name, "w!")), "--paused",
                  "--accel", "tcg", "--no-check")
    listed = pvhvm.run("list").stdout
    assert "bang-a" in listed and "bang-b" in listed
