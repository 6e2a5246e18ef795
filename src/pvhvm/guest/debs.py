"""Debian packages for the kit: resolve, download once into a cache, unpack without installing.

``apt-get download`` fetches into the current directory, so it runs in a temporary directory and
the result is moved into the cache (``DIR/debs``); a package already in the cache is never
fetched again, so a rebuild is offline. ``dpkg-deb -x`` unpacks a package into any directory
without root and without running maintainer scripts.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import GuestImageError

log = logging.getLogger(__name__)

KERNEL_METAPACKAGE = "linux-image-amd64"
_KERNEL_RE = re.compile(r"^linux-image-[0-9][^ ]*-amd64$")


@dataclass(frozen=True)
class Deb:
    """A downloaded package file and what its control file says."""

    package: str
    version: str
    path: Path


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a host tool; a failure becomes a :class:`GuestImageError` with its output."""
    log.debug("run %s", argv)
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, check=False, capture_output=True, text=True,
        )
    except OSError as err:
        raise GuestImageError(f"cannot run {argv[0]}: {err}") from err
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise GuestImageError(
            f"{' '.join(argv)} failed (exit status {done.returncode}): " + " | ".join(output)
        )
    return done.stdout


def require_tool(name: str, package: str) -> str:
    """The path of a host tool, or an error that says which package provides it."""
    path = shutil.which(name)
    if path is None:
        raise GuestImageError(f"host tool {name!r} not found; install the {package} package")
    return path


def parse_depends(output: str) -> list[str]:
    """Package names from ``apt-cache depends`` output (Depends lines only)."""
    names = []
    for line in output.splitlines():
        key, sep, value = line.strip().lstrip("|").partition(":")
        if sep and key.strip() == "Depends":
            names.append(value.strip().strip("<>"))
    return names


def kernel_package_from_depends(output: str) -> str:
    """The real kernel package (``linux-image-6.1.0-NN-amd64``) the metapackage depends on."""
    for name in parse_depends(output):
        if _KERNEL_RE.match(name):
            return name
    raise GuestImageError(f"{KERNEL_METAPACKAGE} depends on no linux-image-*-amd64 package")


def resolve_kernel_package(cache_dir: Path) -> str:
    """Resolve ``linux-image-amd64`` with ``apt-cache depends``; offline, use the cached one."""
    try:
        output = run(["apt-cache", "depends", KERNEL_METAPACKAGE])
        return kernel_package_from_depends(output)
    except GuestImageError:
        cached = sorted(
            deb.package for deb in cached_debs(cache_dir) if _KERNEL_RE.match(deb.package)
        )
        if cached:
            return cached[-1]
        raise


def control_fields(path: Path) -> Deb:
    out = run(["dpkg-deb", "-f", str(path), "Package", "Version"])
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in out.splitlines())
    )
    if "Package" not in fields or "Version" not in fields:
        raise GuestImageError(f"{path}: not a Debian package")
    return Deb(package=fields["Package"], version=fields["Version"], path=path)


def cached_debs(cache_dir: Path) -> list[Deb]:
    if not cache_dir.is_dir():
        return []
    debs = []
    for path in sorted(cache_dir.glob("*.deb")):
        try:
            debs.append(control_fields(path))
        except GuestImageError as err:
            log.warning("ignoring %s: %s", path, err)
    return debs


def fetch(packages: list[str], cache_dir: Path) -> dict[str, Deb]:
    """Each package's .deb, from the cache or fetched with ``apt-get download`` into it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    have = {deb.package: deb for deb in cached_debs(cache_dir)}
    missing = [p for p in packages if p not in have]
    if missing:
        require_tool("apt-get", "apt")
        with tempfile.TemporaryDirectory(prefix="pvhvm-debs-") as tmp:
            run(["apt-get", "download", *missing], cwd=Path(tmp))
            for path in sorted(Path(tmp).glob("*.deb")):
                target = cache_dir / path.name
                shutil.move(str(path), target)
                deb = control_fields(target)
                have[deb.package] = deb
    absent = [p for p in packages if p not in have]
    if absent:
        raise GuestImageError(f"apt-get download did not produce: {', '.join(absent)}")
    return {p: have[p] for p in packages}


def unpack(deb: Deb, dest: Path) -> None:
    """Unpack a package's files into ``dest`` (no scripts run, nothing installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb.path), str(dest)])
