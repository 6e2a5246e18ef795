"""``pvhvm guest prepare`` on hostile guest images (issue 17, items 1 and 2).

Each guest is a small ext4 filesystem made with ``mke2fs -d`` from a tree built here: a
static helper (compiled here) stands in for the guest's ``update-initramfs`` and tries to
leave its sandbox, hangs, or behaves. The real CLI runs the real libguestfs appliance (TCG
here, 20-40 s per prepare). Each test checks the host afterwards: no host file written or
read, no process left, nothing left beside the image.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.guest.appliance import ApplianceTimeout, Timeouts, children_of
from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.guest.prepare import prepare_image, workdir_prefix
from pvhvm.inspect.cpio import read_initramfs
from pvhvm.runtime.state import StateStore
from tests import jsonout

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("guestfs") is None, reason="libguestfs (python3-guestfs) is not installed"),
    pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("mke2fs") is None,
                       reason="needs gcc and mke2fs"),
    pytest.mark.skipif(os.geteuid() != 0, reason="chown and the appliance's disk access"),
    pytest.mark.xdist_group("appliance"),
]

KERNEL = "6.1.0-hostile-amd64"

#: stands in for the guest's update-initramfs (run as ``#!/usr/bin/hostile MODE`` script)
HOSTILE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "ok";
    if (strncmp(mode, "escape-", 7) == 0) {
        /* the classic chroot escape: chroot deeper, then walk up past the old root */
        mkdir("/.escape", 0700);
        if (chroot("/.escape") == 0) {
            for (int i = 0; i < 256; i++)
                if (chdir("..") != 0) break;
            if (chroot(".") != 0) return 3;
        }
        char path[200];
        snprintf(path, sizeof path, "/tmp/pvhvm-escaped-%s", mode + 7);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            if (write(fd, "escaped\n", 8) != 8) return 4;
            close(fd);
        }
        if (fork() == 0) {  /* a process left behind, with the marker in its argv */
            setsid();
            for (int f = 0; f < 1024; f++) close(f);
            sleep(100000);
            _exit(0);
        }
        return 0;
    }
    if (strcmp(mode, "record") == 0) {  /* a well-behaved tool that says how it was run */
        FILE *log = fopen("/root/tool-args", "a");
        if (log == NULL) return 5;
        for (int i = 2; i < argc; i++) fprintf(log, "%s%s", argv[i], i + 1 < argc ? " " : "\n");
        fclose(log);
        return 0;
    }
    if (strcmp(mode, "hang") == 0) {
        sleep(10000);
        return 0;
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def hostile_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("hostile")
    source = build / "hostile.c"
    source.write_text(HOSTILE_C)
    binary = build / "hostile"
    subprocess.run(["gcc", "-static", "-O", "-o", str(binary), str(source)], check=True,
                   capture_output=True)
    return binary


def guest_tree(root: Path, helper: Path, mode: str,
               tool: str = "/usr/sbin/update-initramfs") -> Path:
    """A minimal Debian-shaped root: libguestfs recognises it as Linux, prepare finds an
    initramfs-tools guest with one kernel, GRUB naming root=/dev/sda."""
    for directory in ("bin", "usr/bin", "usr/sbin", "boot/grub", "etc/initramfs-tools",
                      "etc/default", "proc", "sys", "dev", "tmp", "run", "root"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n'
                                         'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (root / "etc/debian_version").write_text("12.0\n")
    shutil.copy(helper, root / "usr/bin/hostile")
    script = root / tool.lstrip("/")
    script.write_text(f"#!/usr/bin/hostile {mode}\n")
    script.chmod(0o755)
    (root / f"boot/vmlinuz-{KERNEL}").write_bytes(b"not a kernel\n")
    return root


def set_text(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def ordinary_files(root: Path) -> None:
    set_text(root, "/etc/fstab", "/dev/sda / ext4 errors=remount-ro 0 1\n")
    set_text(root, "/boot/grub/grub.cfg", f"linux /boot/vmlinuz-{KERNEL} root=/dev/sda ro\n")
    set_text(root, "/etc/default/grub", 'GRUB_CMDLINE_LINUX=""\n')
    set_text(root, f"/boot/initrd.img-{KERNEL}", "an initramfs\n")


def make_image(tree: Path, image: Path) -> Path:
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "48M"],
                   check=True, capture_output=True)
    return image


def config_for(image: Path) -> Path:
    cfg = image.parent / "guest.cfg"
    cfg.write_text(f'name = "hostile"\nbuilder = "hvm"\nmemory = 256\n'
                   f'disk = [ "file:{image},hda,w,type=xenbus" ]\n')
    return cfg


def prepare(cfg: Path, state: Path, *extra: str,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PVHVM_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "pvhvm", "guest", "prepare", str(cfg), *extra],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def processes_with(text: str) -> list[int]:
    """Host processes whose command line contains ``text``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def nothing_left(directory: Path, before: set[str]) -> None:
    """No work file beside the image, no process naming the directory (the appliance's QEMU
    names its disk there) a moment after prepare returned."""
    assert {p.name for p in directory.iterdir()} == before
    deadline = time.monotonic() + 5
    while processes_with(str(directory)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(str(directory)) == []


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "images").mkdir()
    yield tmp_path
    for pid in processes_with(str(tmp_path)):  # a failed test leaves no appliance behind
        os.kill(pid, signal.SIGKILL)


