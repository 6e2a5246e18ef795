"""A real Xen host to run inside QEMU (TCG): Debian's Xen 4.17 and a Debian dom0 with pvhvm.

SPEC.md, "A real Xen host inside QEMU". ``build_xenhost()`` writes, under
``~/.cache/pvhvm/xenhost`` (``$PVHVM_XENHOST_DIR``)::

    tree-KEY/root        the dom0 system: a copy of the installed guest's debootstrap base
                         (pvhvm.guest.installed, never debootstrapped again) with DOM0_PACKAGES
                         installed by the tree's own apt-get in a chroot; KEY digests the base
                         recipe, the packages and the host's apt sources
    debs/                xen-hypervisor-4.17-amd64, fetched with ``apt-get download``
    image-KEY/xen        the hypervisor (the package's xen-4.17-amd64.gz, gunzipped: QEMU's
                         multiboot loader takes a 32-bit ELF)
    image-KEY/vmlinuz    dom0's kernel and initrd: the ones installed in the tree, so they match
    image-KEY/initrd.img its modules
    image-KEY/rootfs.img ext4 (``mke2fs -d``): the tree plus pvhvm (this checkout's package and
                         the distributions it requires, copied from the running interpreter),
                         the Xen modules loaded at boot (Debian's /etc/init.d/xen starts
                         xenstored and xenconsoled), static
                         network for QEMU user networking, sshd with the key below
    image-KEY/id_ed25519 the key pair root's authorized_keys holds (0600), and known_hosts
    image-KEY/manifest.json

The tree is rebuilt only when its inputs change; the image when the tree, the hypervisor
package or pvhvm's source changes (about 20 s: copying plus ``mke2fs``); images of other
checkouts are removed a day after they were built. The
hypervisor must be the version of xen-utils-4.17 in the tree (both from bookworm-security).
Nothing is installed on the host; building the tree needs root (chroot).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pvhvm
from pvhvm.errors import GuestImageError
from pvhvm.guest import debs
from pvhvm.guest.debs import require_tool, run
from pvhvm.guest.installed import base_recipe, build_base, build_workdir, kernel_release
from pvhvm.guest.installed import cache_root as installed_cache_root
from pvhvm.guest.kit import read_manifest
from pvhvm.hostfs import cache_home, directory_lock

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

RECIPE_VERSION = 1
XEN_VERSION = "4.17"
HYPERVISOR_PACKAGE = f"xen-hypervisor-{XEN_VERSION}-amd64"
HYPERVISOR_FILE = f"boot/xen-{XEN_VERSION}-amd64.gz"
#: What dom0 needs on top of the debootstrap base (SPEC.md, "A real Xen host inside QEMU").
DOM0_PACKAGES = (
    f"xen-utils-{XEN_VERSION}", "xenstore-utils", "qemu-system-xen", "seabios", "iproute2",
    "bridge-utils", "openssh-server", "python3",
)
#: Loaded at boot, before ``/etc/init.d/xen start`` (SPEC.md).
DOM0_MODULES = (
    "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xen-blkback",
    "xen-netback", "loop", "bridge", "tun",
)
DOM0_MEM_MIB = 1024
IMAGE_MIB = 4096
HOSTNAME = "xenhost"
#: The name the host key is filed under in known_hosts (the forwarded port changes per boot).
HOST_KEY_ALIAS = "pvhvm-xenhost"
#: QEMU user networking's fixed addresses.
DOM0_ADDRESS = "10.0.2.15/24"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
HOST_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
MANIFEST = "manifest.json"
OUTPUTS = ("xen", "vmlinuz", "initrd.img", "rootfs.img", "id_ed25519", "id_ed25519.pub",
           "known_hosts")


@dataclass(frozen=True)
class XenHostImage:
    """The paths of a built Xen host image."""

    directory: Path

    @property
    def hypervisor(self) -> Path:
        return self.directory / "xen"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def ssh_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.directory / MANIFEST)


def cache_root() -> Path:
    """``$PVHVM_XENHOST_DIR`` or ``~/.cache/pvhvm/xenhost``."""
    configured = os.environ.get("PVHVM_XENHOST_DIR")
    return Path(configured) if configured else cache_home() / "xenhost"


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def host_apt_sources() -> dict[str, str]:
    """The host's apt source files, by name: the tree fetches from the archive the host's
    ``apt-get download`` fetched the hypervisor from, so the two versions can match."""
    sources: dict[str, str] = {}
    single, directory = HOST_APT_SOURCES
    if single.is_file():
        sources["sources.list"] = single.read_text()
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.suffix in (".list", ".sources") and path.is_file():
                sources[f"sources.list.d/{path.name}"] = path.read_text()
    if not sources:
        raise GuestImageError("the host has no apt sources (/etc/apt/sources.list[.d])")
    return sources


def tree_key(sources: dict[str, str]) -> str:
    return _digest(RECIPE_VERSION, base_recipe(), DOM0_PACKAGES, sorted(sources.items()))[:16]


# -- dom0's system tree ---------------------------------------------------------------------


def _chroot(root: Path, *argv: str) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive"}
    return run(["chroot", str(root), *argv], env=env)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


POLICY_RC_D = "#!/bin/sh\n# pvhvm: no daemon starts while the dom0 tree is built\nexit 101\n"


def build_tree(sources: dict[str, str], say: Progress) -> Path:
    """dom0's system: the installed guest's base tree plus DOM0_PACKAGES; returns its root."""
    tree = cache_root() / f"tree-{tree_key(sources)}"
    stamp = tree / "stamp.json"
    if stamp.is_file() and (tree / "root" / "usr" / "sbin" / "xl").exists():
        return tree / "root"
    if os.geteuid() != 0:
        raise GuestImageError("building the Xen host's dom0 needs root (chroot, apt-get)")
    base_root = build_base(installed_cache_root() / "base", say)
    with directory_lock(tree):
        if stamp.is_file():
            return tree / "root"
        staging = tree / "root.new"
        shutil.rmtree(staging, ignore_errors=True)
        say("copying the installed guest's debootstrap base")
        run(["cp", "-a", "--reflink=auto", str(base_root), str(staging)])
        apt = staging / "etc" / "apt"
        with contextlib.suppress(FileNotFoundError):
            (apt / "sources.list").unlink()
        for name, text in sources.items():
            _write(apt / name, text)
        # the host's archive may be a dated snapshot, as the host's own apt accepts it
        _write(apt / "apt.conf.d" / "99pvhvm-snapshot",
               'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n')
        _write(staging / "etc" / "resolv.conf", Path("/etc/resolv.conf").read_text())
        policy = staging / "usr" / "sbin" / "policy-rc.d"
        _write(policy, POLICY_RC_D, 0o755)
        say("apt-get update in the dom0 tree")
        _chroot(staging, "apt-get", "-q", "update")
        say(f"apt-get install {' '.join(DOM0_PACKAGES)} in the dom0 tree (a few minutes)")
        try:
            _chroot(staging, "apt-get", "-q", "-y", "--no-install-recommends", "install",
                    *DOM0_PACKAGES)
        except GuestImageError as err:
            raise GuestImageError(f"cannot install dom0's packages: {err}") from err
        _chroot(staging, "apt-get", "clean")
        policy.unlink()
        shutil.rmtree(tree / "root", ignore_errors=True)
        os.replace(staging, tree / "root")
        stamp.write_text(json.dumps({"base": base_recipe(), "packages": DOM0_PACKAGES}) + "\n")
    return tree / "root"


def package_version(root: Path, package: str) -> str:
    """The version of ``package`` installed in ``root`` (dpkg's status file, read directly)."""
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line
            and not line.startswith(" ")
        )
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields.get("Version", "")
    raise GuestImageError(f"{package} is not installed in {root}")


