"""Another local user against pvhvm (issue 18, items 2 and 5), with real processes of another
uid (``setpriv`` to ``nobody``): a squatter on the host supervisor's socket and on a domain's
QMP, console and XenStore sockets gets nothing and the client says who it is; a real guest's
state directory is the user's alone.

The squatter is a real process bound where pvhvm connects; it plays along (it answers the host
supervisor's requests and greets as QEMU's QMP does) and reports every byte and descriptor
it was sent.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.errors import ForeignPeerError
from pvhvm.guest.kit import Kit
from pvhvm.private import open_private, private_dir
from pvhvm.qemu import qmp
from pvhvm.runtime import console, hostctl
from pvhvm.runtime.state import DomainRecord, OwnerLock, StateStore, pid_alive
from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.errors import XenStoreConnectionError
from tests.e2e.conftest import _processes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOBODY = 65534

#: the squatter: binds argv[1] (hex of the address), socket type argv[2], bait argv[3]
#: (hostd: answers each request as a supervisor would; qmp: greets as QEMU; none), says
#: "ready", and when its stdin closes prints what it received as JSON
SQUATTER = r"""
import array, json, os, select, socket, sys
address = bytes.fromhex(sys.argv[1])
if not address.startswith(b"\0"):
    address = address.decode()
kind = socket.SOCK_SEQPACKET if sys.argv[2] == "seqpacket" else socket.SOCK_STREAM
bait = sys.argv[3]
listener = socket.socket(socket.AF_UNIX, kind)
listener.bind(address)
listener.listen(16)
print("ready", flush=True)
seen = {"uid": os.getuid(), "connections": 0, "bytes": 0, "fds": 0}
conns = []
told_to_end = False  # then take what is still queued, and end
while True:
    watched = [listener] + conns + ([] if told_to_end else [sys.stdin])
    ready, _, _ = select.select(watched, [], [], 0.2 if told_to_end else None)
    if not ready:
        break
    if sys.stdin in ready:
        told_to_end = True
    if listener in ready:
        conn, _ = listener.accept()
        seen["connections"] += 1
        conns.append(conn)
        if bait == "qmp":
            try:
                conn.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, '
                             b'"major": 7}, "package": ""}, "capabilities": []}}\r\n')
            except OSError:
                pass  # gone already
    for conn in [c for c in conns if c in ready]:
        fds = array.array("i")
        try:
            data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * fds.itemsize))
        except OSError:
            data, ancdata = b"", []
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(cdata[:len(cdata) - len(cdata) % got.itemsize])
                seen["fds"] += len(got)
                for fd in got:
                    os.close(fd)
        if not data:
            conns.remove(conn)
            conn.close()
            continue
        seen["bytes"] += len(data)
        try:
            if bait == "hostd":
                conn.send(b'{"pid": 4242, "domains": []}')
            elif bait == "qmp":
                conn.sendall(b'{"return": {}}\r\n')
        except OSError:
            pass
print(json.dumps(seen), flush=True)
"""


def _need_root_and_setpriv() -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process as another user")


class Squatter:
    """A process of uid ``nobody`` listening at ``address``."""

    def __init__(self, address: str | bytes, kind: str = "stream", bait: str = "none") -> None:
        raw = address if isinstance(address, bytes) else os.fsencode(address)
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-I", "-c", SQUATTER, raw.hex(), kind, bait],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd="/")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"the squatter did not bind: {self.proc.communicate()[1]}")

    def report(self) -> dict[str, int]:
        """What it was sent (it exits)."""
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        seen = json.loads(out)
        assert isinstance(seen, dict) and seen["uid"] == NOBODY
        return seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh state directory (short: its host supervisor socket is a file in it)."""
    monkeypatch.setenv("PVHVM_HOSTD_LINGER", "1")
    root = Path(tempfile.mkdtemp(prefix="pvq-", dir="/tmp"))
    monkeypatch.setenv("PVHVM_STATE_DIR", str(root))
    yield root
    _stop_supervisors(root)
    shutil.rmtree(root, ignore_errors=True)


