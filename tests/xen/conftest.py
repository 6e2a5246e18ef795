"""Xen's own xl parsers as a test peer: tests/xen/xlpeer/xlparse.c built against libxlutil.

The fixture fetches Debian's libxen-dev (headers) and libxenmisc4.17 (libxlutil, libxenlight)
with ``apt-get download``, unpacks them with dpkg-deb into a cache, and compiles xlparse with
the host's gcc. Nothing is installed system-wide. It skips, saying why, only when the
packages cannot be downloaded or there is no C compiler.

``xl_native`` is Debian's whole xl 4.17 binary (xen-utils-4.17, unpacked beside them) run as
``xl -N create FILE`` under the LD_PRELOAD shim tests/xen/xlpeer/nohyp.c, which stands in for
the hypervisor and XenStore handles so that only xl's parse_config_data runs for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pvhvm.errors import PvhvmError
from pvhvm.guest.xenhost import build_xenhost
from pvhvm.hostfs import directory_lock
from tests.xen.host import XenHost, booted

SOURCE = Path(__file__).parent / "xlpeer" / "xlparse.c"
#: headers, libxlutil + libxenlight, and the libraries libxenlight links
PACKAGES = (
    "libxen-dev", "libxenmisc4.17", "libxentoollog1", "libyajl2", "libxenhypfs1",
    "libxengnttab1", "libxenevtchn1", "libxenforeignmemory1", "libxencall1",
    "libxendevicemodel1", "libxenstore4", "libxentoolcore1",
)
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pvhvm" / "xlpeer"
LIBDIR = Path("usr/lib/x86_64-linux-gnu")


@dataclass(frozen=True)
class XlParser:
    """Runs Xen's xl config and disk parsers."""

    binary: Path
    libdir: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.libdir)}
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=env, check=False, timeout=30)

    def disk(self, spec: str) -> dict[str, str] | None:
        """xl's reading of one disk spec, or None when xl refuses it."""
        proc = self.run("disk", spec)
        if proc.returncode not in (0, 1):  # 1 is xl refusing; anything else is a broken peer
            raise AssertionError(f"xlparse failed ({proc.returncode}): {proc.stderr}")
        if proc.returncode == 1:
            return None
        return dict(line.split("=", 1) for line in proc.stdout.splitlines())

    def rate(self, rate: str) -> tuple[int, int] | None:
        """(bytes per interval, interval in us) as xlu_vif_parse_rate reads ``rate``."""
        proc = self.run("rate", rate)
        if proc.returncode not in (0, 1):
            raise AssertionError(f"xlparse failed ({proc.returncode}): {proc.stderr}")
        if proc.returncode == 1:
            return None
        fields = dict(line.split("=", 1) for line in proc.stdout.splitlines())
        return int(fields["bytes_per_interval"]), int(fields["interval_usecs"])

    def file(self, path: Path, keys: list[str]) -> XlReading | None:
        """xl's reading of a whole config file, or None when xlu_cfg_readfile refuses it."""
        proc = self.run("file", str(path), *keys)
        if proc.returncode not in (0, 1):
            raise AssertionError(f"xlparse failed ({proc.returncode}): {proc.stderr}")
        if proc.returncode == 1:
            return None
        reading = XlReading(stderr=proc.stderr)
        for line in proc.stdout.splitlines():
            item = json.loads(line)
            if "key" in item:
                reading.keys[item["key"]] = item
            else:
                reading.disks.append(item)
        return reading


@dataclass
class XlReading:
    """What xlparse printed for a whole file: each key asked for, then each disk."""

    stderr: str
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    disks: list[dict[str, Any]] = field(default_factory=list)