# -- the hypervisor -------------------------------------------------------------------------


def fetch_hypervisor(version: str, say: Progress) -> debs.Deb:
    """Debian's hypervisor package at ``version`` (the tree's xen-utils), from the cache or
    ``apt-get download``."""
    cache = cache_root() / "debs"
    with directory_lock(cache):
        for deb in debs.cached_debs(cache):
            if deb.package == HYPERVISOR_PACKAGE and deb.version == version:
                return deb
        say(f"apt-get download {HYPERVISOR_PACKAGE}={version}")
        require_tool("apt-get", "apt")
        with tempfile.TemporaryDirectory(prefix="pvhvm-debs-") as tmp:
            try:
                run(["apt-get", "download", f"{HYPERVISOR_PACKAGE}={version}"], cwd=Path(tmp))
            except GuestImageError as err:
                raise GuestImageError(
                    f"cannot fetch {HYPERVISOR_PACKAGE} {version} (it must match dom0's "
                    f"xen-utils-{XEN_VERSION}): {err}") from err
            for path in Path(tmp).glob("*.deb"):
                shutil.move(str(path), cache / path.name)
        for deb in debs.cached_debs(cache):
            if deb.package == HYPERVISOR_PACKAGE and deb.version == version:
                return deb
    raise GuestImageError(f"apt-get download did not produce {HYPERVISOR_PACKAGE} {version}")