def _stop_supervisors(root: Path) -> None:
    for pid in _processes(root, b"pvhvm.runtime.hostd") + _processes(root, b"qemu-system"):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _pvhvm(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pvhvm", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PVHVM_STATE_DIR": str(root)}, check=False)


# --- the host supervisor's socket ----------------------------------------------------------


def test_a_squatter_of_the_supervisors_socket_gets_nothing_and_create_says_who(
        state: Path, kit: Kit) -> None:
    """``pvhvm create`` as root, while uid nobody holds the supervisor's socket (in a state
    directory an older pvhvm, or a chmod, left open to everybody): one line naming the uid,
    exit 1 at once, no domain left, and the squatter got no byte and no descriptor (today's
    pvhvm handed it the owner lock and the creator's pipe). The abstract name of a state
    directory too deep for a socket file is squatted below: no domain fits in such a
    directory (its QMP socket path would be too long), so create cannot reach it."""
    _need_root_and_setpriv()
    state.chmod(0o777)
    root = state
    squatter = Squatter(hostctl.address(root), "seqpacket", bait="hostd")
    started = time.monotonic()
    try:
        done = _pvhvm(root, "create", str(EXAMPLES / "pv-only.cfg"),
                      f"imagedir={kit.vmlinuz.parent}", "--accel", "tcg", "--no-check")
        if done.returncode == 0:  # today's pvhvm: take down whatever it started
            _pvhvm(root, "destroy", "pv-only")
    finally:
        seen = squatter.report() if squatter.proc.poll() is None else {}
        squatter.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith(("warning: ", "note: "))]
    assert len(lines) == 1, done.stderr
    assert f"another user (uid {NOBODY} (nobody)) holds the host supervisor's socket" in lines[0]
    assert "pvhvm sent it nothing" in lines[0] and "Traceback" not in done.stderr
    assert seen["connections"] >= 1  # it was reached...
    assert seen["bytes"] == 0 and seen["fds"] == 0  # ...and told nothing
    assert not list((root / "domains").iterdir())  # nothing half-made
    assert not _processes(root, b"qemu-system")
    assert time.monotonic() - started < 20  # not after a destroy's wait for a supervisor
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # tightened at first use


def test_every_way_to_the_supervisor_refuses_a_squatter(state: Path) -> None:
    """What ``list`` (running), ``destroy`` (stop), ``create`` and ``restore`` (supervise,
    with the owner lock, the creator's pipe and the migration stream's fds) each use."""
    _need_root_and_setpriv()
    root = state / ("d" * 100)  # the abstract name: no directory keeps the squatter out
    squatter = Squatter(hostctl.address(root), "seqpacket", bait="hostd")
    owner = OwnerLock.try_acquire(state / "owner.lock", create=True)
    assert owner is not None and owner.fd is not None
    stream, commit = os.pipe(), os.pipe()
    try:
        with pytest.raises(ForeignPeerError, match=f"uid {NOBODY}"):
            hostctl.running(root)
        with pytest.raises(ForeignPeerError, match=f"uid {NOBODY}"):
            hostctl.stop(root, "g")
        with pytest.raises(ForeignPeerError, match=f"uid {NOBODY}"):
            hostctl.supervise(root, "g", owner.fd, ready_fd=commit[1],
                              incoming=(stream[0], commit[0]))
        with pytest.raises(ForeignPeerError, match="set PVHVM_STATE_DIR to a shorter path"):
            hostctl.request(root, {"verb": "ping"}, start=False)
        seen = squatter.report()
    finally:
        squatter.stop()
        owner.close()
        for fd in (*stream, *commit):
            os.close(fd)
    assert seen == {"uid": NOBODY, "connections": 4, "bytes": 0, "fds": 0}
    assert not _processes(root, b"pvhvm.runtime.hostd")  # and no supervisor was started


