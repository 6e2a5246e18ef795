"""The kit's optional benchmark extra: Debian's fio and the shared libraries it links.

``build_bench_extra(KIT)`` writes ``KIT/bench/bench.cpio``, an *uncompressed* newc archive::

    bench/init          the rdinit program (files/bench-init): load storage drivers, run the
                        fio jobs named in bench/run.env on the first disk, print each job's JSON
                        between markers on the console, power off
    bench/fio           /usr/bin/fio from the fio package
    bench/lib/<soname>  every library fio needs, transitively (readelf DT_NEEDED)
    lib64/ld-linux-x86-64.so.2

The default kit stays small: nothing here touches its outputs. A benchmark guest boots with
``-initrd`` = the kit's ``initramfs.cpio.gz`` + ``bench.cpio`` + a small per-run archive (the
job files and ``bench/run.env``) and ``rdinit=/bench/init``: Linux unpacks concatenated
archives in order (``Documentation/driver-api/early-userspace/buffer-format.rst``). The archive
is left uncompressed because a TCG guest decompresses slowly while QEMU copies bytes fast.

Libraries are found the way the brief of issue 6 asks: ``apt-get download`` fio and libc6,
``dpkg-deb -x`` them, then repeatedly read DT_NEEDED with ``readelf -d`` and look each soname up
in the unpacked trees; a soname found nowhere is mapped to its package with ``dpkg -S`` (fio is
installed on the host by dev/setup), that package is fetched and unpacked, and so on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import GuestImageError
from pvhvm.guest import debs, initramfs, rootfs
from pvhvm.guest.kit import Progress, sha256_file

BENCH_RECIPE_VERSION = 1
BENCH_DIR = "bench"
ARCHIVE = "bench.cpio"
MANIFEST = "manifest.json"
BASE_PACKAGES = ("fio", "libc6")
INTERPRETER = "lib64/ld-linux-x86-64.so.2"
#: where sonames live in Debian's unpacked trees (amd64, usrmerge or not)
LIBRARY_DIRS = (
    "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib",
)
_NEEDED_RE = re.compile(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]")
_RUNPATH_RE = re.compile(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]")
MAX_ROUNDS = 30


@dataclass(frozen=True)
class BenchExtra:
    """The paths of a built benchmark extra."""

    directory: Path

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST


def recipe_digest() -> str:
    digest = hashlib.sha256(repr((BENCH_RECIPE_VERSION, BASE_PACKAGES)).encode())
    digest.update(rootfs.guest_file("bench-init"))
    return digest.hexdigest()


def is_built(extra: BenchExtra) -> bool:
    try:
        manifest = json.loads(extra.manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("recipe") == recipe_digest()
        and extra.archive.is_file()
        and extra.archive.stat().st_size == manifest.get("size")
    )


def parse_needed(readelf_output: str) -> tuple[list[str], list[str]]:
    """(DT_NEEDED sonames, RUNPATH/RPATH entries) from ``readelf -d`` output."""
    needed = _NEEDED_RE.findall(readelf_output)
    runpaths = [p for entry in _RUNPATH_RE.findall(readelf_output) for p in entry.split(":")]
    return needed, runpaths


def parse_dpkg_search(output: str) -> list[str]:
    """Package names from ``dpkg -S`` output (``libaio1:amd64: /usr/lib/...``)."""
    names = []
    for line in output.splitlines():
        owner, sep, _ = line.partition(": ")
        if not sep or "diversion" in owner:
            continue
        for name in owner.split(","):
            name = name.strip().split(":")[0]
            if name and name not in names:
                names.append(name)
    return names


def _find_soname(soname: str, unpacked: Path, runpaths: list[str]) -> Path | None:
    candidates = [*LIBRARY_DIRS, *(p.lstrip("/") for p in runpaths if not p.startswith("$"))]
    for directory in candidates:
        path = unpacked / directory / soname
        if path.exists():
            return path
    return None


def build_bench_extra(
    kit_directory: Path, *, force: bool = False, progress: Progress | None = None,
) -> BenchExtra:
    """Build ``KIT/bench/bench.cpio`` (a no-op when it is up to date)."""
    say = progress or (lambda message: None)
    extra = BenchExtra(kit_directory.resolve() / BENCH_DIR)
    if not force and is_built(extra):
        say("fio extra is up to date")
        return extra
    extra.directory.mkdir(parents=True, exist_ok=True)
    with open(extra.directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builders (test workers) wait
        if not force and is_built(extra):
            return extra
        _build(extra, kit_directory, say)
    say(f"fio extra built: {extra.archive}")
    return extra


def _build(extra: BenchExtra, kit_directory: Path, say: Progress) -> None:
    cache = kit_directory.resolve() / "debs"
    work = extra.directory / ".build"
    shutil.rmtree(work, ignore_errors=True)
    try:
        unpacked = work / "unpacked"
        say("fetching fio and libc6")
        fetched = dict(debs.fetch(list(BASE_PACKAGES), cache))
        for deb in fetched.values():
            debs.unpack(deb, unpacked)
        fio = unpacked / "usr" / "bin" / "fio"
        if not fio.is_file():
            raise GuestImageError("the fio package has no usr/bin/fio")
        libraries = _closure(fio, unpacked, cache, fetched, say)
        say(f"staging fio with {len(libraries)} libraries")
        stage = work / "stage"
        rootfs.write(stage / "bench" / "init", rootfs.guest_file("bench-init"), 0o755)
        rootfs.write(stage / "bench" / "fio", fio.read_bytes(), 0o755)
        for soname, path in sorted(libraries.items()):
            rootfs.write(stage / "bench" / "lib" / soname, path.resolve().read_bytes(), 0o755)
        interpreter = unpacked / INTERPRETER
        if not interpreter.exists():
            interpreter = unpacked / "lib" / "x86_64-linux-gnu" / "ld-linux-x86-64.so.2"
        if not interpreter.exists():
            raise GuestImageError("libc6 has no ld-linux-x86-64.so.2")
        rootfs.write(stage / INTERPRETER, interpreter.resolve().read_bytes(), 0o755)
        say("writing bench.cpio")
        archive = initramfs.cpio_newc(initramfs.tree_entries(stage))
        tmp = extra.directory / (ARCHIVE + ".tmp")
        tmp.write_bytes(archive)
        with contextlib.suppress(FileNotFoundError):
            extra.manifest_path.unlink()
        os.replace(tmp, extra.archive)
        manifest = {
            "recipe": recipe_digest(),
            "size": extra.archive.stat().st_size,
            "sha256": sha256_file(extra.archive),
            "packages": {name: deb.version for name, deb in sorted(fetched.items())},
            "libraries": sorted(libraries),
        }
        extra.manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _closure(
    binary: Path, unpacked: Path, cache: Path, fetched: dict[str, debs.Deb], say: Progress,
) -> dict[str, Path]:
    """Resolve DT_NEEDED transitively, fetching the packages of missing sonames."""
    readelf = debs.require_tool("readelf", "binutils")
    found: dict[str, Path] = {}
    pending = [binary]
    seen: set[Path] = set()
    for _ in range(MAX_ROUNDS):
        missing: set[str] = set()
        while pending:
            elf = pending.pop()
            if elf in seen:
                continue
            seen.add(elf)
            needed, runpaths = parse_needed(debs.run([readelf, "-d", str(elf)]))
            for soname in needed:
                if soname in found:
                    continue
                path = _find_soname(soname, unpacked, runpaths)
                if path is None:
                    missing.add(soname)
                    continue
                found[soname] = path
                pending.append(path.resolve())
        if not missing:
            return found
        packages: list[str] = []
        for soname in sorted(missing):
            try:
                owners = parse_dpkg_search(debs.run(["dpkg", "-S", f"*/{soname}"]))
            except GuestImageError as err:
                raise GuestImageError(
                    f"no package provides {soname} on this host (install fio: dev/setup)"
                ) from err
            packages += [p for p in owners if p not in fetched and p not in packages]
        if not packages:
            raise GuestImageError(f"cannot find {', '.join(sorted(missing))} in fio's packages")
        say(f"fetching {len(packages)} library packages")
        for name, deb in debs.fetch(packages, cache).items():
            fetched[name] = deb
            debs.unpack(deb, unpacked)
        # sonames that were missing are looked up again from the ELF files that need them
        pending = list(seen)
        seen.clear()
    raise GuestImageError("fio's library closure did not converge")
