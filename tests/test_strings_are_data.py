"""Strings are data (issue 18, item 4; SECURITY.md): what a guest, a config or a user wrote is
printed with its control characters escaped and is never read as console markup."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from pvhvm.cli import output
from pvhvm.cli.main import main
from pvhvm.cli.report import print_report, report_document, report_tables
from pvhvm.guest.report import parse_report

#: a hyperlink (OSC 8), blink, a title change and a bell: what a hostile guest would print
HOSTILE = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\\x1b[5m\x1b]0;owned\x07"
MARKUP = "[/][blink]x[link=http://evil.example/]y[/link]"


def hostile_log() -> str:
    return "\n".join([
        "PVHVM-REPORT-BEGIN",
        f"pci 0000:00:01.0 class=0x0100 vendor=0x1af4 device=0x1001 driver={HOSTILE}",
        f"blk {MARKUP} driver={HOSTILE} size=2048",
        f"net eth0{HOSTILE} driver={MARKUP} mac=52:54:00:12:34:56",
        f"root {MARKUP} fstype={HOSTILE}",
        "PVHVM-REPORT-END",
        "",
    ])


def test_report_fields_are_shown_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    found = parse_report(hostile_log())
    assert found.root == MARKUP  # the parser keeps the guest's text as it is: data
    print_report("g", found)  # a "[/]" raised MarkupError (a traceback) before
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]8;;http://evil.example/" in out
    assert "[/][blink]x[link=http://evil.example/]y[/link]" in out


def test_report_on_a_terminal_has_only_pvhvm_styles() -> None:
    """On a terminal rich adds its own SGR codes; none of the guest's sequences get through
    (no OSC: no hyperlink, no title), and its markup makes no link."""
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=200, markup=False)
    for table in report_tables("g", parse_report(hostile_log())):
        terminal.print(table)
    text = buffer.getvalue()
    assert "\x1b]" not in text and "\x07" not in text and "\x1b[5m" not in text
    assert "\\x1b]8;;" in text


def test_report_json_keeps_the_guest_text_as_json_strings() -> None:
    document = report_document("g", parse_report(hostile_log()))
    encoded = json.dumps(document)
    assert "\x1b" not in encoded  # JSON escapes control characters itself
    assert json.loads(encoded)["root"] == MARKUP


@settings(deadline=None, max_examples=200)
@given(st.text())
def test_data_cells_never_carry_control_characters(text: str) -> None:
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=False, width=400, markup=False).print(output.data(text))
    printed = buffer.getvalue()
    assert all(ch == "\n" or ch.isprintable() for ch in printed)


def test_markup_in_a_plain_string_is_text() -> None:
    """Every console pvhvm makes has markup off: a str from anywhere prints as it is."""
    buffer = io.StringIO()
    out = output.console()
    out.file = buffer
    out.print("[bold]x[/bold] [/]")
    assert buffer.getvalue() == "[bold]x[/bold] [/]\n"


def test_warnings_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    output.warn(f"guest said {HOSTILE}")
    output.say(f"domain said {HOSTILE}")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err.count("\n") == 2


def test_error_lines_escape_control_characters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(SystemExit) as info:
        main(["destroy", f"x{HOSTILE}"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("pvhvm: error: ")
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