def test_an_older_supervisors_abstract_name_is_reached_only_when_it_is_ours(
        state: Path) -> None:
    """A host supervisor of an older pvhvm keeps its domains on the abstract name; it is
    still asked while nothing listens on hostd.sock, but a squatter of that name is not
    the supervisor of record: ignored, and told nothing."""
    _need_root_and_setpriv()
    legacy = hostctl._abstract_name(state)
    squatter = Squatter(legacy, "seqpacket", bait="hostd")
    try:
        assert hostctl.running(state) is None
        seen = squatter.report()
    finally:
        squatter.stop()
    assert seen == {"uid": NOBODY, "connections": 1, "bytes": 0, "fds": 0}
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as ours:
        ours.bind(legacy)
        ours.listen(1)

        def answer() -> None:
            conn, _ = ours.accept()
            with conn:
                conn.recv(65536)
                conn.send(b'{"pid": 4242, "domains": []}')

        worker = threading.Thread(target=answer)
        worker.start()
        try:
            assert hostctl.running(state) == 4242
        finally:
            worker.join(timeout=10)


# --- a domain's sockets --------------------------------------------------------------------


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may write in: what a squatter needs to bind at a socket path there
    (pvhvm's own are 0700, so this proves the client's check, the second wall)."""
    directory = Path(tempfile.mkdtemp(prefix="pvq-", dir="/tmp"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_squatter_on_qmp_gets_no_command(open_dir: Path) -> None:
    """The squatter greets as QEMU does; today's client answered with qmp_capabilities and
    the command (and a restore, with the migration stream's fd)."""
    _need_root_and_setpriv()
    path = open_dir / "ctl.sock"
    squatter = Squatter(str(path), bait="qmp")
    try:
        with pytest.raises(ForeignPeerError) as refused:
            qmp.execute(path, "query-status", timeout=5)
        seen = squatter.report()
    finally:
        squatter.stop()
    assert str(refused.value).startswith(
        f"another user (uid {NOBODY} (nobody)) listens on QMP socket {path}")
    assert seen == {"uid": NOBODY, "connections": 1, "bytes": 0, "fds": 0}


def test_a_squatter_on_the_console_gets_no_keystroke(open_dir: Path) -> None:
    _need_root_and_setpriv()
    path = open_dir / "console.sock"
    squatter = Squatter(str(path))
    record = DomainRecord(name="g", domid=1, uuid="", platform="qemu", memory_mib=1, vcpus=1,
                          plan={}, argv=[], on_poweroff="destroy", on_reboot="destroy",
                          on_crash="destroy", console=str(path))
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"root\nsecret password\n\x1d")
    out_r, out_w = os.pipe()
    try:
        with pytest.raises(ForeignPeerError, match=f"uid {NOBODY}.*console socket"):
            console.attach(record, read_fd, out_w)
        seen = squatter.report()
    finally:
        squatter.stop()
        for fd in (read_fd, write_fd, out_r, out_w):
            os.close(fd)
    assert seen == {"uid": NOBODY, "connections": 1, "bytes": 0, "fds": 0}


def test_a_squatter_on_the_xenstore_socket_gets_no_request(open_dir: Path) -> None:
    """XenStore's daemon may be root or the user; a third uid gets no request."""
    _need_root_and_setpriv()
    path = open_dir / "socket"
    squatter = Squatter(str(path))
    try:
        with pytest.raises(XenStoreConnectionError, match=f"another user \\(uid {NOBODY}"), \
                XenStoreClient(path, timeout=5) as client:
            client.read("/local/domain/0/name")
        seen = squatter.report()
    finally:
        squatter.stop()
    assert seen == {"uid": NOBODY, "connections": 1, "bytes": 0, "fds": 0}


# --- private files --------------------------------------------------------------------------


