"""The socket daemon: hostile clients, domain sockets, subprocess and CLI helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import ThreadedDaemon, run_in_thread, spawn_daemon
from pvhvm.xenstore.errors import XenStoreConnectionError, XenStoreErrnoError
from pvhvm.xenstore.wire import Op, Parser, encode, join_strings


def raw_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.settimeout(5)
    return sock


def test_request_fed_byte_by_byte(daemon: ThreadedDaemon) -> None:
    sock = raw_socket(daemon.socket_path)
    data = encode(Op.READ, b"/tool\0", req_id=77)
    for byte in data:
        sock.sendall(bytes([byte]))
        time.sleep(0.001)
    parser = Parser()
    packets = []
    while not packets:
        packets = parser.feed(sock.recv(4096))
    assert packets[0].op == Op.READ and packets[0].req_id == 77 and packets[0].payload == b""
    sock.close()


def test_unknown_type_gets_enosys_and_connection_lives(daemon: ThreadedDaemon) -> None:
    sock = raw_socket(daemon.socket_path)
    sock.sendall(encode(0xBEEF, b"", req_id=1) + encode(Op.GET_DOMAIN_PATH, b"1\0", req_id=2))
    parser = Parser()
    packets = []
    while len(packets) < 2:
        packets += parser.feed(sock.recv(4096))
    assert (packets[0].op, packets[0].payload) == (Op.ERROR, b"ENOSYS\0")
    assert packets[1].payload == b"/local/domain/1\0"
    sock.close()


def test_oversized_message_drops_only_that_connection(daemon: ThreadedDaemon,
                                                      client: XenStoreClient) -> None:
    client.write("/alive", "1")
    bad = raw_socket(daemon.socket_path)
    bad.sendall(Op.WRITE.to_bytes(4, sys.byteorder) + bytes(8)
                + (4097).to_bytes(4, sys.byteorder))
    assert bad.recv(4096) == b""  # closed by the daemon
    bad.close()
    assert client.read("/alive") == b"1"


def test_half_header_and_non_reader_do_not_stall_others(daemon: ThreadedDaemon,
                                                        client: XenStoreClient) -> None:
    half = raw_socket(daemon.socket_path)
    half.sendall(encode(Op.READ, b"/tool\0")[:7])
    hog = raw_socket(daemon.socket_path)
    hog.setblocking(False)
    request = encode(Op.DIRECTORY, b"/tool\0") * 256
    client.watch("/", "all")  # the hog's writes fire events the client must get
    assert client.read_watch(5) is not None
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # never reads: the daemon stops reading it
        try:
            sent += hog.send(request)
        except BlockingIOError:
            break
    started = time.monotonic()
    for i in range(50):
        client.write(f"/others/{i}", "x")
    assert client.read("/others/49") == b"x"
    assert time.monotonic() - started < 5
    assert sent > 0
    half.close()
    hog.close()


def test_many_clients(daemon: ThreadedDaemon) -> None:
    clients = [XenStoreClient(daemon.socket_path) for _ in range(32)]
    for i, xs in enumerate(clients):
        xs.write(f"/many/{i}", str(i))
    assert len(clients[0].directory("/many")) == 32
    for xs in clients:
        xs.close()


def test_domain_socket_acts_as_domain(daemon: ThreadedDaemon, client: XenStoreClient) -> None:
    client.write("/secret", "s")
    client.mkdir("/local/domain/5")
    client.set_perms("/local/domain/5", ["n5"])
    client.introduce(5, 0, 1)
    path = daemon.domain_socket(5)
    with XenStoreClient(path) as dom5:
        with pytest.raises(XenStoreErrnoError) as info:
            dom5.read("/secret")
        assert info.value.errno_name == "EACCES"
        dom5.write("name", "guest")  # relative to /local/domain/5
        assert client.read("/local/domain/5/name") == b"guest"
        assert [str(p) for p in client.get_perms("/local/domain/5/name")] == ["n5"]
        with pytest.raises(XenStoreErrnoError, match="EACCES"):
            dom5.introduce(6, 0, 1)
        # quotas of the fixture: 50 nodes, 4 watches (xenstored allows one more), 2 txs
        for i in range(8):
            try:
                dom5.watch(f"w{i}", "t")
            except XenStoreErrnoError as err:
                assert err.errno_name == "E2BIG"
                break
        else:
            pytest.fail("watch quota not enforced")
        client.release(5)
        with pytest.raises(XenStoreConnectionError):
            dom5.read("name")
    assert not path.exists()
    assert not client.exists("/local/domain/5")


def test_spawn_daemon_subprocess(short_dir: Path) -> None:
    socket_path = short_dir / "sub.sock"
    pid_file = short_dir / "pid"
    with spawn_daemon(socket_path, pid_file=pid_file) as handle:
        assert pid_file.read_text().strip() == str(handle.pid)
        with XenStoreClient(socket_path) as xs:
            xs.write("/from/subprocess", "1")
            assert xs.read("/from/subprocess") == b"1"
    assert handle.process.returncode == 0
    assert not socket_path.exists() and not pid_file.exists()


def test_stale_socket_replaced_and_live_one_refused(short_dir: Path) -> None:
    path = short_dir / "stale"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    with run_in_thread(path) as first:
        with XenStoreClient(first.socket_path) as xs:
            assert xs.directory("/") == ["tool"]
        with pytest.raises(XenStoreConnectionError, match="already listens"):
            run_in_thread(path)
    assert not path.exists()


def test_a_path_that_is_not_a_socket_is_never_removed(short_dir: Path) -> None:
    """--socket pointing at a user's file by mistake: refused, and the file is left alone,
    also by the spawned daemon's clean-up."""
    path = short_dir / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(XenStoreConnectionError, match="exists and is not a socket"):
        run_in_thread(path)
    with pytest.raises(XenStoreConnectionError):
        spawn_daemon(path)
    assert path.read_text() == "keep me"


