"""Fixtures for the guest image kit tests: the kit (built once) and a QEMU boot helper."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvhvm.guest.report import END, ERROR, DeviceReport, parse_report

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = float(os.environ.get("PVHVM_BOOT_TIMEOUT", "180"))


@dataclass
class Boot:
    """The outcome of one guest boot."""

    report: DeviceReport
    seconds_to_report: float
    exited: bool
    log: str


def _qmp(path: Path, *commands: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        for command in ("qmp_capabilities", *commands):
            stream.write(json.dumps({"execute": command}).encode() + b"\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "return" in reply or "error" in reply:
                    break


BootFn = Callable[..., Boot]


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[BootFn]:
    """Boot QEMU (TCG) with extra arguments and wait for the device report.

    ``expect_exit``: the guest powers off by itself (pvhvm.poweroff=1); otherwise, after the
    report, ``system_powerdown`` is sent (the ACPI power button) and the guest must then exit.
    QEMU is killed in any case at the end.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def run(*args: str, name: str = "guest", expect_exit: bool = True,
            powerdown: bool = False) -> Boot:
        log_path = tmp_path / f"{name}.log"
        qmp_path = tmp_path / f"{name}.qmp"
        argv = [
            QEMU, "-accel", "tcg", "-nodefaults", "-m", "512", "-display", "none",
            "-serial", f"file:{log_path}", "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-no-reboot", *args,
        ]
        started = time.monotonic()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        processes.append(process)
        seconds: float | None = None
        deadline = started + BOOT_TIMEOUT
        log = ""
        while time.monotonic() < deadline:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
            if seconds is None and END in log:
                seconds = time.monotonic() - started
                if powerdown:
                    _qmp(qmp_path, "system_powerdown")
                elif not expect_exit:
                    break
            if process.poll() is not None or (seconds is None and ERROR in log):
                break
            time.sleep(0.2)
        exited = process.poll() is not None
        if exited:
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if seconds is None:
            output = process.stdout.read().decode(errors="replace") if exited and (
                process.stdout is not None) else ""
            pytest.fail(
                f"no device report after {time.monotonic() - started:.0f}s "
                f"(QEMU {'exited ' + str(process.returncode) if exited else 'running'}): "
                f"{output[-500:]}\n--- console ---\n{log[-3000:]}"
            )
        return Boot(parse_report(log), seconds, exited, log)

    try:
        yield run
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()