def test_guest_code_cannot_leave_its_sandbox(workspace: Path, hostile_binary: Path) -> None:
    marker = secrets.token_hex(8)
    escaped = Path(f"/tmp/pvhvm-escaped-{marker}")
    tree = guest_tree(workspace / "tree", hostile_binary, f"escape-{marker}")
    ordinary_files(tree)
    image = make_image(tree, workspace / "images" / "disk.img")
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    try:  # the guest's own update-initramfs (the hostile one) runs in the appliance
        done = prepare(cfg, workspace / "state", "--regenerate-initramfs")
        assert not escaped.exists(), "guest code wrote a file on the host"
        assert processes_with(f"escape-{marker}") == [], "guest code left a host process"
        nothing_left(image.parent, before)
        assert done.returncode == 0, done.stderr
    finally:
        escaped.unlink(missing_ok=True)
        for pid in processes_with(f"escape-{marker}"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("fstab", ["linked", "regular"])
def test_guest_symlinks_to_host_files_are_not_followed(workspace: Path, hostile_binary: Path,
                                                       fstab: str) -> None:
    """Every file prepare edits or backs up is a symlink to a host file; with a regular
    fstab too, so that a prepare that needs one to find the guest gets that far."""
    tree = guest_tree(workspace / "tree", hostile_binary, "ok")
    host = workspace / "host"
    host.mkdir()
    links = {  # every file prepare edits or backs up → a host file of known content
        "/etc/fstab": "fstab", "/etc/crypttab": "crypttab", "/etc/default/grub": "grub",
        "/etc/initramfs-tools/modules": "modules", "/boot/grub/grub.cfg": "grubcfg",
        "/boot/grub/menu.lst": "menulst", "/boot/extlinux/extlinux.conf": "extlinux",
        f"/boot/initrd.img-{KERNEL}": "initrd",
    }
    if fstab == "regular":
        del links["/etc/fstab"]
        set_text(tree, "/etc/fstab", "/dev/sda / ext4 errors=remount-ro 0 1\n")
    contents = {}
    for path, name in links.items():
        target = host / name
        contents[name] = f"HOST-{name}-{secrets.token_hex(12)}\n/dev/sda / ext4 defaults 0 1\n"
        target.write_text(contents[name])
        target.chmod(0o600)
        link = tree / path.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = path.count("/") - 1
        if name in ("grubcfg", "menulst"):  # relative, climbing far past the guest's root
            link.symlink_to("../" * (depth + 12) + str(target).lstrip("/"))
        else:
            link.symlink_to(target)
    (tree / "dev").rmdir()  # and /dev: device nodes made there must not land on the host
    (host / "devdir").mkdir()
    (tree / "dev").symlink_to(host / "devdir")
    stats = {name: (host / name).stat() for name in contents}
    image = make_image(tree, workspace / "images" / "disk.img")
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    done = prepare(cfg, workspace / "state", "--json")
    assert done.returncode == 0, done.stderr
    for name, text in contents.items():
        assert (host / name).read_text() == text, f"host file {name} changed"
        after = (host / name).stat()
        assert (after.st_mtime_ns, after.st_mode) == (stats[name].st_mtime_ns,
                                                      stats[name].st_mode)
    data = image.read_bytes()
    for name, text in contents.items():
        assert text.split("\n")[0].encode() not in data, f"host file {name} copied into the image"
    assert list((host / "devdir").iterdir()) == []
    notes = jsonout.result(done.stdout)["notes"]
    assert any("leads nowhere in the guest" in note for note in notes), notes
    nothing_left(image.parent, before)


def test_a_hanging_hook_ends_at_the_timeout(workspace: Path, hostile_binary: Path) -> None:
    tree = guest_tree(workspace / "tree", hostile_binary, "hang")
    ordinary_files(tree)
    image = make_image(tree, workspace / "images" / "disk.img")
    original = image.read_bytes()
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    started = time.monotonic()
    done = prepare(cfg, workspace / "state", "--timeout", "20", "--json",
                   "--regenerate-initramfs", timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "update-initramfs" in lines[0] and "no answer after 20 s" in lines[0], lines
    assert seconds < 20 + 300, seconds  # the appliance's start under TCG, then 20 s
    assert image.read_bytes() == original
    nothing_left(image.parent, before)


def test_planted_work_file_symlinks_are_left_alone(workspace: Path,
                                                   hostile_binary: Path) -> None:
    tree = guest_tree(workspace / "tree", hostile_binary, "ok")
    ordinary_files(tree)
    image = make_image(tree, workspace / "images" / "disk.img")
    victims = {}
    for suffix in ("", ".rootfs", ".tree"):  # every work-file name prepare used to use
        victim = workspace / f"victim{suffix or '.image'}"
        victim.write_text(f"victim {secrets.token_hex(8)}\n")
        victims[f".{image.name}.pvhvm-prepare{suffix}"] = victim
        (image.parent / f".{image.name}.pvhvm-prepare{suffix}").symlink_to(victim)
    # and a symlink named as a stale work directory of this image is (clear_stale_workdirs):
    # to a directory of the victim's, whose file must survive
    victim_dir = workspace / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("keep\n")
    stale = f"{workdir_prefix(image)}abcd1234"
    (image.parent / stale).symlink_to(victim_dir)
    texts = {name: victim.read_text() for name, victim in victims.items()}
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    done = prepare(cfg, workspace / "state", "--json", "--regenerate-initramfs")
    assert done.returncode == 0, done.stderr
    for name, victim in victims.items():
        planted = image.parent / name
        assert planted.is_symlink() and planted.readlink() == victim
        assert victim.read_text() == texts[name]
    changes = jsonout.result(done.stdout)["changes"]
    assert any(c["path"] == "/etc/fstab" and "UUID=" in c["detail"] for c in changes), changes
    assert (image.parent / stale).is_symlink() and (victim_dir / "keep").read_text() == "keep\n"
    nothing_left(image.parent, before)


def test_the_image_keeps_its_mode_and_owner(workspace: Path, hostile_binary: Path) -> None:
    tree = guest_tree(workspace / "tree", hostile_binary, "ok")
    ordinary_files(tree)
    image = make_image(tree, workspace / "images" / "disk.img")
    image.chmod(0o600)
    os.chown(image, 1234, 2345)
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    done = prepare(cfg, workspace / "state", "--json", "--regenerate-initramfs")
    assert done.returncode == 0, done.stderr
    st = image.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 2345)
    assert "/etc/fstab" in jsonout.result(done.stdout)["written"]
    nothing_left(image.parent, before)


def guest_file(image: Path, path: str) -> str:
    """A file of the test image, read with debugfs (the image is the test's own)."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                          text=True, check=True)
    return done.stdout


def guest_bytes(image: Path, path: str, scratch: Path) -> bytes:
    """A file of the test image as bytes (debugfs dump into ``scratch``)."""
    subprocess.run(["debugfs", "-R", f"dump {path} {scratch}", str(image)], check=True,
                   capture_output=True)
    return scratch.read_bytes()


def test_a_dracut_guest_gets_a_conf_file_and_dracut_per_kernel(workspace: Path,
                                                               hostile_binary: Path) -> None:
    """Not hostile: a dracut guest (here a tool that records its arguments) is prepared with
    a dracut.conf.d file and ``dracut -f IMAGE KVER`` for each kernel, in the appliance."""
    tree = guest_tree(workspace / "tree", hostile_binary, "record", tool="/usr/bin/dracut")
    ordinary_files(tree)
    (tree / "etc/dracut.conf.d").mkdir()
    set_text(tree, f"/boot/vmlinuz-{KERNEL}-2", "another kernel\n")
    image = make_image(tree, workspace / "images" / "disk.img")
    done = prepare(config_for(image), workspace / "state", "--json", "--regenerate-initramfs")
    assert done.returncode == 0, done.stderr
    assert jsonout.result(done.stdout)["initramfs"] == "regenerate"
    assert guest_file(image, "/root/tool-args").splitlines() == [  # the script, its arguments
        f"/usr/bin/dracut -f /boot/initrd.img-{KERNEL} {KERNEL}",
        f"/usr/bin/dracut -f /boot/initrd.img-{KERNEL}-2 {KERNEL}-2"]
    conf = guest_file(image, "/etc/dracut.conf.d/90-pvhvm-virtio.conf")
    assert 'add_drivers+=" virtio virtio_ring virtio_pci virtio_blk virtio_net "' in conf
    assert guest_file(image, f"/boot/initrd.img-{KERNEL}.pre-pvhvm") == "an initramfs\n"


def test_an_appliance_that_does_not_start_in_time_is_killed(workspace: Path,
                                                            hostile_binary: Path) -> None:
    """The launch deadline: the appliance (and whatever the launch started) is killed, the
    work directory removed, the image untouched."""
    tree = guest_tree(workspace / "tree", hostile_binary, "ok")
    ordinary_files(tree)
    image = make_image(tree, workspace / "images" / "disk.img")
    original = image.read_bytes()
    before = {p.name for p in image.parent.iterdir()}
    children = children_of(os.getpid())
    with pytest.raises(ApplianceTimeout, match="starting the appliance: no answer after 2 s"):
        prepare_image(image, store=StateStore(workspace / "state"),
                      timeouts=Timeouts(launch=2))
    assert image.read_bytes() == original
    nothing_left(image.parent, before)
    deadline = time.monotonic() + 10
    while children_of(os.getpid()) - children and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children_of(os.getpid()) - children == set()


def _host_modules() -> Path:
    """A host kernel's module tree with virtio_pci and virtio_blk as modules (the
    appliance's kernel, which libguestfs needs anyway)."""
    for tree in sorted(Path("/lib/modules").iterdir()):
        if (tree / "kernel/drivers/block/virtio_blk.ko").is_file():
            return tree
    pytest.skip("no host kernel with virtio_blk as a module")


VIRTIO = ("drivers/virtio/virtio", "drivers/virtio/virtio_ring",
          "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev",
          "drivers/virtio/virtio_pci", "drivers/block/virtio_blk")


def test_drivers_are_appended_without_running_guest_code(workspace: Path,
                                                          hostile_binary: Path) -> None:
    """The default prepare: real virtio modules (the host kernel's, as this guest's) and
    kmod's index appended to the guest's gzip initramfs; the guest's update-initramfs (a tool
    that records being run) never runs; a module the initramfs has whose guest file is a
    link to a host file is not read (it leaves the new index, with a note)."""
    host = _host_modules()
    tree = guest_tree(workspace / "tree", hostile_binary, "record")
    ordinary_files(tree)
    moddir = tree / "lib/modules" / KERNEL
    for module in VIRTIO:
        target = moddir / f"kernel/{module}.ko"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(host / f"kernel/{module}.ko", target)
    secret = workspace / "secret"
    secret.write_text(f"HOST-SECRET-{secrets.token_hex(12)}\n")
    secret.chmod(0o600)
    (moddir / "kernel/drivers/ata").mkdir(parents=True)
    (moddir / "kernel/drivers/ata/ata_piix.ko").symlink_to(secret)
    dep = {m: [] for m in VIRTIO}
    dep["drivers/virtio/virtio_pci"] = [m for m in VIRTIO[:4]]
    dep["drivers/block/virtio_blk"] = list(VIRTIO[:2])
    (moddir / "modules.dep").write_text("kernel/drivers/ata/ata_piix.ko:\n" + "".join(
        f"kernel/{m}.ko: {' '.join(f'kernel/{d}.ko' for d in deps)}\n".replace(": \n", ":\n")
        for m, deps in dep.items()))
    (moddir / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    modules = f"usr/lib/modules/{KERNEL}"
    initrd = gzip.compress(cpio_newc([
        CpioEntry.directory("usr"), CpioEntry.directory("usr/lib"),
        CpioEntry.symlink("lib", "usr/lib"), CpioEntry.directory("usr/lib/modules"),
        CpioEntry.directory(modules), CpioEntry.directory(f"{modules}/kernel"),
        CpioEntry.directory(f"{modules}/kernel/drivers"),
        CpioEntry.directory(f"{modules}/kernel/drivers/ata"),
        CpioEntry.file(f"{modules}/kernel/drivers/ata/ata_piix.ko", b"\x7fELF old"),
        CpioEntry.file(f"{modules}/modules.dep", b"kernel/drivers/ata/ata_piix.ko:\n"),
        CpioEntry.file("init", b"#!/bin/sh\n", 0o755)]), mtime=0)
    (tree / f"boot/initrd.img-{KERNEL}").write_bytes(initrd)
    image = make_image(tree, workspace / "images" / "disk.img")
    cfg = config_for(image)
    before = {p.name for p in image.parent.iterdir()}
    done = prepare(cfg, workspace / "state", "--json")
    assert done.returncode == 0, done.stderr
    result = jsonout.result(done.stdout)
    assert result["initramfs"] == "append"
    assert guest_file(image, "/root/tool-args") == ""  # the guest's tool never ran
    assert any("not in the guest's" in n and "ata_piix" in n for n in result["notes"]), result
    data = guest_bytes(image, f"/boot/initrd.img-{KERNEL}", workspace / "initrd")
    assert data.startswith(initrd)  # the guest's archive as it was, then the new one
    parsed = read_initramfs(data)
    assert len(parsed.segments) == 2 and parsed.segments[1].compression == "none"
    assert {"virtio_blk", "virtio_pci", "virtio", "virtio_ring", "ata_piix"} <= \
        parsed.module_files()
    index = parsed.files[f"{modules}/modules.dep"].decode()
    assert "kernel/drivers/block/virtio_blk.ko:" in index and "ata_piix" not in index
    assert parsed.members[f"{modules}/modules.dep.bin"].size > 0
    assert parsed.members[f"{modules}/modules.alias.bin"].size > 0
    assert stat.S_ISLNK(parsed.members["lib"].mode)  # the link is kept
    assert guest_bytes(image, f"/boot/initrd.img-{KERNEL}.pre-pvhvm", workspace / "pre") == \
        initrd
    assert secret.read_text().strip().encode() not in image.read_bytes()
    modules_file = guest_file(image, "/etc/initramfs-tools/modules")
    assert "virtio_blk" in modules_file  # the guest's own next rebuild keeps them
    nothing_left(image.parent, before)
