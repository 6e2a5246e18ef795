"""The console relay against a fake serial socket; QMP events → supervisor actions; CLI errors."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from pvhvm.errors import DomainError
from pvhvm.runtime import console
from pvhvm.runtime.state import DomainRecord
from pvhvm.runtime.supervisor import _event_word, _normalise
from tests import jsonout
from tests.cli_run import run


def record_with_console(spec: str | None) -> DomainRecord:
    return DomainRecord(
        name="vm", domid=1, uuid="u", platform="qemu", memory_mib=64, vcpus=1, plan={},
        argv=[], on_poweroff="destroy", on_reboot="restart", on_crash="destroy", console=spec,
    )


def serve_echo(path: Path, received: list[bytes]) -> threading.Thread:
    """A one-client serial: greets, then answers each line with 'got <line>'."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.sendall(b"login: ")
            buffer = b""
            while True:
                data = conn.recv(1024)
                if not data:
                    return
                received.append(data)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    conn.sendall(b"got " + line + b"\r\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_console_relays_and_detaches_on_escape(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    received: list[bytes] = []
    thread = serve_echo(path, received)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, b"echo hi\n")
    attach = threading.Thread(
        target=console.attach, args=(record_with_console(str(path)), stdin_r, stdout_w)
    )
    attach.start()
    seen = b""
    while b"got echo hi" not in seen:
        seen += os.read(stdout_r, 1024)
    os.write(stdin_w, b"tail\x1dnot sent")
    attach.join(timeout=5)
    assert not attach.is_alive()
    thread.join(timeout=5)
    assert b"".join(received) == b"echo hi\ntail"
    assert seen.startswith(b"login: ")
    for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
        os.close(fd)


def test_a_second_console_is_refused_while_one_is_attached(tmp_path: Path) -> None:
    """QEMU would leave a second client waiting with its typing queued: refused instead."""
    path = tmp_path / "console.sock"
    serve_echo(path, [])
    lock = tmp_path / "console.lock"
    record = record_with_console(str(path))
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    first = threading.Thread(target=console.attach, args=(record, stdin_r, stdout_w),
                             kwargs={"lock": lock})
    first.start()
    assert os.read(stdout_r, 1024) == b"login: "  # the first one is attached
    with pytest.raises(DomainError, match="is attached elsewhere"):
        console.attach(record, stdin_r, stdout_w, lock=lock)
    os.write(stdin_w, b"\x1d")
    first.join(timeout=5)
    assert not first.is_alive()
    for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
        os.close(fd)


def test_console_end_of_input_detaches_after_output(tmp_path: Path) -> None:
    path = tmp_path / "console.sock"
    serve_echo(path, [])
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, b"one\n")
    os.close(stdin_w)
    console.attach(record_with_console(str(path)), stdin_r, stdout_w)
    os.close(stdout_w)
    output = b""
    while chunk := os.read(stdout_r, 1024):
        output += chunk
    assert output == b"login: got one\r\n"
    os.close(stdin_r)
    os.close(stdout_r)


def test_console_addresses() -> None:
    assert console.console_address(record_with_console("/s/console.sock")) == (
        socket.AF_UNIX, "/s/console.sock")
    assert console.console_address(record_with_console("tcp::4555")) == (
        socket.AF_INET, ("127.0.0.1", 4555))
    with pytest.raises(DomainError, match="serial = 'pty'"):
        console.console_address(record_with_console("pty"))
    with pytest.raises(DomainError, match=r"at .*missing\.sock"):
        console.connect(record_with_console("/nonexistent/missing.sock"))


@pytest.mark.parametrize(("event", "data", "word"), [
    ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, "poweroff"),
    ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}, "reboot"),
    ("SHUTDOWN", {"guest": False, "reason": "host-qmp-system-reset"}, "reboot"),
    ("SHUTDOWN", {"guest": True, "reason": "guest-panic"}, "panic"),
    ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"}, "quit"),
    ("SHUTDOWN", {"guest": False, "reason": "host-signal"}, None),
    ("GUEST_PANICKED", {"action": "pause"}, "panic"),
    ("STOP", {}, "stop"),
    ("RESUME", {}, "resume"),
    ("RESET", {"guest": True, "reason": "guest-reset"}, None),
    ("POWERDOWN", {}, None),
])
def test_qmp_events(event: str, data: dict[str, object], word: str | None) -> None:
    assert _event_word(event, data) == word


def test_xl_actions() -> None:
    assert _normalise("destroy") == "destroy"
    assert _normalise("restart") == "restart"
    assert _normalise("rename-restart") == "restart"
    assert _normalise("preserve") == "preserve"
    assert _normalise("coredump-destroy") == "destroy"




def test_cli_verbs_on_unknown_domain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path))
    for verb in ("console", "shutdown", "pause", "unpause", "reboot", "block-list",
                 "network-list", "destroy", "list"):
        code, out, err = run(capsys, verb, "ghost")
        assert code == 1, verb
        assert err == "pvhvm: error: no domain named 'ghost'\n", (verb, err)
    code, out, err = run(capsys, "list")
    assert code == 0 and out.startswith("Name ") and len(out.splitlines()) == 1
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and jsonout.result(out, "list") == []
    code, _, err = run(capsys, "shutdown", "ghost", "--timeout", "0")  # a bad value: usage
    assert code == 2 and err.startswith("pvhvm: error:") and "Traceback" not in err
