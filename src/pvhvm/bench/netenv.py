"""The private network of ``pvhvm bench net``: a Linux bridge, qemu-bridge-helper's ACL line,
and the host's iperf3 server on the bridge address.

Everything is made at the start of a run and removed at its end, also when the run fails or is
interrupted (Ctrl-C, SIGTERM, SIGHUP: :func:`signals_raise` turns the last two into
KeyboardInterrupt so ``finally`` blocks run). What a SIGKILLed run left behind is recognised
and removed by the next run: the bridge by its name, the ACL line by the marker comment above
it. One run at a time holds ``LOCK_PATH``.

Traffic never leaves the host: the bridge has no physical port, only the guest's tap (added by
qemu-bridge-helper when QEMU starts with ``-netdev bridge,br=NAME``) and the host's own
address on the bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pvhvm.bench import BenchError

BRIDGE = "pvbench0"
HOST_IP = "10.213.0.1"
GUEST_IP = "10.213.0.2"
PREFIX = 24
PORT = 5213
BRIDGE_CONF = Path("/etc/qemu/bridge.conf")
HELPER = Path("/usr/lib/qemu/qemu-bridge-helper")
MARKER = "# pvhvm bench net: the next line is removed when the run ends"
LOCK_PATH = Path("/run/lock/pvhvm-bench-net.lock")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip")
    if ip is None:
        raise BenchError("the ip command is missing (apt-get install iproute2)")
    done = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def can_create_bridge() -> str | None:
    """None when this process may create the benchmark bridge, else why not."""
    if os.geteuid() != 0:
        return "creating a bridge needs root (CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if not HELPER.exists():
        return f"{HELPER} is missing (qemu-system-x86 ships it)"
    if shutil.which("iperf3") is None:
        return "iperf3 is not installed on the host (dev/setup installs it)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing"
    return None


# --- bridge.conf ------------------------------------------------------------------------------

def _without_ours(text: str, bridge: str) -> str:
    """bridge.conf text with every marker line and the ``allow BRIDGE`` line after it removed."""
    out: list[str] = []
    lines = text.splitlines()
    skip = False
    for line in lines:
        if skip and line.strip() == f"allow {bridge}":
            skip = False
            continue
        skip = line.strip() == MARKER
        if not skip:
            out.append(line)
    return "".join(f"{line}\n" for line in out)


def add_acl(bridge: str, conf: Path = BRIDGE_CONF) -> None:
    """Allow qemu-bridge-helper to attach taps to ``bridge`` (marker + ``allow`` line)."""
    conf.parent.mkdir(parents=True, exist_ok=True)
    text = conf.read_text() if conf.exists() else ""
    text = _without_ours(text, bridge)
    if text and not text.endswith("\n"):
        text += "\n"
    conf.write_text(text + f"{MARKER}\nallow {bridge}\n")
    conf.chmod(0o644)


def remove_acl(bridge: str, conf: Path = BRIDGE_CONF) -> None:
    """Remove our lines; remove the file (and /etc/qemu) when nothing else is left in them."""
    if not conf.exists():
        return
    text = _without_ours(conf.read_text(), bridge)
    if text.strip():
        conf.write_text(text)
        return
    conf.unlink()
    with contextlib.suppress(OSError):
        conf.parent.rmdir()  # only when empty


# --- bridge -----------------------------------------------------------------------------------

def create_bridge(bridge: str, address: str, prefix: int) -> None:
    if link_exists(bridge):  # left by a killed run: we hold the lock, so nobody uses it
        _ip("link", "del", bridge, check=False)
    _ip("link", "add", bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
    _ip("addr", "add", f"{address}/{prefix}", "dev", bridge)
    _ip("link", "set", bridge, "up")


def delete_bridge(bridge: str) -> None:
    if link_exists(bridge):
        _ip("link", "del", bridge, check=False)


def flush_neighbours(bridge: str) -> None:
    """Forget the previous guest's MAC (every guest gets the same address)."""
    _ip("neigh", "flush", "dev", bridge, check=False)


# --- iperf3 server ----------------------------------------------------------------------------

def _listening(port: int) -> bool:
    hex_port = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(hex_port) and fields[3] == "0A":
                return True
    return False


def start_server(address: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    iperf3 = shutil.which("iperf3")
    if iperf3 is None:
        raise BenchError("iperf3 is not installed on the host (dev/setup installs it)")
    if _listening(port):
        raise BenchError(f"TCP port {port} is already in use on this host")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [iperf3, "-s", "-B", address, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + 10
    while not _listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise BenchError(f"the host's iperf3 server did not start: {log.read_text()[-500:]}")
        time.sleep(0.05)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the whole environment ----------------------------------------------------------------------

@dataclass(frozen=True)
class Network:
    bridge: str = BRIDGE
    host_ip: str = HOST_IP
    guest_ip: str = GUEST_IP
    prefix: int = PREFIX
    port: int = PORT


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt (main thread only; elsewhere a no-op)."""
    try:
        old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def bench_network(net: Network, workdir: Path) -> Iterator[Network]:
    """Lock, bridge, ACL line and iperf3 server for the duration of the block."""
    reason = can_create_bridge()
    if reason is not None:
        raise BenchError(f"bench net cannot run here: {reason}")
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "a") as lock, signals_raise():
        fcntl.flock(lock, fcntl.LOCK_EX)
        server: subprocess.Popen[bytes] | None = None
        try:
            create_bridge(net.bridge, net.host_ip, net.prefix)
            add_acl(net.bridge)
            server = start_server(net.host_ip, net.port, workdir / "iperf3-server.log")
            yield net
        finally:
            # each step on its own: a failure in one must not keep the others from running
            if server is not None:
                stop_server(server)
            with contextlib.suppress(OSError, BenchError):
                remove_acl(net.bridge)
            with contextlib.suppress(BenchError):
                delete_bridge(net.bridge)
