"""The kit's optional benchmark extra: Debian's fio and the shared libraries it links.

``build_bench_extra(KIT)`` writes ``KIT/bench/bench.cpio``, an *uncompressed* newc archive::

    bench/init          the rdinit program (files/bench-init): load storage drivers, run the
                        fio jobs named in bench/run.env on the first disk, print each job's JSON
                        between markers on the console, power off
    bench/fio           /usr/bin/fio from the fio package
    bench/lib/<soname>  every library fio needs, transitively (readelf DT_NEEDED)
    lib64/ld-linux-x86-64.so.2

``build_net_extra(KIT)`` writes ``KIT/bench/net.cpio`` the same way for ``pvhvm bench net``:
Debian's iperf3 with its libraries, the NIC drivers, and ``bench/net-init``.

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
from pvhvm.guest.modules import ModuleSource, read_module_bytes, resolve
from pvhvm.hostfs import directory_lock

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

NET_RECIPE_VERSION = 1
NET_ARCHIVE = "net.cpio"
NET_MANIFEST = "net-manifest.json"
#: iperf3 and its libraries, named explicitly so no ``dpkg -S`` on the host is needed
NET_PACKAGES = ("iperf3", "libiperf0", "libssl3", "libsctp1", "libc6")
#: the NIC drivers of the three benchmarked models and the virtio PCI transport (the kit's
#: initramfs has storage drivers only, and bench-net-init loads none of them). QEMU's rtl8139
#: is an RTL8139C+ (revision 0x20): 8139cp drives it, 8139too declines it
NET_DRIVERS = ("virtio_pci", "virtio_net", "e1000", "8139cp", "8139too")
NET_LOAD_LIST = "bench/net-modules.load"


@dataclass(frozen=True)
class BenchExtra:
    """The paths of a built benchmark extra."""

    directory: Path

    #: ``bench`` (fio, bench.cpio) or ``net`` (iperf3 and NIC drivers, net.cpio)
    name: str = "bench"

    @property
    def archive(self) -> Path:
        return self.directory / (ARCHIVE if self.name == "bench" else NET_ARCHIVE)

    @property
    def manifest_path(self) -> Path:
        return self.directory / (MANIFEST if self.name == "bench" else NET_MANIFEST)


def recipe_digest() -> str:
    digest = hashlib.sha256(repr((BENCH_RECIPE_VERSION, BASE_PACKAGES)).encode())
    digest.update(rootfs.guest_file("bench-init"))
    return digest.hexdigest()


def net_recipe_digest(kernel_release: str) -> str:
    digest = hashlib.sha256(
        repr((NET_RECIPE_VERSION, NET_PACKAGES, NET_DRIVERS, kernel_release)).encode()
    )
    digest.update(rootfs.guest_file("bench-net-init"))
    return digest.hexdigest()


def is_built(extra: BenchExtra, recipe: str | None = None) -> bool:
    try:
        manifest = json.loads(extra.manifest_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("recipe") == (recipe or recipe_digest())
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



def _publish(extra: BenchExtra, stage: Path, manifest: dict[str, object]) -> None:
    """Write ``stage`` as the extra's archive and then its manifest (recipe etc. plus size
    and sha256). The manifest goes first and comes back last, so a crash in between leaves
    an extra that is rebuilt, never one that looks up to date."""
    tmp = extra.archive.with_name(extra.archive.name + ".tmp")
    tmp.write_bytes(initramfs.cpio_newc(initramfs.tree_entries(stage)))
    with contextlib.suppress(FileNotFoundError):
        extra.manifest_path.unlink()
    os.replace(tmp, extra.archive)
    written = {
        "recipe": manifest["recipe"],
        "size": extra.archive.stat().st_size,
        "sha256": sha256_file(extra.archive),
        **{k: v for k, v in manifest.items() if k != "recipe"},
    }
    extra.manifest_path.write_text(json.dumps(written, indent=2) + "\n")


def _stage_program(
    stage: Path, unpacked: Path, program: Path, libraries: dict[str, Path],
    init: tuple[str, str],
) -> None:
    """Stage a dynamically linked program under /bench: its init script (``(name in /bench,
    guest file)``), the program, the libraries it links and the ELF interpreter."""
    name, guest_file = init
    rootfs.write(stage / "bench" / name, rootfs.guest_file(guest_file), 0o755)
    rootfs.write(stage / "bench" / program.name, program.read_bytes(), 0o755)
    for soname, path in sorted(libraries.items()):
        rootfs.write(stage / "bench" / "lib" / soname, path.resolve().read_bytes(), 0o755)
    interpreter = unpacked / INTERPRETER
    if not interpreter.exists():
        interpreter = unpacked / "lib" / "x86_64-linux-gnu" / "ld-linux-x86-64.so.2"
    if not interpreter.exists():
        raise GuestImageError("libc6 has no ld-linux-x86-64.so.2")
    rootfs.write(stage / INTERPRETER, interpreter.resolve().read_bytes(), 0o755)

def build_bench_extra(
    kit_directory: Path, *, force: bool = False, progress: Progress | None = None,
) -> BenchExtra:
    """Build ``KIT/bench/bench.cpio`` (a no-op when it is up to date)."""
    say = progress or (lambda message: None)
    extra = BenchExtra(kit_directory.resolve() / BENCH_DIR)
    if not force and is_built(extra):
        say("fio extra is up to date")
        return extra
    with directory_lock(extra.directory):  # concurrent builders (test workers) wait
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
        _stage_program(stage, unpacked, fio, libraries, init=("init", "bench-init"))
        say("writing bench.cpio")
        _publish(extra, stage, {
            "recipe": recipe_digest(),
            "packages": {name: deb.version for name, deb in sorted(fetched.items())},
            "libraries": sorted(libraries),
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_net_extra(
    kit_directory: Path, *, force: bool = False, progress: Progress | None = None,
) -> BenchExtra:
    """Build ``KIT/bench/net.cpio`` (a no-op when it is up to date)::

        bench/net-init              the rdinit program (files/bench-net-init)
        bench/iperf3, bench/lib/*   Debian's iperf3 and the libraries it links
        lib64/ld-linux-x86-64.so.2
        lib/modules/<release>/...   virtio_net, e1000, 8139too and their dependencies
        bench/net-modules.load      their relative paths, dependencies first (insmod order)

    The kernel modules come from the kit's own kernel package (its release is in the kit's
    manifest), so the guest's drivers match its kernel. The kit's modules.dep and load lists
    are not overwritten: this archive adds files only.
    """
    say = progress or (lambda message: None)
    kit_directory = kit_directory.resolve()
    release = _kit_release(kit_directory)
    extra = BenchExtra(kit_directory / BENCH_DIR, name="net")
    recipe = net_recipe_digest(release)
    if not force and is_built(extra, recipe):
        say("iperf3 extra is up to date")
        return extra
    with directory_lock(extra.directory):
        if not force and is_built(extra, recipe):
            return extra
        _build_net(extra, kit_directory, release, recipe, say)
    say(f"iperf3 extra built: {extra.archive}")
    return extra


def _kit_release(kit_directory: Path) -> str:
    try:
        manifest = json.loads((kit_directory / "manifest.json").read_text())
        release = manifest["kernel_release"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GuestImageError(f"{kit_directory}: no kit manifest with a kernel release") from err
    if not isinstance(release, str) or not release:
        raise GuestImageError(f"{kit_directory}/manifest.json: bad kernel_release")
    return release


def _build_net(
    extra: BenchExtra, kit_directory: Path, release: str, recipe: str, say: Progress,
) -> None:
    cache = kit_directory / "debs"
    work = extra.directory / ".build-net"
    shutil.rmtree(work, ignore_errors=True)
    try:
        unpacked = work / "unpacked"
        kernel_package = f"linux-image-{release}"
        say(f"fetching {', '.join(NET_PACKAGES)} and {kernel_package}")
        fetched = dict(debs.fetch([*NET_PACKAGES, kernel_package], cache))
        for deb in fetched.values():
            debs.unpack(deb, unpacked)
        iperf3 = unpacked / "usr" / "bin" / "iperf3"
        if not iperf3.is_file():
            raise GuestImageError("the iperf3 package has no usr/bin/iperf3")
        libraries = _closure(iperf3, unpacked, cache, fetched, say)
        module_dir = unpacked / "lib" / "modules" / release
        builtin_file = module_dir / "modules.builtin"
        builtin = builtin_file.read_text().split() if builtin_file.exists() else []
        drivers = resolve(NET_DRIVERS, ModuleSource(module_dir), builtin=builtin)
        say(f"staging iperf3 with {len(libraries)} libraries and {len(drivers)} modules")
        stage = work / "stage"
        _stage_program(stage, unpacked, iperf3, libraries, init=("net-init", "bench-net-init"))
        target = stage / "lib" / "modules" / release
        for module in drivers:
            rootfs.write(target / module.installed_relpath,
                         read_module_bytes(module_dir / module.relpath))
        load = "".join(m.installed_relpath + "\n" for m in drivers)
        rootfs.write(stage / NET_LOAD_LIST, load.encode())
        say("writing net.cpio")
        _publish(extra, stage, {
            "recipe": recipe,
            "kernel_release": release,
            "packages": {name: deb.version for name, deb in sorted(fetched.items())},
            "libraries": sorted(libraries),
            "modules": [m.name for m in drivers],
        })
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
