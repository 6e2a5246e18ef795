"""End-to-end fixtures: the guest image kit, a private state directory, the pvhvm CLI."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvhvm.guest.kit import Kit
from pvhvm.guest.report import END, DeviceReport, parse_report
from tests import jsonout

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BOOT_TIMEOUT = float(os.environ.get("PVHVM_BOOT_TIMEOUT", "240"))


@pytest.fixture
def imagedir(kit: Kit, tmp_path: Path) -> Path:
    """A private copy of the kit's images (guests write to their disks), plus a data disk."""
    directory = tmp_path / "images"
    directory.mkdir()
    for source in (kit.vmlinuz, kit.initramfs):
        os.symlink(source, directory / source.name)
    for source in (kit.rootfs, kit.bootdisk):
        subprocess.run(
            ["cp", "--sparse=always", "--reflink=auto", str(source), str(directory / source.name)],
            check=True,
        )
    with open(directory / "data.img", "wb") as data:
        data.truncate(16 << 20)
    return directory


@pytest.fixture(scope="session")
def state_root() -> Iterator[Path]:
    """A short private state directory (Unix socket paths must stay under 108 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="pvs-", dir="/tmp"))
    yield root
    deadline = time.monotonic() + 15  # the host supervisor lingers a moment after its last domain
    while _supervisors(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = _qemu_processes(root) + _supervisors(root)
    for pid in leftovers:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    records = [str(p) for p in (root / "domains").glob("*")] if (root / "domains").exists() else []
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"QEMU or supervisor processes left behind: {leftovers}"
    assert not records, f"domain directories left behind: {records}"


def _supervisors(root: Path) -> list[int]:
    return _processes(root, b"pvhvm.runtime.hostd")


def _qemu_processes(root: Path) -> list[int]:
    return _processes(root, b"qemu-system")


def _processes(root: Path, program: bytes) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if program in cmdline and str(root).encode() in cmdline:
            out.append(int(proc.name))
    return out


@dataclass
class Pvhvm:
    """Runs the real pvhvm CLI in a subprocess with a private state directory."""

    state: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PVHVM_STATE_DIR": str(self.state)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "pvhvm", *args], capture_output=True, text=True,
            env=self.env(), timeout=timeout, check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"pvhvm {' '.join(args)} failed: {proc.stderr}")
        return proc

    def console_log(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.console.log"

    def wait_report(self, name: str, timeout: float = BOOT_TIMEOUT) -> DeviceReport:
        log = self.console_log(name)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if END in text:
                return parse_report(text)
            if not (self.state / "domains" / name).exists():
                break
            time.sleep(0.25)
        raise AssertionError(f"no device report from {name}:\n{text[-3000:]}")

    def leftovers(self, name: str) -> list[str]:
        """What a domain called ``name`` still has: directory, sockets, processes."""
        found = [str(p) for p in (self.state / "domains").glob(f"{name}*")]
        found += [f"pid {pid}" for pid in _qemu_processes(self.state)
                  if f"guest={name}," in " ".join(_cmdline(pid))]
        return found


def console_shell(argv: list[str], env: dict[str, str], name: str, command: str,
                  timeout: float = 60) -> str:
    """Run ``command`` in the guest's shell over ``ARGV console NAME`` (the pvhvm CLI, here or
    on another host); its output, the echoed command included."""
    number = random.randrange(10_000, 90_000)
    proc = subprocess.Popen([*argv, "console", name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    marker = f"done-{number + 1}"
    proc.stdin.write(f"\n{command}; echo done-$(({number}+1))\n".encode())
    proc.stdin.flush()
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen and time.monotonic() < deadline:
        seen += proc.stdout.read() or b""
        time.sleep(0.05)
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0
    text = seen.decode(errors="replace")
    assert marker in text, text[-800:]
    return text


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.fixture
def pvhvm(state_root: Path) -> Pvhvm:
    return Pvhvm(state_root)


@pytest.fixture
def domains(pvhvm: Pvhvm) -> Iterator[list[str]]:
    """Names of domains a test created; destroyed at the end whatever happened, each leaving
    nothing behind."""
    names: list[str] = []
    yield names
    for name in names:
        pvhvm.run("destroy", name, check=False)
        assert not pvhvm.leftovers(name), pvhvm.leftovers(name)


@pytest.fixture
def domain(domains: list[str], imagedir: Path) -> list[str]:
    """:func:`domains` for tests that boot the guest kit (its images built first)."""
    return domains


def json_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    document = jsonout.result(proc.stdout)
    assert isinstance(document, dict)
    return document
