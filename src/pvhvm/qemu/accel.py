"""Choosing the accelerator: KVM only where it has been proven to run a guest, else TCG.

/dev/kvm can exist where KVM cannot run a guest: nested KVM here runs firmware and real-mode
code but hangs when a Linux kernel starts. So "auto" proves KVM in two steps: a 512-byte boot
sector that writes to QEMU's isa-debug-exit port must make QEMU exit at once, and then the
guest's own kernel, booted with no root and ``panic=-1 -no-reboot``, must reach its panic
within seconds. Without a kernel to try, KVM is unproven and TCG is used. The answer is cached
per boot of the host (keyed by /proc/sys/kernel/random/boot_id), in the user's cache directory
(:func:`probe_cache_dir`), so every state directory of the host shares it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pvhvm.hostfs import cache_home
from pvhvm.qemu.argv import Accel
from pvhvm.qemu.opts import option_string

log = logging.getLogger(__name__)

#: mov al, 0x31; out 0xf4, al; cli; hlt; jmp $-2 — QEMU exits with (0x31 << 1) | 1 = 99
_BOOT_CODE = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xFA, 0xF4, 0xEB, 0xFD])
_PROBE_EXIT = 99
PROBE_TIMEOUT = 10.0
#: a kernel that KVM can run panics for want of a root within a second or two; one that
#: nested KVM hangs never does
KERNEL_PROBE_TIMEOUT = 8.0


def boot_sector() -> bytes:
    """A boot sector that makes QEMU exit with code 99 as soon as the firmware runs it."""
    return _BOOT_CODE + bytes(510 - len(_BOOT_CODE)) + b"\x55\xaa"


def probe(accel: Accel, qemu_binary: str = "qemu-system-x86_64",
          timeout: float = PROBE_TIMEOUT) -> bool:
    """True when ``accel`` boots the probe sector to completion within ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="pvhvm-probe-") as tmp:
        image = Path(tmp) / "probe.img"
        image.write_bytes(boot_sector())
        argv = [
            qemu_binary, "-accel", accel.value, "-M", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "16",
            # $TMPDIR may hold a comma: the path goes through QemuOpts escaping
            "-drive", option_string([("file", str(image)), ("format", "raw"), ("if", "ide")]),
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.info("accelerator %s did not finish the probe in %.0fs", accel.value, timeout)
            return False
        except OSError as err:
            log.info("cannot run %s: %s", qemu_binary, err)
            return False
        return proc.returncode == _PROBE_EXIT


def probe_kernel(kernel: Path, accel: Accel, qemu_binary: str = "qemu-system-x86_64",
                 timeout: float = KERNEL_PROBE_TIMEOUT) -> bool:
    """True when ``kernel`` boots far enough under ``accel`` to panic for want of a root."""
    with tempfile.TemporaryDirectory(prefix="pvhvm-probe-") as tmp:
        console = Path(tmp) / "console"
        argv = [
            qemu_binary, "-accel", accel.value, "-M", "pc", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "128", "-no-reboot", "-cpu",
            "host" if accel is Accel.KVM else "max", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 root=/dev/pvhvm-probe-none",
            "-serial", f"file:{console}",
        ]
        try:
            subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            log.info("kernel did not reach its panic under %s in %.0fs", accel.value, timeout)
            return False
        except OSError:
            return False
        try:
            text = console.read_text(errors="replace")
        except OSError:
            return False
        return "Kernel panic" in text


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_cache_dir() -> Path:
    """Where the probe's answer is kept: pvhvm's per-user cache (``~/.cache/pvhvm``)."""
    return cache_home()


def choose_accel(
    wanted: str, cache_dir: Path | None = None, qemu_binary: str = "qemu-system-x86_64",
    kernel: Path | None = None, probe_allowed: bool = True,
    notify: Callable[[str], None] | None = None,
) -> Accel:
    """``kvm`` or ``tcg`` as asked; ``auto``: KVM if /dev/kvm is usable and proven, else TCG.

    With ``probe_allowed`` false (a dry run), only a cached answer can give KVM. ``notify``
    hears, before a probe starts, what it does and how long it may take (a probe runs once
    per boot of the host, whatever the kernel).
    """
    if wanted != "auto":
        return Accel(wanted)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or kernel is None:
        return Accel.TCG
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"accel-probe-{_boot_id()}"
        try:
            return Accel(cache.read_text().strip())
        except (OSError, ValueError):
            pass
    if not probe_allowed:
        return Accel.TCG
    if notify is not None:
        notify(f"proving KVM before using it (a boot sector, then this kernel; at most "
               f"{PROBE_TIMEOUT + KERNEL_PROBE_TIMEOUT:.0f} s, once per host boot; "
               "--accel tcg or --accel kvm skips it)")
    proven = probe(Accel.KVM, qemu_binary) and probe_kernel(kernel, Accel.KVM, qemu_binary)
    result = Accel.KVM if proven else Accel.TCG
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(result.value + "\n")
        except OSError:
            pass
    return result