def test_private_files_and_directories_never_follow_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    elsewhere.chmod(0o755)
    (tmp_path / "link").symlink_to(elsewhere)
    private_dir(tmp_path / "link")  # left as it is: not pvhvm's to chmod
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
    target = tmp_path / "target.log"
    target.write_text("x")
    target.chmod(0o644)
    (tmp_path / "file-link").symlink_to(target)
    with pytest.raises(OSError) as err:
        open_private(tmp_path / "file-link")
    assert err.value.errno == errno.ELOOP
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # made private from the start, and an older pvhvm's loose ones tightened
    os.close(open_private(target))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    fresh = tmp_path / "a" / "b" / "c"
    private_dir(fresh)
    for directory in (fresh, fresh.parent, fresh.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir()
    old.chmod(0o755)
    private_dir(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o700


def test_another_users_directory_or_file_is_refused_not_changed(tmp_path: Path) -> None:
    """A logs/ (or a log) that another user made first, where pvhvm would keep the user's
    console transcripts: refused, and left as it is."""
    _need_root_and_setpriv()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o755)
    (theirs / "g.console.log").touch()
    os.chown(theirs / "g.console.log", NOBODY, NOBODY)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match=f"owned by another user \\(uid {NOBODY}"):
        private_dir(theirs)
    with pytest.raises(PermissionError, match=f"uid {NOBODY}"):
        open_private(theirs / "g.console.log")
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755


def test_a_state_directory_that_is_not_only_pvhvms_is_not_chmodded(tmp_path: Path) -> None:
    """PVHVM_STATE_DIR naming a directory that holds other things ($HOME, /tmp): pvhvm's own
    directories in it are 0700, the directory itself is not pvhvm's to change."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("someone else's")
    StateStore(shared).make_private()
    with StateStore(shared).locked():
        pass
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "lock").stat().st_mode) == 0o600
    for sub in ("domains", "logs"):
        assert stat.S_IMODE((shared / sub).stat().st_mode) == 0o700
    own = tmp_path / "own"
    own.mkdir()
    own.chmod(0o755)
    (own / "logs").mkdir()
    (own / "logs").chmod(0o755)
    (own / "lock").touch()
    StateStore(own).make_private()  # an older pvhvm's: tightened
    for directory in (own, own / "logs", own / "domains"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.e2e
def test_a_real_guests_state_is_the_users_alone(state: Path, kit: Kit, tmp_path: Path) -> None:
    """One boot of the example guest in a state directory an older pvhvm left 0755 with a
    0644 console log: afterwards every directory is 0700, every file 0600, every socket
    without group or other bits, and uid nobody cannot open the console log."""
    _need_root_and_setpriv()
    images = tmp_path / "images"
    images.mkdir()
    for source in (kit.vmlinuz, kit.initramfs):
        os.symlink(source, images / source.name)
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(kit.rootfs),
                    str(images / kit.rootfs.name)], check=True)
    state.chmod(0o755)
    (state / "logs").mkdir(mode=0o755)
    (state / "logs").chmod(0o755)
    old_log = state / "logs" / "pv-only.console.log"
    old_log.write_text("an older boot's transcript, with a password typed at its console\n")
    old_log.chmod(0o644)
    try:
        done = _pvhvm(state, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={images}")
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 120
        while old_log.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # QEMU truncated it; the guest's first lines arrive
        loose = _loose_entries(state)
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-I", "-c",
             "import sys\ntry:\n    open(sys.argv[1], 'rb')\nexcept OSError as e:\n"
             "    print(e.errno)\nelse:\n    print('read')\n", str(old_log)],
            capture_output=True, text=True, timeout=30, cwd="/")
    finally:
        _pvhvm(state, "destroy", "pv-only")
    assert not loose, loose
    assert probe.stdout.strip() == str(errno.EACCES), probe.stdout + probe.stderr
    assert old_log.stat().st_size > 0  # it is the log QEMU wrote this boot


def _loose_entries(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that is not a 0700 directory, a 0600
    file or a socket without group/other bits, with its mode."""
    out = []
    for entry in [root, *root.rglob("*")]:
        info = entry.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            good = mode == 0o700
        elif stat.S_ISREG(info.st_mode):
            good = mode == 0o600
        elif stat.S_ISSOCK(info.st_mode):
            good = mode & 0o077 == 0
        else:
            good = False
        if not good:
            out.append(f"{entry} {stat.filemode(info.st_mode)}")
    return out