def test_second_daemon_on_a_live_socket_leaves_the_first_whole(short_dir: Path) -> None:
    """Refused at once, by the spawner and by the daemon itself: the first daemon keeps its
    socket and its pid file."""
    socket_path, pid_file = short_dir / "xs.sock", short_dir / "xs.pid"
    with spawn_daemon(socket_path, pid_file=pid_file) as first:
        with pytest.raises(XenStoreConnectionError, match="already listens"):
            spawn_daemon(socket_path, pid_file=pid_file)
        again = subprocess.run(
            [sys.executable, "-m", "pvhvm.xenstore", "--socket", str(socket_path),
             "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=30,
            check=False)
        assert again.returncode != 0 and "already listens" in again.stderr
        assert pid_file.read_text().strip() == str(first.pid)
        with XenStoreClient(socket_path) as xs:
            assert xs.directory("/") == ["tool"]
    assert not socket_path.exists() and not pid_file.exists()


def test_domain_socket_path_taken_by_a_file(short_dir: Path) -> None:
    """A file where a domain's socket should go: the domain is introduced without its socket,
    the file is left alone and the daemon keeps serving."""
    sockets = short_dir / "dom"
    sockets.mkdir()
    (sockets / "domain-7").write_text("keep me")
    with (run_in_thread(short_dir / "xs.sock", domain_socket_dir=sockets) as daemon,
          XenStoreClient(daemon.socket_path) as xs):
        xs.introduce(7, 0, 1)
        assert xs.is_domain_introduced(7)
        xs.write("/still/serving", "1")
    assert (sockets / "domain-7").read_text() == "keep me"


def test_cli_command_runs_until_sigterm(short_dir: Path) -> None:
    path = short_dir / "cli.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH"))
        if p)
    process = subprocess.Popen(
        [sys.executable, "-c", "from pvhvm.cli.xenstored import xenstored; xenstored()",
         "--socket", str(path)], env=env)
    try:
        for _ in range(500):
            if path.exists():
                break
            time.sleep(0.01)
        with XenStoreClient(path) as xs:
            assert xs.read("/tool/xenstored") == b""
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not path.exists()


def test_no_header_left_behind_after_close(daemon: ThreadedDaemon) -> None:
    sock = raw_socket(daemon.socket_path)
    sock.sendall(encode(Op.WATCH, join_strings("/x", "t")))
    sock.close()
    time.sleep(0.05)
    with XenStoreClient(daemon.socket_path) as xs:
        xs.write("/x", "1")
    assert len(daemon.store.connections) == 0 or all(
        not c.watches for c in daemon.store.connections)
