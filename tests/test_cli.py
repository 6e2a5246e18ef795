"""The CLI: create --dry-run, JSON, errors as one message and exit status 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import jsonout
from tests.cli_run import run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def imagedir(tmp_path: Path) -> Path:
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img"):
        (tmp_path / name).write_bytes(b"\0" * 1024)
    return tmp_path




def dry_json(capsys: pytest.CaptureFixture[str], cfg: str, imagedir: Path) -> dict[str, object]:
    code, out, err = run(capsys, "create", str(EXAMPLES / cfg), f"imagedir={imagedir}",
                         "--dry-run", "--json")
    assert code == 0, err
    document = jsonout.result(out)
    assert isinstance(document, dict)
    return document


def test_pv_only_example(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    plan = dry_json(capsys, "pv-only.cfg", imagedir)
    assert plan["name"] == "pv-only" and plan["platform"] == "qemu"
    assert plan["ide_controller"] is False
    assert plan["disks"] == [
        {"vdev": "xvda", "devid": 51712, "type": "xenbus", "target": f"{imagedir}/rootfs.ext4",
         "format": "raw", "mode": "w", "cdrom": False, "ide_place": None, "scsi_unit": None,
         "script": None, "backend": None, "bootindex": None},
    ]
    vifs = plan["vifs"]
    assert isinstance(vifs, list) and vifs[0]["type"] == "xenbus" and vifs[0]["model"] is None
    assert vifs[0]["bridge"] == "xenbr0" and vifs[0]["mac"].startswith("00:16:3e:")


def test_firmware_example(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    plan = dry_json(capsys, "pv-only-firmware.cfg", imagedir)
    assert plan["ide_controller"] is False
    assert plan["boot"] == {"firmware": "c"}
    assert plan["disks"][0]["type"] == "xenbus" and plan["disks"][0]["bootindex"] == 0  # type: ignore[index]


def test_default_example(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    plan = dry_json(capsys, "default.cfg", imagedir)
    assert plan["ide_controller"] is True
    disk = plan["disks"][0]  # type: ignore[index]
    assert (disk["vdev"], disk["type"], disk["ide_place"]) == ("hda", "ioemu", [0, 0])
    vif = plan["vifs"][0]  # type: ignore[index]
    assert (vif["type"], vif["model"]) == ("ioemu", "rtl8139")


def test_mixed_example(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    plan = dry_json(capsys, "mixed.cfg", imagedir)
    assert plan["ide_controller"] is True
    assert [(d["vdev"], d["type"]) for d in plan["disks"]] == [  # type: ignore[attr-defined]
        ("hda", "ioemu"), ("xvdb", "xenbus"),
    ]
    assert [(v["type"], v["model"]) for v in plan["vifs"]] == [  # type: ignore[attr-defined]
        ("ioemu", "e1000"), ("xenbus", None),
    ]


def test_table_output(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    code, out, _ = run(capsys, "create", str(EXAMPLES / "mixed.cfg"), f"imagedir={imagedir}",
                       "--dry-run")
    assert code == 0
    assert "IDE disk primary master" in out and "PV block" in out and "e1000" in out
    assert "root bus (machine pc hot-plugs there)" in out


def test_dry_run_says_the_hotplug_slots(capsys: pytest.CaptureFixture[str],
                                        imagedir: Path) -> None:
    code, out, _ = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                       "hotplug_slots=4", "--dry-run")
    assert code == 0 and "4 (empty pcie-root-ports, hotplug_slots)" in out
    plan = dry_json(capsys, "pv-only.cfg", imagedir)
    assert plan["hotplug_slots"] == 2
    ports = [a for a in plan["qemu_argv"] if str(a).startswith("pcie-root-port,")]
    assert len(ports) == 2


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name="g"; builder="hvm"\ndisk=["/x,raw,xvda,rw,type=floppy"]', "g.cfg:2:7: disk 'xvda': type='floppy'"),
        ('name="g"; builder="hvm"\ndisk=["/x,ioemu:hda,w,type=xenbus"]', "disagrees with the ioemu: prefix"),
        ('name="g"; builder="hvm"\ndisk=[",hdc:cdrom,r,type=xenbus"]', "a cdrom is always emulated"),
        ('name="g"; builder="hvm"\ndisk=["DIR/a,raw,xvde,rw,type=ioemu"]', "four IDE places"),
        ('name="g"; builder="hvm"\ndisk=["DIR/a,raw,xvda,rw","DIR/b,raw,xvda,rw"]', "already used by disk"),
        ('name="g"; builder="hvm"\ndisk=["DIR/a,raw,xvda,rw","DIR/a,raw,xvdb,rw"]', "w! on both"),
        ('name="g"; builder="hvm"\ndisk=["DIR/none,raw,xvda,rw"]', "does not exist"),
        ('name="g"; builder="hvm"\ndisk=["DIR/a,raw,xvda,rwx"]', "access mode 'rwx'"),
        ('name="g"; builder="hvm"\nvif=["color=red"]', "unknown key 'color'"),
        ('name="g"; builder="hvm"\nvif=["mac=00:16:3e:zz:00:00"]', "not six hex octets"),
        ('name="g"; builder="hvm"\ndisk=["DIR/a,raw,xvda,rw,bogus=1"]', "unknown parameter 'bogus'"),
        ("import os", "an import is not allowed"),
        ("name = open('/etc/passwd')", "g.cfg:1:8: a function call is not allowed"),
    ],
)
def test_bad_input_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    text: str, words: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").write_bytes(b"\0")
    (tmp_path / "b").write_bytes(b"\0")
    cfg = tmp_path / "g.cfg"
    cfg.write_text(text.replace("DIR", str(tmp_path)))
    code, out, err = run(capsys, "create", "g.cfg", "-n")
    assert code == 1
    assert out == ""
    assert words in err
    assert err.startswith("pvhvm: error: g.cfg:")
    assert err.startswith("pvhvm: error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_bad_cli_arguments(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    """Usage errors (click's: missing argument, bad choice, unknown command) exit 2, as click
    and xl's getopt give; bad input in what was given exits 1."""
    code, _, err = run(capsys, "create")
    assert code == 2 and "Missing argument" in err
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), "novalue", "-n")
    assert code == 1 and "not NAME=VALUE" in err
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), "-n")
    assert code == 1 and "name 'imagedir' is not defined" in err
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), "--platform", "vmware")
    assert code == 2 and "vmware" in err
    code, _, err = run(capsys, "nosuchcommand")
    assert code == 2
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), "--no-such-option")
    assert code == 2 and "No such option" in err


