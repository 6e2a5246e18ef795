"""Strings read from a guest reach the terminal escaped: an os-release name, a boot entry's
title or an fstab device holding a terminal hyperlink (OSC 8), blink (SGR 5) or rich markup
(``[/]``, ``[bold]``) is shown as text, in inspect, boot-entry and check, with and without
--json."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import jsonout
from tests.inspect.conftest import IDE_MODULES, PV_MODULES, ROOT_UUID, installed_image
from tests.inspect.test_check_verdicts import cli

HOSTILE = ("Evil \x1b]8;;http://attacker.example/\x07click\x1b]8;;\x07 "
           "\x1b[5mblink [/] [bold]bold")
RAW = ("\x1b", "\x07")


@pytest.fixture
def hostile_image(tmp_path: Path) -> Path:
    return installed_image(
        tmp_path / "hostile", modules=(*IDE_MODULES, *PV_MODULES), pretty_name=HOSTILE,
        title=HOSTILE, root=f"UUID={ROOT_UUID}", fstab_boot="LABEL=boot",
        extra_fstab="/dev/sdz1 /srv\x1b[5m[/] ext4 defaults 0 2\n").path


def test_inspect_text_and_json(capsys: pytest.CaptureFixture[str], hostile_image: Path) -> None:
    code, out, err = cli(capsys, "guest", "inspect", str(hostile_image))
    assert code == 0, err
    assert not any(c in out + err for c in RAW), out
    assert "\\x1b]8;;http://attacker.example/\\x07click" in out
    assert "\\x1b[5mblink [/] [bold]bold" in out.replace("\n", "")
    code, out, err = cli(capsys, "guest", "inspect", str(hostile_image), "--json")
    assert code == 0, err
    assert not any(c in out for c in RAW)
    document = jsonout.result(out)
    assert document["os"]["PRETTY_NAME"] == HOSTILE  # JSON escapes; the value is whole
    assert document["bootloader"]["entries"][0]["title"] == HOSTILE


def test_boot_entry_text(capsys: pytest.CaptureFixture[str], hostile_image: Path) -> None:
    code, out, err = cli(capsys, "guest", "boot-entry", str(hostile_image))
    assert code == 0, err
    assert not any(c in out for c in RAW)
    assert "title: Evil \\x1b]8;;http://attacker.example/\\x07click" in out
    code, out, _ = cli(capsys, "guest", "boot-entry", str(hostile_image), "--json")
    assert not any(c in out for c in RAW) and jsonout.result(out)["title"] == HOSTILE


def test_check_findings(capsys: pytest.CaptureFixture[str], hostile_image: Path,
                        tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(f'name = "g"\nbuilder = "hvm"\nboot = "c"\n'
                   f'disk = [ "{hostile_image},raw,xvda,w" ]\nvif = [ "" ]\n')
    code, out, err = cli(capsys, "guest", "check", str(cfg))
    assert code == 1
    assert not any(c in out + err for c in RAW), err
    assert any(line.startswith("fatal: fstab line 7 (/srv\\x1b[5m[/]): /dev/sdz1 will not exist")
               for line in err.splitlines()), err
    code, out, _ = cli(capsys, "guest", "check", str(cfg), "--json")
    assert code == 1 and not any(c in out for c in RAW)
