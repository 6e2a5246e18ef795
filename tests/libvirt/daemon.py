"""A private libvirtd for the tests: its own /etc, /run, /var/lib, /var/cache and /var/log
libvirt directories (bind mounts in a mount namespace of its own), so it shares nothing with
a libvirtd the host may run. There is no systemd here; libvirtd is started by hand (as
SPEC.md "libvirt on these machines" describes) and stopped by its pid.

Clients reach it at ``qemu+unix:///system?socket=<root>/run/libvirt-sock``. Given a
:class:`tests.hosts.NetnsHost`, it runs inside that host's network namespace (and hostname)
instead, as that second host's libvirtd: it also listens on TCP on the namespace's address,
unauthenticated and unencrypted (``qemu+tcp://ADDRESS/system``, what a test network allows and
a real one would not), and its QEMU takes incoming migrations on that address, which is also
the one it names to a migration's source (qemu.conf's ``migration_address`` and
``migration_host``), so a migration to it needs no ``--migrate-uri``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from pvhvm.runtime.state import pid_alive, pid_cmdline
from tests.hosts import NetnsHost

LIBVIRT_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
#: each daemon is a host of its own to libvirt: its own host_uuid (migration refuses a
#: destination with the source's)
LIBVIRTD_CONF = (
    'auth_unix_rw = "none"\nauth_unix_ro = "none"\nunix_sock_rw_perms = "0700"\n'
    'host_uuid = "{host_uuid}"\n'
)
#: a daemon in a network namespace: libvirtd --listen on its address, no TLS, no auth
LIBVIRTD_TCP_CONF = (
    'listen_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\nlisten_addr = "{address}"\n'
    'tcp_port = "{port}"\n'
)
#: its QEMU's incoming migrations: listened for on, and named to the source as, that address
QEMU_MIGRATION_CONF = 'migration_address = "{address}"\nmigration_host = "{address}"\n'
TCP_PORT = 16509
#: root runs QEMU; libvirt must not chown images or kernels, nor want virtlogd
QEMU_CONF = (
    'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\n'
    'stdio_handler = "file"\n'
)
START = """set -e
for pair in {pairs}; do
  mkdir -p "${{pair#*=}}"
  mount --bind "$0/${{pair%%=*}}" "${{pair#*=}}"
done
exec libvirtd -d -p "$0/libvirtd.pid" -f "$0/etc/libvirtd.conf" {listen}
"""


class PrivateLibvirtd:
    """One libvirtd in its own mount namespace, rooted at a fresh directory under /tmp; in
    ``host``'s network namespace, listening on TCP there too, when one is given."""

    def __init__(self, host: NetnsHost | None = None,
                 migration_address: str | None = None) -> None:
        """``migration_address``: where its QEMU takes migrations (by default the host's
        address; another of the host's addresses for a migration network of its own)."""
        self.root = Path(tempfile.mkdtemp(prefix="pvl-", dir="/tmp"))
        self.pid: int | None = None
        self.host = host
        self.migration_address = migration_address

    @property
    def unix_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    @property
    def tcp_uri(self) -> str:
        """``qemu+tcp://ADDRESS/system``: the daemon of a second host, as a client elsewhere
        reaches it (only for a daemon in a NetnsHost)."""
        assert self.host is not None, "only a daemon in a NetnsHost listens on TCP"
        return f"qemu+tcp://{self.host.address}/system"

    @property
    def uri(self) -> str:
        """How the tests reach it: over TCP for a second host's daemon, else its socket."""
        return self.tcp_uri if self.host is not None else self.unix_uri

    def start(self, timeout: float = 30.0) -> None:
        for name in LIBVIRT_DIRS:
            (self.root / name).mkdir()
        libvirtd_conf = LIBVIRTD_CONF.format(host_uuid=uuid.uuid4())
        qemu_conf = QEMU_CONF
        if self.host is not None:
            libvirtd_conf += LIBVIRTD_TCP_CONF.format(address=self.host.address, port=TCP_PORT)
            assert self.host.address, "start the NetnsHost before its libvirtd"
            qemu_conf += QEMU_MIGRATION_CONF.format(
                address=self.migration_address or self.host.address)
        (self.root / "etc" / "libvirtd.conf").write_text(libvirtd_conf)
        (self.root / "etc" / "qemu.conf").write_text(qemu_conf)
        script = START.format(pairs=" ".join(f"{k}={v}" for k, v in LIBVIRT_DIRS.items()),
                              listen="--listen" if self.host is not None else "")
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(self.root)]
        if self.host is not None:
            argv = self.host.argv(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
        assert done.returncode == 0, f"libvirtd did not start: {done.stderr}"
        socket = self.root / "run" / "libvirt-sock"
        pid_file = self.root / "libvirtd.pid"
        deadline = time.monotonic() + timeout
        while not (socket.exists() and pid_file.exists()):
            assert time.monotonic() < deadline, "libvirtd made no socket"
            time.sleep(0.05)
        self.pid = int(pid_file.read_text().split()[0])
        while True:  # its TCP listener may come up after the socket
            probe = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                                   text=True, timeout=60, check=False)
            if probe.returncode == 0:
                return
            assert time.monotonic() < deadline, f"libvirtd does not serve: {probe.stderr}"
            time.sleep(0.1)

    def virsh(self, *args: str) -> str:
        done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"
        return done.stdout

    def qemu_pids(self, settle: float = 5.0) -> list[int]:
        """QEMU processes this daemon started that still run (by its pid files), once
        ``settle`` seconds have let any that are exiting go (PID 1 reaps them late here)."""
        deadline = time.monotonic() + settle
        while True:
            out = []
            for pid_file in (self.root / "run" / "qemu").glob("*.pid"):
                with contextlib.suppress(OSError, ValueError):
                    pid = int(pid_file.read_text().split()[0])
                    program = (pid_cmdline(pid) or [""])[0]
                    if pid_alive(pid) and "qemu-system" in program:  # not driver.pid
                        out.append(pid)
            if not out or time.monotonic() > deadline:
                return out
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """Destroy what still runs, stop the daemon, remove its root; what was left over."""
        leftovers = []
        if self.pid is not None:
            names = self.virsh("list", "--name").split()
            leftovers = [f"domain {name}" for name in names]
            for name in names:
                subprocess.run(["virsh", "-c", self.uri, "destroy", name], capture_output=True,
                               timeout=60, check=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
        return leftovers
