"""A real second host for the tests: a network namespace with its own address and hostname.

``NetnsHost`` makes a network namespace joined to this host by a veth pair, each end with an
address of its own in a private /30 (the host end is the "source host", the namespace end the
second host), gives it its own hostname (a UTS namespace kept in a file) and its own pvhvm
state directory, and runs commands in it. ``start_sshd`` starts a real OpenSSH server inside
it, with its own host key and a freshly made client key, reached at the namespace's address
with ``ssh_argv()`` (or ``ssh_command``, one shell string as xl's ``migrate -s`` takes it).

``add_bridge`` gives it a Linux bridge (``xenbr0``, say: a host a Xen config's
``vif = ["bridge=xenbr0"]`` expects), and ``link`` joins two such hosts directly by a veth
pair of their own (a network between the two second hosts that this host is not on).

Leaving the ``with`` block (or ``close()``) stops everything it started, kills whatever still
runs in the namespace (``ip netns pids``), deletes the namespace and the veth pair and removes
its directory, whatever the test did. Namespaces left by a test run that was killed outright
(their pid is gone) are removed by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

#: the private range the pairs' /30s come from (10.200.0.0 - 10.203.255.255)
POOL = ipaddress.IPv4Network("10.200.0.0/14")
PREFIX = "pvh-"
LOCK = Path("/run/lock/pvhvm-hosts.lock")
SSHD = "/usr/sbin/sshd"
SSHD_CONFIG = """\
# sshd for a test's second host (tests/hosts.py); nothing here is the host's own sshd
Port {port}
ListenAddress {address}
HostKey {root}/ssh_host_ed25519_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# the keys live under /tmp, which is world-writable
StrictModes no
PrintMotd no
SetEnv {setenv}
Subsystem sftp /usr/lib/openssh/sftp-server
"""

_serial = itertools.count()


class HostError(RuntimeError):
    """The second host could not be made or a command in it failed to start."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        raise HostError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (``ip netns pids``)."""
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                          timeout=30, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def namespaces() -> list[str]:
    """The network namespaces ``ip netns`` knows."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def kill_namespace(name: str, grace: float = 5.0) -> list[int]:
    """SIGTERM every process in namespace ``name``, SIGKILL what is still there after
    ``grace`` seconds, then delete it; the pids that had to be killed."""
    killed = namespace_pids(name)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        pids = namespace_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _pid_alive(pid) and pid in namespace_pids(name)]
            time.sleep(0.05)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30,
                   check=False)
    return killed


def reap_stale() -> list[str]:
    """Remove namespaces (and their veths) that a test process now gone left behind."""
    removed = []
    for name in namespaces():
        parts = name.split("-")
        ours = len(parts) == 3 and name.startswith(PREFIX) and parts[1].isdigit()
        if ours and int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            kill_namespace(name, grace=1.0)
            subprocess.run(["ip", "link", "delete", f"vh{parts[1]}n{parts[2]}"],
                           capture_output=True, timeout=30, check=False)
            removed.append(name)
    return removed


def _networks_in_use() -> set[ipaddress.IPv4Network]:
    done = _ip("-o", "-4", "addr", "show")
    used = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.add(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return used


def _free_subnet(seed: int) -> ipaddress.IPv4Network:
    """A /30 of POOL no address of this host is in, starting at one derived from ``seed``."""
    used = _networks_in_use()
    subnets = POOL.num_addresses // 4
    for step in range(subnets):
        index = (seed + step) % subnets
        candidate = ipaddress.IPv4Network((int(POOL.network_address) + 4 * index, 30))
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise HostError(f"no free /30 left in {POOL}")


class NetnsHost:
    """A second host in a network namespace; use as a context manager."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.serial = next(_serial)
        self.name = f"{PREFIX}{os.getpid()}-{self.serial}"
        self.host_ifname = f"vh{os.getpid()}n{self.serial}"
        self.ns_ifname = f"vn{os.getpid()}n{self.serial}"
        self.hostname = f"pvhost{self.serial}"
        self.root = Path(tempfile.mkdtemp(prefix="pvn-", dir="/tmp"))
        self.state_dir = self.root / "state"
        self.uts = self.root / "uts"
        self.host_address = ""  #: this host's end of the link (the source host)
        self.address = ""  #: the second host's address
        self.network = ""
        self.extra_env = dict(env or {})
        self.sshd: subprocess.Popen[bytes] | None = None
        self.ssh_key: Path | None = None
        self.known_hosts: Path | None = None
        self._made_namespace = False
        self._links: list[str] = []  #: veths to other hosts, by their name here

    # -- setting up -------------------------------------------------------------------------
    def __enter__(self) -> NetnsHost:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Make the namespace, its veth pair and addresses, its hostname and state dir."""
        reap_stale()
        self.state_dir.mkdir()
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "a") as lock:
            # two test processes must not pick the same /30 between scanning and assigning
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = _free_subnet(os.getpid() * 4 + self.serial)
            host_ip, ns_ip = list(subnet.hosts())
            _ip("netns", "add", self.name)
            self._made_namespace = True
            _ip("link", "add", self.host_ifname, "type", "veth", "peer", "name", self.ns_ifname)
            _ip("link", "set", self.ns_ifname, "netns", self.name)
            _ip("addr", "add", f"{host_ip}/30", "dev", self.host_ifname)
            _ip("link", "set", self.host_ifname, "up")
        _ip("-n", self.name, "addr", "add", f"{ns_ip}/30", "dev", self.ns_ifname)
        _ip("-n", self.name, "link", "set", self.ns_ifname, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        self.host_address, self.address, self.network = str(host_ip), str(ns_ip), str(subnet)
        # its own hostname: a UTS namespace kept alive by a bind mount on a file
        self.uts.touch()
        done = subprocess.run(["unshare", f"--uts={self.uts}", "hostname", self.hostname],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise HostError(f"cannot give {self.name} a hostname: {done.stderr.strip()}")
        self._wait_link()

    def _wait_link(self, timeout: float = 10.0) -> None:
        """Until both ends of the veth pair have carrier (LOWER_UP)."""
        deadline = time.monotonic() + timeout
        while True:
            ends = [_ip("-o", "link", "show", "dev", self.host_ifname).stdout,
                    _ip("-n", self.name, "-o", "link", "show", "dev", self.ns_ifname).stdout]
            if all("LOWER_UP" in end for end in ends):
                return
            if time.monotonic() > deadline:
                raise HostError(f"the link to {self.name} has no carrier: {ends}")
            time.sleep(0.05)

    def add_bridge(self, name: str) -> None:
        """A Linux bridge ``name`` in the namespace, up (with no port: guests' taps join it)."""
        _ip("-n", self.name, "link", "add", name, "type", "bridge")
        _ip("-n", self.name, "link", "set", name, "up")

    def link(self, other: NetnsHost) -> tuple[str, str]:
        """Join this host and ``other`` by a veth pair between their namespaces, each end with
        an address in a /30 of its own; (this end's address, ``other``'s). Either host's close
        removes the pair."""
        ifname = f"vl{os.getpid()}n{self.serial}x{other.serial}"
        peer = f"vl{os.getpid()}n{other.serial}x{self.serial}"
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # the /30 is on no link of this host's: the scan keeps it from the hosts' own
            subnet = _free_subnet(os.getpid() * 4 + 2 * self.serial + other.serial + 1)
            _ip("link", "add", ifname, "type", "veth", "peer", "name", peer)
            try:
                _ip("link", "set", ifname, "netns", self.name)
                _ip("link", "set", peer, "netns", other.name)
            except HostError:
                subprocess.run(["ip", "link", "delete", ifname], capture_output=True,
                               timeout=30, check=False)
                raise
        self._links.append(ifname)
        other._links.append(peer)
        mine, theirs = (str(address) for address in subnet.hosts())
        for host, dev, address in ((self, ifname, mine), (other, peer, theirs)):
            _ip("-n", host.name, "addr", "add", f"{address}/30", "dev", dev)
            _ip("-n", host.name, "link", "set", dev, "up")
        return mine, theirs

    # -- running things in it -----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The second host's environment: its own pvhvm state, the host's built guests."""
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "PVHVM_STATE_DIR": str(self.state_dir),
                "XDG_CACHE_HOME": cache, **self.extra_env}

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run inside the namespace, under its hostname."""
        return ["ip", "netns", "exec", self.name, "nsenter", f"--uts={self.uts}", "--",
                *argv]

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run of ``argv`` inside the namespace, with this host's environment."""
        kw.setdefault("env", self.env())
        kw.setdefault("timeout", 120)
        kw.setdefault("check", False)
        return subprocess.run(self.argv(argv), **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen of ``argv`` inside the namespace, with this host's environment."""
        kw.setdefault("env", self.env())
        return subprocess.Popen(self.argv(argv), **kw)

    # -- its OpenSSH server -------------------------------------------------------------------
    def start_sshd(self, port: int = 22, timeout: float = 30.0) -> None:
        """A real sshd listening on the namespace's address, with its own host key; the
        client key made here is the only one it accepts (for root)."""
        if self.sshd is not None:
            return
        keys = self.root / "ssh"
        keys.mkdir(mode=0o700)
        host_key, client_key = self.root / "ssh_host_ed25519_key", keys / "id_ed25519"
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name,
                            "-f", str(key)], check=True, capture_output=True, timeout=60)
        (self.root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        host_public = Path(f"{host_key}.pub").read_text().split()
        self.known_hosts = keys / "known_hosts"
        self.known_hosts.write_text(f"{self.address} {host_public[0]} {host_public[1]}\n")
        self.ssh_key = client_key
        setenv = " ".join(f'"{key}={value}"' for key, value in self.env().items()
                          if key in ("PATH", "PVHVM_STATE_DIR", "XDG_CACHE_HOME", "PVHVM_HOSTD_LINGER")
                          or key in self.extra_env)
        config = self.root / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=port, address=self.address, root=self.root,
                                             setenv=setenv))
        # privilege separation directory, which Debian's init script would make
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = self.root / "sshd.log"
        checked = self.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode != 0:
            raise HostError(f"sshd refuses its config: {checked.stderr.strip()}")
        self.sshd = self.popen([SSHD, "-D", "-f", str(config), "-E", str(log)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run([*self.ssh_argv(port), "true"], capture_output=True,
                                   text=True, timeout=60, check=False)
            if probe.returncode == 0:
                return
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                raise HostError(f"sshd in {self.name} does not serve: {probe.stderr.strip()}"
                                f"\n{text[-2000:]}")
            time.sleep(0.1)

    def ssh_argv(self, port: int = 22) -> list[str]:
        """The ssh client's argv up to and including the destination ``root@ADDRESS``."""
        if self.ssh_key is None or self.known_hosts is None:
            raise HostError("start_sshd() first")
        return ["ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(port),
                f"root@{self.address}"]

    @property
    def ssh_command(self) -> str:
        """The ssh command without its destination, one shell string (xl migrate's ``-s``)."""
        return shlex.join(self.ssh_argv()[:-1])

    # -- tearing down -------------------------------------------------------------------------
    def close(self) -> list[int]:
        """Stop all it started and remove the namespace, veth and directory; the pids of
        processes that were still in the namespace besides its sshd."""
        leftovers: list[int] = []
        if self.sshd is not None:
            self.sshd.terminate()
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(timeout=10)
            self.sshd = None
        # the veth first: deleting one end removes both at once, where a deleted namespace's
        # end (and so the host's) goes only when the kernel's cleanup gets to it
        subprocess.run(["ip", "link", "delete", self.host_ifname], capture_output=True,
                       timeout=30, check=False)
        for link in self._links:  # a pair to another host: gone once either end is deleted
            subprocess.run(["ip", "-n", self.name, "link", "delete", link],
                           capture_output=True, timeout=30, check=False)
        self._links = []
        if self._made_namespace:
            leftovers = kill_namespace(self.name)
            self._made_namespace = False
        if self.uts.exists():
            subprocess.run(["umount", str(self.uts)], capture_output=True, timeout=30,
                           check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        return leftovers


def processes_mentioning(text: str) -> list[str]:
    """Pids whose command line mentions ``text``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(entry.name)
    return out
