"""A private libvirtd for the tests: its own /etc, /run, /var/lib, /var/cache and /var/log
libvirt directories (bind mounts in a mount namespace of its own), so it shares nothing with
a libvirtd the host may run. There is no systemd here; libvirtd is started by hand (as
SPEC.md "libvirt on these machines" describes) and stopped by its pid.

Clients reach it at ``qemu+unix:///system?socket=<root>/run/libvirt-sock``.
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

LIBVIRT_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
#: each daemon is a host of its own to libvirt: its own host_uuid (migration refuses a
#: destination with the source's)
LIBVIRTD_CONF = (
    'auth_unix_rw = "none"\nauth_unix_ro = "none"\nunix_sock_rw_perms = "0700"\n'
    'host_uuid = "{host_uuid}"\n'
)
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
exec libvirtd -d -p "$0/libvirtd.pid" -f "$0/etc/libvirtd.conf"
"""


class PrivateLibvirtd:
    """One libvirtd in its own mount namespace, rooted at a fresh directory under /tmp."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pvl-", dir="/tmp"))
        self.pid: int | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}"

    def start(self, timeout: float = 30.0) -> None:
        for name in LIBVIRT_DIRS:
            (self.root / name).mkdir()
        (self.root / "etc" / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(host_uuid=uuid.uuid4()))
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        script = START.format(pairs=" ".join(f"{k}={v}" for k, v in LIBVIRT_DIRS.items()))
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(self.root)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        assert done.returncode == 0, f"libvirtd did not start: {done.stderr}"
        socket = self.root / "run" / "libvirt-sock"
        pid_file = self.root / "libvirtd.pid"
        deadline = time.monotonic() + timeout
        while not (socket.exists() and pid_file.exists()):
            assert time.monotonic() < deadline, "libvirtd made no socket"
            time.sleep(0.05)
        self.pid = int(pid_file.read_text().split()[0])
        self.virsh("version")

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
