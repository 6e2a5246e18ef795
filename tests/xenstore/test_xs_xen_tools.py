"""Xen's own clients against the daemon: xenstore-utils, test-xenstore (Xen 4.17), pyxs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fetch_test_xenstore import XenTestProgram

from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import ThreadedDaemon

TOOLS = ["xenstore-ls", "xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-list",
         "xenstore-exists", "xenstore-chmod", "xenstore-watch"]
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="Debian's xenstore-utils is not installed (apt-get install xenstore-utils)")


def tool(daemon: ThreadedDaemon, *argv: str, check: bool = True,
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XENSTORED_PATH=str(daemon.socket_path))
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30,
                          check=check)


@needs_tools
def test_xenstore_utils(daemon: ThreadedDaemon) -> None:
    tool(daemon, "xenstore-write", "/vm/1/name", "guest", "/vm/1/uuid", "abc")
    assert tool(daemon, "xenstore-read", "/vm/1/name").stdout == "guest\n"
    assert tool(daemon, "xenstore-list", "/vm/1").stdout.split() == ["name", "uuid"]
    assert tool(daemon, "xenstore-exists", "/vm/1").returncode == 0
    assert tool(daemon, "xenstore-exists", "/vm/2", check=False).returncode != 0
    tool(daemon, "xenstore-chmod", "/vm/1", "n1", "r0")
    listing = tool(daemon, "xenstore-ls", "-p", "/vm").stdout
    assert "1 = \"\"" in listing and "(n1,r0)" in listing
    assert 'name = "guest"' in tool(daemon, "xenstore-ls", "/vm").stdout
    failed = tool(daemon, "xenstore-read", "/vm/none", check=False)
    assert failed.returncode != 0 and "couldn't read path" in failed.stderr
    tool(daemon, "xenstore-rm", "/vm/1")
    assert tool(daemon, "xenstore-list", "/vm").stdout == ""
    # relative paths are under /local/domain/0 for socket clients
    tool(daemon, "xenstore-write", "relative", "1")
    assert tool(daemon, "xenstore-read", "/local/domain/0/relative").stdout == "1\n"


@needs_tools
def test_xenstore_watch(daemon: ThreadedDaemon, client: XenStoreClient) -> None:
    env = dict(os.environ, XENSTORED_PATH=str(daemon.socket_path))
    watcher = subprocess.Popen(["xenstore-watch", "-n", "3", "/watched"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "/watched"
        client.write("/watched/a", "1")
        client.rm("/watched")
        assert watcher.wait(10) == 0
        assert watcher.stdout.read().split() == ["/watched/a", "/watched"]
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def test_xen_test_xenstore(daemon: ThreadedDaemon, test_xenstore: XenTestProgram) -> None:
    env = test_xenstore.environment(daemon.socket_path)
    for argv in ([], ["-i", "10"], ["-r", "2"]):
        result = subprocess.run([str(test_xenstore.binary), *argv], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "failed" not in result.stdout
        if not argv:
            assert result.stdout.count(" ns") == 12  # every test of the list ran
    with XenStoreClient(daemon.socket_path) as xs:
        assert "xenstore-test" not in xs.directory("/local/domain/0")  # cleaned up


def test_pyxs_client(daemon: ThreadedDaemon) -> None:
    pyxs = pytest.importorskip("pyxs")
    with pyxs.Client(unix_socket_path=str(daemon.socket_path)) as c:
        c[b"/p/q"] = b"v"
        assert c[b"/p/q"] == b"v"
        assert c.list(b"/p") == [b"q"]
        c.set_perms(b"/p/q", [b"b0", b"r3"])
        assert c.get_perms(b"/p/q") == [b"b0", b"r3"]
        assert c.get_domain_path(3) == b"/local/domain/3"
        c.transaction()
        c[b"/p/t"] = b"1"
        assert c.commit()
        assert c.exists(b"/p/t")
        c.transaction()
        c[b"/p/never"] = b"1"
        c.rollback()
        assert not c.exists(b"/p/never")
        c.introduce_domain(4, 1, 2)
        assert c.is_domain_introduced(4)
        # pyxs refuses RELEASE unless it runs as root ("SU"); it is tested elsewhere
        with c.monitor() as m:
            m.watch(b"/p", b"tok")
            events = m.wait()
            assert next(events) == (b"/p", b"tok")
            c[b"/p/z"] = b"2"
            assert next(events) == (b"/p/z", b"tok")
        c.delete(b"/p")
        assert not c.exists(b"/p")
        with pytest.raises(pyxs.PyXSError):
            c.read(b"/bad path")


def test_pyxs_conflict(daemon: ThreadedDaemon) -> None:
    pyxs = pytest.importorskip("pyxs")
    with pyxs.Client(unix_socket_path=str(daemon.socket_path)) as a, \
            pyxs.Client(unix_socket_path=str(daemon.socket_path)) as b:
        a[b"/c"] = b"0"
        a.transaction()
        assert a[b"/c"] == b"0"
        b[b"/c"] = b"1"
        a[b"/c"] = b"2"
        assert a.commit() is False
        assert b[b"/c"] == b"1"


def test_fetch_script_runs(tmp_path: Path, test_xenstore: XenTestProgram) -> None:
    script = Path(__file__).with_name("fetch_test_xenstore.py")
    started = time.monotonic()
    cache = test_xenstore.binary.parents[5]
    result = subprocess.run(["python3", str(script), str(cache)], capture_output=True,
                            text=True, timeout=120, check=True)
    assert str(test_xenstore.binary) in result.stdout
    assert time.monotonic() - started < 60  # cached: nothing downloaded again
