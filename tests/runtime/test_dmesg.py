"""``pvhvm dmesg``: the host supervisor's and a domain's logs, rotated files, escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.runtime import logs
from pvhvm.runtime.state import StateStore
from tests.cli_run import run as cli_run


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return cli_run(capsys, "dmesg", *argv)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / "state"))
    store = StateStore()
    store.make_private()
    return store


def test_the_host_supervisors_log_with_its_rotated_files(
        store: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    log = store.root / "logs" / "hostd.log"
    logs.rotated(log, 2).write_text("oldest\n")
    logs.rotated(log, 1).write_text("older\n")
    log.write_text("one\ntwo\nthree\n")
    assert run(capsys) == (0, "one\ntwo\nthree\n", "")
    assert run(capsys, "--all") == (0, "oldest\nolder\none\ntwo\nthree\n", "")
    assert run(capsys, "--all", "-n", "4") == (0, "older\none\ntwo\nthree\n", "")


def test_a_domains_logs_with_control_characters_escaped(
        store: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    paths = store.paths("web1")
    paths.supervisor_log.write_text("started\n\x1b]0;owned\x07\n")
    paths.qemu_log.write_text("qemu-system-x86_64: warning\n")
    code, out, _ = run(capsys, "web1")
    assert code == 0 and out == "started\n\\x1b]0;owned\\x07\n"
    assert run(capsys, "web1", "--qemu") == (0, "qemu-system-x86_64: warning\n", "")


def test_bad_input_is_one_line(store: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "nothing-ran")
    assert code == 1 and out == ""
    assert err.strip().endswith("no such log (nothing has run here yet as domain "
                                "'nothing-ran')")
    code, _, err = run(capsys, "../etc")
    assert code == 1 and "is not a domain name" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "--qemu")
    assert code != 0 and "--qemu needs a domain NAME" in err
