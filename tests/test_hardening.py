"""Bad input that once did harm or crashed (found in review), each pinned by a test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pvhvm.cli.main import main
from pvhvm.config.disk import parse_disk
from pvhvm.config.domain import config_from_text
from pvhvm.config.lang import parse_config
from pvhvm.errors import ConfigError, DomainError, SpecError
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.qemu.argv import ignored_settings
from pvhvm.runtime.state import DomainRecord, StateStore
from pvhvm.xen.domain import xen_store
from pvhvm.xen.xlcfg import export_xl

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    _, err = capsys.readouterr()
    return int(info.value.code or 0), err


@pytest.mark.parametrize("name", ["..", "../../precious", ".hidden", "a/b", "web,1", "-x",
                                  "a b", "x" * 65])
def test_bad_domain_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a domain name"):
        config_from_text(f"name = {name!r}", "g.cfg")
    with pytest.raises(DomainError, match="is not a domain name"):
        StateStore(tmp_path).paths(name)


def test_destroy_of_a_path_deletes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    precious = tmp_path / "home" / "precious"
    precious.mkdir(parents=True)
    (precious / "file").write_text("data")
    state = tmp_path / "home" / "state"
    (state / "domains").mkdir(parents=True)
    monkeypatch.setenv("PVHVM_STATE_DIR", str(state))
    for verb in ("destroy", "pause", "block-list"):
        code, err = run(capsys, verb, "../../precious")
        assert code == 1 and "is not a domain name" in err
    code, err = run(capsys, "list", "..")
    assert code == 1
    assert (precious / "file").read_text() == "data" and (state / "domains").is_dir()


def test_state_dir_that_is_a_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = tmp_path / "file"
    bogus.write_text("")
    monkeypatch.setenv("PVHVM_STATE_DIR", str(bogus))
    code, err = run(capsys, "list")
    assert code == 1 and "Traceback" not in err and err.startswith("pvhvm: error:")


def _record(name: str, domid: int, platform: str) -> DomainRecord:
    return DomainRecord(name=name, domid=domid, uuid="u", platform=platform, memory_mib=64,
                        vcpus=1, plan={}, argv=[], on_poweroff="destroy", on_reboot="restart",
                        on_crash="destroy", state="running")


def test_names_and_domids_are_unique_across_platforms(tmp_path: Path) -> None:
    qemu = StateStore(tmp_path)
    xen = xen_store(qemu)
    xen.claim("g")
    xen.write(_record("g", 1, "xen"))
    with pytest.raises(DomainError, match="already exists"):
        qemu.claim("g")
    with pytest.raises(DomainError, match="already exists"):
        qemu.introduce("g", lambda domid, paths: _record("g", domid, "qemu"))
    with qemu.locked():
        assert qemu.next_domid() == 2
    qemu.claim("h")
    qemu.write(_record("h", 2, "qemu"))
    with pytest.raises(DomainError, match="already exists"):
        xen.claim("h")
    with xen.locked():
        assert xen.next_domid() == 3


def test_self_nesting_value_cannot_hang_formatting() -> None:
    text = "a = [1]\n" + "a = [a, a]\n" * 40 + 'x = "%s" % (a,)\n'
    started = time.monotonic()
    # Refused where the value grows too large (line 20), before anything formats it.
    with pytest.raises(ConfigError, match=r"^h.cfg:20:5: value is too large"):
        parse_config(text, "h.cfg")
    assert time.monotonic() - started < 10
    with pytest.raises(ConfigError, match="too large"):
        config_from_text('name="g"; builder="hvm"\na=[1]\n' + "a=[a,a]\n" * 40 + "disk=[a]\n", "h.cfg")


@pytest.mark.parametrize(
    ("text", "words"),
    [('x = {([1],): 2}', "dict key"), ('memory = "²"', "whole number"),
     ("vcpus = '³'", "whole number")],
)
def test_values_that_crashed_the_parser(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_from_text('name = "g"; builder = "hvm"\n' + text, "g.cfg")


def test_formatting_error_is_located_once() -> None:
    text = "a = 'xx'\n" + "a = a + a\n" * 18 + "b = '%s%s%s' % (a, a, a)\n"
    with pytest.raises(ConfigError, match="too large") as info:
        parse_config(text, "g.cfg")
    assert str(info.value).count("g.cfg") == 1


def test_vdev_must_be_a_name() -> None:
    with pytest.raises(SpecError, match="not a device name"):
        parse_disk("vdev=ioemu: discard")


def plan_of(text: str, tmp_path: Path, platform: Platform = Platform.QEMU) -> object:
    return make_plan(config_from_text('name="g"; builder="hvm"\n' + text, "g.cfg", {"d": str(tmp_path)}),
                     platform)


def test_read_only_ide_disk_is_refused_at_plan_time(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="read-only IDE hard disk"):
        plan_of('disk=["file:" + d + "/a.img,hda,r"]', tmp_path)
    plan_of('disk=["file:" + d + "/a.img,hdc:cdrom,r"]', tmp_path)


def test_directory_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        plan_of('disk=["file:" + d + ",xvda,w"]', tmp_path)


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.img").write_bytes(b"\0")
    (tmp_path / "k").write_bytes(b"\0")
    monkeypatch.chdir(tmp_path)
    plan = make_plan(config_from_text(
        'name="g"; builder="hvm"\nkernel="k"\ndisk=["a.img,raw,xvda,rw"]\nserial="unix:con.sock"', "g.cfg"))
    assert plan.kernel == str(tmp_path / "k")
    assert plan.disks[0].target == str(tmp_path / "a.img")
    assert plan.serial == f"unix:{tmp_path / 'con.sock'}"


def test_ignored_settings_are_said(tmp_path: Path) -> None:
    plan = make_plan(config_from_text('name="g"; builder="hvm"\nsdl=1\napic=0\ndevice_model="/x"', "g.cfg"))
    said = " ".join(ignored_settings(plan))
    assert "sdl ignored" in said and "apic=0" in said and "device_model" in said
    assert not ignored_settings(make_plan(config_from_text('name="g"; builder="hvm"', "g.cfg")))


def test_export_keeps_platform_pci_and_notes_shared_disks() -> None:
    plan = make_plan(config_from_text(
        'name="g"; builder="hvm"\nxen_platform_pci=0\ndisk=["/a.img,raw,xvda,w!,type=xenbus", "/a.img,raw,xvdb,w!,type=xenbus"]',
        "g.cfg"), Platform.XEN, check_files=False)
    exported = export_xl(plan)
    assert "xen_platform_pci = 0" in exported.text
    assert any("xen_platform_pci=0 as the config says" in n for n in exported.notes)
    assert any("w! (shared writable)" in n for n in exported.notes)


@pytest.mark.parametrize("trouble", ["read-only", "full"])
def test_state_directory_refused_by_the_host_is_one_line(tmp_path: Path, trouble: str) -> None:
    """EROFS or ENOSPC at create: one line naming the reason, exit 1, no QEMU left."""
    mnt = Path(tempfile.mkdtemp(prefix="pvro-"))  # short: socket paths stay under 108 bytes
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (mnt / "state").mkdir()
        if trouble == "full":
            (mnt / "fill").write_bytes(b"\0" * (60 << 10))
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        images = tmp_path / "images"
        images.mkdir()
        for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4"):
            (images / name).write_bytes(b"\0" * 4096)
        done = subprocess.run(
            [sys.executable, "-m", "pvhvm", "create", str(ROOT / "examples" / "pv-only.cfg"),
             f"imagedir={images}", "--accel", "tcg", "--no-check"],
            capture_output=True, text=True, check=False, timeout=120,
            env={**os.environ, "PVHVM_STATE_DIR": str(mnt / "state")},
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("pvhvm: error")]
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert len(errors) == 1
        assert ("read-only file system" if trouble == "read-only" else "no space left") in (
            errors[0].lower())
        assert not list((mnt / "state").glob("domains/*"))
        survivors = subprocess.run(["pgrep", "-f", f"path={mnt}"], capture_output=True,
                                   text=True, check=False)
        assert survivors.stdout.strip() == ""
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()
