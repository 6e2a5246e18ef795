"""The host supervisor's request socket, with a real daemon process (no domains: the
end-to-end lifecycle tests give it real QEMUs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.runtime import hostctl
from pvhvm.runtime.state import pid_alive


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "30")
    directory = Path(tempfile.mkdtemp(prefix="pvh-", dir="/tmp"))
    yield directory
    pid = hostctl.running(directory)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        _gone(pid)
    shutil.rmtree(directory, ignore_errors=True)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pid_alive(pid)


def _raw(root: Path, payload: bytes, fds: list[int] | None = None) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(hostctl.address(root))
        socket.send_fds(sock, [payload], fds or [])
        sock.settimeout(5)
        answer = json.loads(sock.recv(65536))
    assert isinstance(answer, dict)
    return answer


def test_the_address_is_a_socket_in_the_state_directory_or_abstract_if_too_long(
        tmp_path: Path) -> None:
    # in the state directory (0700: nobody else can bind there), one per state directory
    one, two = hostctl.address(tmp_path / "a"), hostctl.address(tmp_path / "b")
    assert one == str(tmp_path / "a" / "hostd.sock") and one != two
    # a path AF_UNIX cannot hold: an abstract name from the directory's hash
    deep = tmp_path / ("d" * 100)
    three, four = hostctl.address(deep / "a"), hostctl.address(deep / "b")
    assert isinstance(three, bytes) and three.startswith(b"\0pvhvm-hostd-") and three != four
    assert hostctl.address(deep / "a") == three
    assert len(three) < 108  # whatever the directory's length


def test_linger_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PVHVM_HOSTD_LINGER", raising=False)
    assert hostctl.linger() == hostctl.LINGER
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "2.5")
    assert hostctl.linger() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("PVHVM_HOSTD_LINGER", bad)
        with pytest.raises(hostctl.HostdError, match="PVHVM_HOSTD_LINGER"):
            hostctl.linger()


def test_started_on_demand_once_in_its_own_session(root: Path) -> None:
    assert hostctl.running(root) is None
    with pytest.raises(hostctl.HostdError, match="no host supervisor runs"):
        hostctl.request(root, {"verb": "ping"}, start=False)
    pids: list[int] = []

    def ask() -> None:
        answer = hostctl.request(root, {"verb": "ping"})
        assert answer["domains"] == []
        pids.append(int(str(answer["pid"])))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pids) == 4 and len(set(pids)) == 1  # racing starts: one daemon serves all
    (pid,) = set(pids)
    assert os.getsid(pid) == pid
    assert hostctl.running(root) == pid
    assert not hostctl.stop(root, "nobody")  # not one of its domains


def test_bad_requests_get_an_answer_and_change_nothing(root: Path) -> None:
    pid = int(str(hostctl.request(root, {"verb": "ping"})["pid"]))
    assert "bad request" in str(_raw(root, b"not json")["error"])
    assert "bad request" in str(_raw(root, b"[1, 2]")["error"])
    assert "unknown verb" in str(_raw(root, b'{"verb": "fly", "name": "x"}')["error"])
    assert "bad request" in str(_raw(root, b'{"verb": "start"}')["error"])
    assert "../x" in str(_raw(root, b'{"verb": "stop", "name": "../x"}')["error"])
    # a start with the wrong descriptors: refused, and the descriptor it was given closed
    read_fd, write_fd = os.pipe()
    try:
        answer = _raw(root, b'{"verb": "start", "name": "x", "ready": true}', [write_fd])
        assert "2 expected" in str(answer["error"])
        os.close(write_fd)
        write_fd = -1
        assert os.read(read_fd, 1) == b""  # the daemon kept no copy of the pipe's end
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert hostctl.running(root) == pid
    assert not list((root / "domains").glob("*")) if (root / "domains").exists() else True


@pytest.mark.parametrize("where", ["socket file", "abstract"])
def test_another_user_is_not_answered(root: Path, where: str) -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to ask as another user")
    if where == "abstract":  # a state directory too deep for a socket file
        root = root / ("d" * 100)
    pid = hostctl.running(root) or int(str(hostctl.request(root, {"verb": "ping"})["pid"]))
    try:
        _ask_as_nobody(root, pid, "no access" if where == "socket file" else "hung up")
    finally:
        os.kill(pid, signal.SIGTERM)
        _gone(pid)


def _ask_as_nobody(root: Path, pid: int, expected: str) -> None:
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "try:\n"
        f"    s.connect({hostctl.address(root)!r})\n"
        "except PermissionError:\n"
        "    sys.stdout.write('no access')\n"
        "    sys.exit(0)\n"
        "try:\n"
        "    s.send(b'{\"verb\": \"stop\", \"name\": \"x\"}')\n"
        "    s.settimeout(5)\n"
        "    sys.stdout.write(repr(s.recv(100)))\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    sys.stdout.write('hung up')\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
         "-I", "-c", probe], capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    # the socket file is in a 0700 directory: out of reach; the abstract name can be reached,
    # and the daemon hangs up unanswered
    assert out.stdout in (("b''", "hung up") if expected == "hung up" else (expected,))
    assert hostctl.running(root) == pid


def test_it_goes_after_lingering_and_on_sigterm(root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "0.5")
    pid = int(str(hostctl.request(root, {"verb": "ping"})["pid"]))
    assert _gone(pid), "a host supervisor with no domain stayed past its linger"
    assert hostctl.running(root) is None
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "30")
    pid = int(str(hostctl.request(root, {"verb": "ping"})["pid"]))
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
    log = (root / "logs" / "hostd.log").read_text()
    assert "no domain left: exiting" in log and "signal 15: exiting" in log


def test_a_bad_linger_is_said_by_the_starting_command(root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "soon")
    with pytest.raises(hostctl.HostdError,
                       match="the host supervisor did not start: PVHVM_HOSTD_LINGER must be"):
        hostctl.request(root, {"verb": "ping"})
    assert hostctl.running(root) is None