def test_subprocess_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("x = __import__('os').system('touch pwned')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pvhvm", "create", str(cfg), "--dry-run"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"pvhvm: error: {cfg}:1:5: a function call is not allowed in a config file "
        "(only literals, lists, tuples, dicts, names, + and % are)"
    )
    assert not (tmp_path / "pwned").exists()


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "0.1.0" in out
    for argv in (["--help"], ["create", "--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "Usage:" in out


@pytest.mark.parametrize(
    "argv",
    [
        ("export-xl", "{cfg}", "imagedir={imagedir}", "-o", "{tmp}/missing/x.cfg"),
        ("bench", "io", "--save", "{tmp}/missing/r.json"),
        ("bench", "io", "--plot", "{tmp}/missing/r.png"),
        ("bench", "net", "--save", "{tmp}/missing/r.json"),
        ("bench", "toolstack", "--save", "{tmp}/missing/r.json"),
    ],
)
def test_output_file_checked_before_any_work(
    capsys: pytest.CaptureFixture[str], imagedir: Path, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """A bad -o/--save/--plot is refused at once (a bench would otherwise run for minutes
    first) with one message naming the file, and no traceback."""
    filled = [a.format(cfg=EXAMPLES / "pv-only.cfg", imagedir=imagedir, tmp=tmp_path)
              for a in argv]
    code, out, err = run(capsys, *filled)
    assert code == 1 and out == ""
    assert f"cannot write {tmp_path}/missing/" in err
    assert f"directory {tmp_path}/missing does not exist" in err
    assert "Traceback" not in err


def test_export_xl_writes_the_file(
    capsys: pytest.CaptureFixture[str], imagedir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "g.xl.cfg"
    code, _, err = run(capsys, "export-xl", str(EXAMPLES / "pv-only.cfg"),
                       f"imagedir={imagedir}", "-o", str(target))
    assert code == 0, err
    assert 'type = "hvm"' in target.read_text()


def test_command_line_disk_errors_name_the_command_line(
    capsys: pytest.CaptureFixture[str], imagedir: Path
) -> None:
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                       'disk=["/x,hdz,w"]', "--dry-run")
    assert code == 1
    assert err.startswith("pvhvm: error: <command line>: virtual device 'hdz': hd disks go")


def test_output_file_that_exists_read_only(
    capsys: pytest.CaptureFixture[str], imagedir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An existing file we may not write is refused up front (root may write anything, so the
    permission answer is what a non-root user would get)."""
    import os as os_module

    target = tmp_path / "taken.cfg"
    target.write_text("old")
    real_access = os_module.access
    monkeypatch.setattr(os_module, "access",
                        lambda p, mode: (False if Path(p) == target and mode & os_module.W_OK
                                         else real_access(p, mode)))
    code, _, err = run(capsys, "export-xl", str(EXAMPLES / "pv-only.cfg"),
                       f"imagedir={imagedir}", "-o", str(target))
    assert code == 1 and f"cannot write {target}: the file is not writable" in err
    assert target.read_text() == "old"


def test_everyday_commands_do_not_load_the_benchmarks_or_the_daemon() -> None:
    """bench, image, report and xenstored load when named; create and list stay light (the
    import time is measured by `pvhvm bench toolstack`, not here)."""
    probe = (
        "import sys, pvhvm.cli.main as m\n"
        "heavy = [n for n in sys.modules if n.startswith(('pvhvm.bench', 'pvhvm.xenstore.daemon',"
        " 'pvhvm.xenstore.server', 'pvhvm.guest.kit', 'pvhvm.cli.bench'))]\n"
        "print(heavy)\n"
        "m.cli.get_command(None, 'bench')\n"
        "print('pvhvm.bench.io' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.splitlines() == ["[]", "True"]


def test_ctrl_c_while_the_cli_imports_is_quiet() -> None:
    """A Ctrl-C that lands while the CLI is being imported: exit status 130, no traceback.
    (The interrupt is raised by an import hook, so the test does not depend on timing.)"""
    probe = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pvhvm.cli.main':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from pvhvm.cli.entry import run\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 130
    assert done.stderr == ""


def test_xl_numbered_vdevs(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    """vdev=d1p0 and a bare device number, as xl accepts them: d0p0 is xvda, which xl
    emulates as the first of an HVM guest's disks (issue 20), a bare number is PV; a number
    that is another disk's device number is that disk's place."""
    disk = f"{imagedir}/data.img"
    code, out, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                         f'disk=["{imagedir}/rootfs.ext4,raw,d0p0,rw", "{disk},raw,51728,r"]',
                         "--dry-run", "--json")
    assert code == 0, err
    disks = [(d["vdev"], d["devid"], d["type"]) for d in jsonout.result(out)["disks"]]
    assert disks == [("d0p0", 51712, "ioemu"), ("51728", 51728, "xenbus")]
    code, _, err = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                       f'disk=["{imagedir}/rootfs.ext4,raw,xvda,rw", "{disk},raw,51712,r"]',
                       "--dry-run")
    assert code == 1 and "virtual device already used by disk 'xvda'" in err


def test_a_hostile_config_path_is_printed_escaped(tmp_path: Path) -> None:
    cfg = tmp_path / "bad\nname\x1b[31m.cfg"
    cfg.write_text('name="x\n')
    done = subprocess.run([sys.executable, "-m", "pvhvm", "create", str(cfg), "--dry-run"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr
    assert "bad\\nname\\x1b[31m.cfg:1:6: " in done.stderr


def test_dialect_option_and_notes_for_scripts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "g"\nbuilder = "hvm"\nvif = [ "bridge=xenbr0" ]\n')
    code, out, _ = run(capsys, "create", str(cfg), "--dry-run", "--json", "--dialect", "xl")
    document = jsonout.result(out)
    assert code == 0 and document["dialect"] == "xl"
    assert document["vifs"][0]["type"] == "ioemu" and document["notes"]
    code, _, err = run(capsys, "create", str(cfg), "--dry-run", "--dialect", "xq")
    assert code == 2 and "'xq' is not one of 'xm', 'xl'" in err


def test_export_xl_notes_are_one_line_each_in_a_pipe(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name = "g"\nbuilder = "hvm"\nkernel = "{tmp_path}/k"\n'
                   f'disk = [ "{tmp_path}/a.img,raw,hda,w" ]\nvif = [ "" ]\n')
    (tmp_path / "k").write_bytes(b"")
    (tmp_path / "a.img").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "pvhvm", "export-xl", str(cfg)],
                          capture_output=True, text=True, check=False, cwd="/")
    notes = [line for line in done.stderr.splitlines() if line]
    assert notes and all(line.startswith("warning: ") for line in notes), done.stderr
