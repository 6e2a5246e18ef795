"""A real Xen host in QEMU (TCG) for the tests: boot, reach over ssh, tear down.

SPEC.md, "A real Xen host inside QEMU": QEMU's multiboot loader boots Debian's Xen 4.17
(``-kernel xen``) with dom0's kernel and initrd as modules, each with its own command line
(``-initrd``, split at commas); ``-cpu qemu64,+svm,+npt`` gives HVM with HAP. dom0's root is
the image pvhvm.guest.xenhost builds, opened ``snapshot=on`` so every boot starts from the
built image and leaves it untouched. dom0 is reached over ssh through a QEMU user-networking
port forward on 127.0.0.1 with the image's own key pair and host key.

``python -m tests.xen.host`` (what ``dev/xenhost`` runs) boots one for a person: it prints the
ssh command and keeps the host up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pvhvm.guest.xenhost import DOM0_MEM_MIB, HOST_KEY_ALIAS, XenHostImage, build_xenhost

#: QEMU's memory: dom0's plus room for Xen itself and a small domU or two.
MACHINE_MEM_MIB = DOM0_MEM_MIB + 1024
#: `xl info` answered 20-75 s after QEMU started on 2 loaded cores (SPEC.md); room for worse.
READY_TIMEOUT = float(os.environ.get("PVHVM_XENHOST_TIMEOUT", "600"))


class XenHostError(AssertionError):
    """The Xen host did not boot or did not answer (an AssertionError: the test fails)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _plain(path: Path) -> str:
    """A path QEMU's -kernel/-initrd can take: -initrd splits at commas, a module's file name
    ends at its first space."""
    text = str(path)
    if "," in text or " " in text:
        raise XenHostError(f"{text}: QEMU's multiboot -initrd cannot take a path with ',' or ' '")
    return text


def qemu_argv(image: XenHostImage, port: int, serial_log: Path, vcpus: int = 2) -> list[str]:
    """The QEMU command line that boots the Xen host (SPEC.md)."""
    xen_cmdline = (f"console=com1 com1=115200,8n1 dom0_mem={DOM0_MEM_MIB}M,max:{DOM0_MEM_MIB}M"
                   " dom0_max_vcpus=2 noreboot")
    dom0_cmdline = "console=hvc0 earlyprintk=xen root=/dev/vda rw"
    modules = f"{_plain(image.kernel)} {dom0_cmdline},{_plain(image.initrd)}"
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+svm,+npt",
        "-smp", str(vcpus), "-m", str(MACHINE_MEM_MIB),
        "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{serial_log}",
        "-kernel", _plain(image.hypervisor), "-append", xen_cmdline, "-initrd", modules,
        "-drive", f"file={_plain(image.rootfs)},if=virtio,format=raw,snapshot=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0",
    ]


@dataclass
class XenHost:
    """A booted Xen host: ``ssh()`` runs a command in dom0 as root."""

    image: XenHostImage
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_after: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def ssh_argv(self) -> list[str]:
        return [
            "ssh", "-p", str(self.port), "-i", str(self.image.ssh_key),
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
            "-o", "IdentitiesOnly=yes", "-o", f"HostKeyAlias={HOST_KEY_ALIAS}",
            "-o", f"UserKnownHostsFile={self.image.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=15",
            # one connection per boot: an ssh handshake costs seconds of dom0's TCG time
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.workdir}/ssh-control",
            "-o", "ControlPersist=yes", "root@127.0.0.1",
        ]

    def ssh(self, command: str, *, input: str | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (a shell command line) in dom0."""
        proc = subprocess.run([*self.ssh_argv(), command], input=input, capture_output=True,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise XenHostError(f"dom0: {command!r} exited {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def put(self, text: str, path: str, mode: str = "0644") -> None:
        """Write ``text`` to ``path`` in dom0."""
        quoted = shlex.quote(path)
        self.ssh(f"cat > {quoted} && chmod {mode} {quoted}", input=text)

    def start(self) -> None:
        self.serial_log.write_bytes(b"")
        for _ in range(5):
            self.port = free_port()
            self.started = time.monotonic()
            with open(self.workdir / "qemu.stderr", "wb") as stderr:
                self.process = subprocess.Popen(
                    qemu_argv(self.image, self.port, self.serial_log),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True,
                )
            time.sleep(1)
            if self.process.poll() is None:
                return
            error = (self.workdir / "qemu.stderr").read_text(errors="replace")
            if "hostfwd" not in error and "Could not set up host forwarding" not in error:
                raise XenHostError(f"QEMU exited at once: {error.strip()}")
        raise XenHostError("no free port for the Xen host's ssh forward")

    def tail(self, lines: int = 25) -> str:
        text = self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until ``xl info`` answers in dom0 (Xen booted, dom0 up, xenstored running)."""
        deadline = self.started + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise XenHostError(f"the Xen host's QEMU exited ({self.process.returncode}) "
                                   f"before xl info answered; serial console:\n{self.tail()}")
            try:
                proc = self.ssh("xl info", timeout=60, check=False)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
                continue
            if proc.returncode == 0 and "xen_version" in proc.stdout:
                self.ready_after = time.monotonic() - self.started
                return
            last = (proc.stderr or proc.stdout).strip()
            time.sleep(3)
        raise XenHostError(f"xl info did not answer within {timeout:.0f} s (last: {last}); "
                           f"serial console:\n{self.tail()}")

    def stop(self) -> None:
        """End the ssh connection and QEMU (its disk is a snapshot: nothing in dom0 is worth
        a clean shutdown)."""
        if self.process is None:
            return
        if (self.workdir / "ssh-control").exists():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run([*self.ssh_argv()[:-1], "-O", "exit", "root@127.0.0.1"],
                               capture_output=True, timeout=20, check=False)
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 30)):
            if self.process.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
        self.process = None


@contextlib.contextmanager
def booted(image: XenHostImage, workdir: Path | None = None) -> Iterator[XenHost]:
    """A Xen host booted from ``image`` and ready (``xl info``); stopped and its work
    directory removed on exit, whatever happened."""
    own = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="pvhvm-xenhost-")) if own else workdir
    assert directory is not None
    host = XenHost(image=image, workdir=directory)
    try:
        host.start()
        host.wait_ready()
        yield host
    finally:
        host.stop()
        if own:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    """Build (if needed) and boot a Xen host for a person; Ctrl-C (or SIGTERM) stops it."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    image = build_xenhost(progress=lambda message: print(message, file=sys.stderr))
    print(f"booting the Xen host from {image.directory} (TCG: a minute or two)...",
          file=sys.stderr)
    try:
        with booted(image) as host:
            print(f"ready after {host.ready_after:.0f} s; log in with:\n  "
                  + shlex.join(host.ssh_argv()), file=sys.stderr)
            print(f"serial console log: {host.serial_log}\nCtrl-C stops it.", file=sys.stderr)
            while host.process is not None and host.process.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the Xen host", file=sys.stderr)


if __name__ == "__main__":
    main()