def _build() -> XlParser:
    root = CACHE / "root"
    # One binary per version of the source: worktrees on other branches share the cache.
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"xlparse-{digest}"
    libdir = root / LIBDIR
    if not (root / LIBDIR / "libyajl.so.2").exists():
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        for package in PACKAGES:
            fetched = subprocess.run(["apt-get", "download", package], cwd=debs,
                                     capture_output=True, text=True, check=False)
            if fetched.returncode != 0:
                pytest.skip(f"apt-get download {package} failed: {fetched.stderr.strip()}")
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    if not binary.exists():
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            pytest.skip("no C compiler to build the xl parser peer")
        built = binary.with_name(f"{binary.name}.{os.getpid()}")
        subprocess.run(
            [compiler, "-O1", "-o", str(built), str(SOURCE), f"-I{root / 'usr/include'}",
             f"-L{libdir}", f"-Wl,-rpath-link,{libdir}", "-Wl,--allow-shlib-undefined",
             "-l:libxlutil.so.4.17", "-l:libxenlight.so.4.17"],
            check=True, capture_output=True,
        )
        os.replace(built, binary)  # never exec a half-written binary
    return XlParser(binary, libdir)


@pytest.fixture(scope="session")
def xl() -> XlParser:
    with directory_lock(CACHE):  # xdist workers share the cache: one builds, the others wait
        return _build()


#: the package with xl itself (/usr/lib/xen-4.17/bin/xl); its libraries are PACKAGES
XL_PACKAGE = "xen-utils-4.17"
XL_BINARY = Path("usr/lib/xen-4.17/bin/xl")
SHIM_SOURCE = Path(__file__).parent / "xlpeer" / "nohyp.c"


@dataclass(frozen=True)
class XlDryRun:
    """What ``xl -N create`` made of a file: libxl's domain config, or xl's refusal."""

    config: dict[str, Any] | None
    stderr: str


@dataclass(frozen=True)
class XlNative:
    """Debian's xl 4.17 with the hypervisor shimmed away (tests/xen/xlpeer/nohyp.c)."""

    binary: Path
    libdir: Path
    shim: Path

    def create_dry_run(self, path: Path) -> XlDryRun:
        """``xl -N create PATH``: libxl's domain config as xl builds it (before libxl's own
        defaults), or None and xl's message. A shim or xl crash is an AssertionError."""
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.libdir), "LD_PRELOAD": str(self.shim)}
        proc = subprocess.run([str(self.binary), "-N", "create", str(path.resolve())],
                              capture_output=True,
                              text=True, env=env, check=False, timeout=30)
        if proc.returncode == 0:
            return XlDryRun(json.loads(proc.stdout), proc.stderr)
        if proc.returncode in (1, 255) and "nohyp:" not in proc.stderr:  # xl's own refusal
            return XlDryRun(None, proc.stderr.strip())
        raise AssertionError(f"xl -N create {path} failed ({proc.returncode}): {proc.stderr}")


def _build_native() -> XlNative:
    parser = _build()  # the libraries and headers
    root = CACHE / "root"
    if not (root / XL_BINARY).exists():
        debs = CACHE / "debs"
        fetched = subprocess.run(["apt-get", "download", XL_PACKAGE], cwd=debs,
                                 capture_output=True, text=True, check=False)
        if fetched.returncode != 0:
            pytest.skip(f"apt-get download {XL_PACKAGE} failed: {fetched.stderr.strip()}")
        for deb in sorted(debs.glob(f"{XL_PACKAGE}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes()).hexdigest()[:12]
    shim = CACHE / f"nohyp-{digest}.so"
    if not shim.exists():
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            pytest.skip("no C compiler to build the xl shim")
        built = shim.with_name(f"{shim.name}.{os.getpid()}")
        subprocess.run([compiler, "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                        str(built), str(SHIM_SOURCE), f"-I{root / 'usr/include'}"],
                       check=True, capture_output=True)
        os.replace(built, shim)
    return XlNative(root / XL_BINARY, parser.libdir, shim)


@pytest.fixture(scope="session")
def xl_native() -> XlNative:
    with directory_lock(CACHE):
        return _build_native()


@pytest.fixture(scope="session")
def xen_host() -> Iterator[XenHost]:
    """One Xen host (tests/xen/host.py) for every test that asks for it: those tests are in the
    ``xenhost`` xdist group, so they run on one worker and share this boot. A build or boot
    failure fails them, saying why; nothing is skipped."""
    try:
        image = build_xenhost()
    except PvhvmError as err:
        pytest.fail(f"cannot build the Xen host: {err}")
    with booted(image) as host:
        yield host