def extract_hypervisor(deb: debs.Deb, target: Path) -> None:
    """The package's gzipped hypervisor, gunzipped to ``target``."""
    with tempfile.TemporaryDirectory(prefix="pvhvm-xen-") as tmp:
        debs.unpack(deb, Path(tmp))
        packed = Path(tmp) / HYPERVISOR_FILE
        if not packed.is_file():
            raise GuestImageError(f"{deb.path} has no {HYPERVISOR_FILE}")
        with gzip.open(packed, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    if target.read_bytes()[:4] != b"\x7fELF":
        raise GuestImageError(f"{HYPERVISOR_FILE} of {deb.path} is not an ELF file")


# -- pvhvm itself ---------------------------------------------------------------------------


def package_dir() -> Path:
    """The pvhvm package this process runs (the checkout under test when installed -e)."""
    return Path(pvhvm.__file__).resolve().parent


def _source_files(directory: Path) -> list[Path]:
    return sorted(
        path for path in directory.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def source_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(directory):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def required_distributions(name: str = "pvhvm") -> list[importlib.metadata.Distribution]:
    """The distributions ``name`` requires, transitively, as installed here (extras left out;
    a requirement under another marker is taken when installed)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = [(requirement, name) for requirement in
               importlib.metadata.requires(name) or []]
    while pending:
        requirement, needed_by = pending.pop()
        text, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(text)
        if match is None:
            continue
        dist_name = match.group(1).lower().replace("_", "-")
        if dist_name in found:
            continue
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as err:
            if marker.strip():
                continue
            raise GuestImageError(
                f"{needed_by} requires {dist_name}, which is not installed here") from err
        found[dist_name] = dist
        pending.extend((req, dist_name) for req in dist.requires or [])
    return [found[key] for key in sorted(found)]


def install_pvhvm(root: Path) -> str:
    """pvhvm's package and its requirements into dom0's python3 (dist-packages) and a
    ``/usr/local/sbin/pvhvm`` that runs it; returns what went in, for the manifest."""
    site = root / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    if not (root / "usr" / "bin" / "python3.11").exists():
        raise GuestImageError("dom0's python3 is not 3.11; pvhvm's copy would not match it")
    site.mkdir(parents=True, exist_ok=True)
    source = package_dir()
    for path in _source_files(source):
        target = site / "pvhvm" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    names = []
    for dist in required_distributions():
        base = Path(str(dist.locate_file(""))).resolve()
        names.append(f"{dist.metadata['Name']} {dist.version}")
        for file in dist.files or []:
            origin = Path(str(dist.locate_file(file))).resolve()
            if "__pycache__" in origin.parts or not origin.is_relative_to(base):
                continue
            relative = origin.relative_to(base)
            if relative.parts[0] in ("bin", "..") or not origin.is_file():
                continue
            target = site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    _write(root / "usr" / "local" / "sbin" / "pvhvm",
           "#!/usr/bin/python3\n# pvhvm, copied from the checkout the Xen host was built from\n"
           "from pvhvm.cli.entry import run\n\nrun()\n", 0o755)
    return ", ".join(names)


# -- dom0's configuration -------------------------------------------------------------------

def network_unit() -> str:
    """systemd-networkd: QEMU user networking's fixed addresses on the one NIC."""
    return (
        "[Match]\nName=en* eth*\n\n"
        f"[Network]\nAddress={DOM0_ADDRESS}\nGateway={GATEWAY}\nDNS={DNS}\n"
    )


def _enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    wants = root / "etc" / "systemd" / "system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for directory in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        if (root / directory / unit).is_file():
            link = wants / unit
            if not link.is_symlink():
                link.symlink_to(f"/{directory}/{unit}")
            return
    raise GuestImageError(f"dom0 has no systemd unit {unit}")


def configure_dom0(root: Path, public_key: str) -> None:
    """fstab, hostname, network, sshd with ``public_key``, Xen's modules."""
    _write(root / "etc" / "hostname", HOSTNAME + "\n")
    _write(root / "etc" / "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n")
    _write(root / "etc" / "fstab", "/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n")
    _write(root / "etc" / "resolv.conf", f"nameserver {DNS}\n")
    _write(root / "etc" / "modules-load.d" / "pvhvm-xen.conf",
           "# pvhvm: what Xen's toolstack needs in dom0 (SPEC.md)\n"
           + "".join(f"{name}\n" for name in DOM0_MODULES))
    _write(root / "etc" / "systemd" / "network" / "10-pvhvm.network", network_unit())
    _enable(root, "systemd-networkd.service")
    # Debian's own /etc/init.d/xen (its rc2.d link: systemd's sysv generator starts it)
    # mounts xenfs and starts xenstored and xenconsoled, as on any Debian Xen host.
    if not (root / "etc" / "rc2.d" / "S01xen").exists():
        raise GuestImageError("dom0's xen-utils-common did not enable /etc/init.d/xen")
    _enable(root, "ssh.service")
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(ssh / "authorized_keys", public_key, 0o600)
    _write(root / "etc" / "ssh" / "sshd_config.d" / "pvhvm.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # a person on the serial console (dev/xenhost) logs in as root without a password;
    # sshd still wants the key (PermitEmptyPasswords is off)
    shadow = root / "etc" / "shadow"
    shadow.write_text(re.sub(r"^root:[^:]*:", "root::", shadow.read_text(), flags=re.M))


# -- the image ------------------------------------------------------------------------------


def image_key(tree: str, hypervisor: debs.Deb, pvhvm_source: str) -> str:
    return _digest(RECIPE_VERSION, tree, hypervisor.version, pvhvm_source, DOM0_MODULES,
                   DOM0_MEM_MIB, IMAGE_MIB, network_unit())[:16]


def is_built(image: XenHostImage, key: str) -> bool:
    try:
        manifest = image.manifest()
    except GuestImageError:
        return False
    return manifest.get("key") == key and all((image.directory / n).is_file() for n in OUTPUTS)


def build_xenhost(*, force: bool = False, progress: Progress | None = None) -> XenHostImage:
    """Build (or find) the Xen host image for this checkout; see the module docstring."""
    say = progress or (lambda message: log.info("%s", message))
    sources = host_apt_sources()
    tkey = tree_key(sources)
    tree_root = build_tree(sources, say)
    utils_version = package_version(tree_root, f"xen-utils-{XEN_VERSION}")
    hypervisor = fetch_hypervisor(utils_version, say)
    source = package_dir()
    key = image_key(tkey, hypervisor, source_digest(source))
    image = XenHostImage(cache_root() / f"image-{key}")
    if not force and is_built(image, key):
        say(f"Xen host image is up to date ({image.directory})")
        return image
    image.directory.mkdir(parents=True, exist_ok=True)
    with directory_lock(image.directory):
        if not force and is_built(image, key):
            return image
        _build_image(image, key, tree_root, hypervisor, say)
    for old in prune(image):
        say(f"removed the outdated image {old}")
    say(f"Xen host image built in {image.directory}")
    return image


def _build_image(image: XenHostImage, key: str, tree_root: Path, hypervisor: debs.Deb,
                 say: Progress) -> None:
    keygen = require_tool("ssh-keygen", "openssh-client")
    mke2fs = require_tool("mke2fs", "e2fsprogs")
    with build_workdir(image.directory) as work:
        say("extracting the hypervisor")
        extract_hypervisor(hypervisor, work / "xen")
        run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pvhvm-xenhost",
             "-f", str(work / "id_ed25519")])
        say("copying dom0's tree")
        root = work / "root"
        run(["cp", "-a", "--reflink=auto", str(tree_root), str(root)])
        release = kernel_release(root)
        shutil.copy2(root / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
        shutil.copy2(root / "boot" / f"initrd.img-{release}", work / "initrd.img")
        host_key = (root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        _write(work / "known_hosts", f"{HOST_KEY_ALIAS} {host_key[0]} {host_key[1]}\n")
        say("pvhvm and its requirements into dom0")
        requirements = install_pvhvm(root)
        configure_dom0(root, (work / "id_ed25519.pub").read_text())
        say(f"mke2fs -d: dom0's root filesystem ({IMAGE_MIB} MiB, sparse)")
        run([mke2fs, "-q", "-F", "-t", "ext4", "-d", str(root), "-E", "root_owner=0:0",
             str(work / "rootfs.img"), f"{IMAGE_MIB}M"])
        manifest = {
            "key": key,
            "hypervisor": hypervisor.version,
            "xen_utils": package_version(root, f"xen-utils-{XEN_VERSION}"),
            "kernel_release": release,
            "pvhvm_source": str(package_dir()),
            "pvhvm_requirements": requirements,
            "dom0_mem_mib": DOM0_MEM_MIB,
        }
        shutil.rmtree(root)
        for name in OUTPUTS:
            os.replace(work / name, image.directory / name)
        tmp = image.directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, image.directory / MANIFEST)


#: An image of another checkout is kept this long after it was built: a test run of that
#: checkout may still be booting it (QEMU opens rootfs.img at start).
PRUNE_AFTER_S = 24 * 3600


def prune(keep: XenHostImage) -> list[Path]:
    """Remove image directories of other checkouts built more than a day ago; one still being
    built (no manifest yet) or built recently is left alone."""
    removed = []
    now = time.time()
    for path in cache_root().glob("image-*"):
        if not path.is_dir() or path.resolve() == keep.directory.resolve():
            continue
        try:
            built = (path / MANIFEST).stat().st_mtime
        except OSError:
            continue
        if now - built > PRUNE_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
