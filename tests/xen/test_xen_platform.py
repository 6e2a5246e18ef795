"""pvhvm create/destroy --platform xen against a real daemon, checked with Xen's own tools."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.runtime.state import pid_alive
from pvhvm.xenstore.daemon import DaemonProcess, spawn_daemon
from tests import jsonout

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                                reason="xenstore-utils is not installed (dev/setup installs it)")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pvx-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def xenstored(short_dir: Path) -> Iterator[DaemonProcess]:
    with spawn_daemon(short_dir / "xs.sock") as daemon:
        yield daemon


@pytest.fixture
def images(short_dir: Path) -> Path:
    for name in ("rootfs.ext4", "data.img", "vmlinuz", "initramfs.cpio.gz", "boot.img"):
        (short_dir / name).write_bytes(b"\0" * 512)
    return short_dir


def pvhvm(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvhvm", *args], capture_output=True,
                          text=True, env={**os.environ, "PVHVM_STATE_DIR": str(state)},
                          check=False, timeout=60)


def xs(sock: Path, tool: str, *args: str) -> str:
    proc = subprocess.run([tool, *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "XENSTORED_PATH": str(sock)}, timeout=30)
    return proc.stdout


def perms(sock: Path, path: str) -> dict[str, str]:
    """Top-level children of ``path`` and their permissions, from ``xenstore-ls -p``."""
    out = {}
    for line in xs(sock, "xenstore-ls", "-p", path).splitlines():
        if not line.startswith(" "):
            out[line.split(" = ", 1)[0]] = line.rsplit("  ", 1)[1]
    return out


def test_create_writes_xenbus_nodes_and_destroy_restores(
    xenstored: DaemonProcess, images: Path, short_dir: Path
) -> None:
    sock = xenstored.socket_path
    xs(sock, "xenstore-write", "/local/domain/0/name", "Domain-0", "/tool/keep", "1")
    before = xs(sock, "xenstore-ls", "-p", "/")
    state = short_dir / "state"
    created = pvhvm(state, "create", str(ROOT / "examples" / "mixed.cfg"), f"imagedir={images}",
                    "--platform", "xen", "--xenstore", str(sock))
    assert created.returncode == 0, created.stderr
    assert xs(sock, "xenstore-read", "/local/domain/1/name").strip() == "mixed"
    # Only the PV disk (xvdb = 51728) and the PV NIC (vif 1) get xenbus nodes.
    assert xs(sock, "xenstore-list", "/local/domain/1/device/vbd").split() == ["51728"]
    assert xs(sock, "xenstore-list", "/local/domain/1/device/vif").split() == ["1"]
    front = "/local/domain/1/device/vbd/51728"
    back = xs(sock, "xenstore-read", f"{front}/backend").strip()
    assert back == "/local/domain/0/backend/vbd/1/51728"
    assert xs(sock, "xenstore-read", f"{back}/params").strip() == f"{images}/data.img"
    for path in (front, back, "/local/domain/1/device/vif/1"):
        assert xs(sock, "xenstore-read", f"{path}/state").strip() == "1"
    assert perms(sock, "/local/domain/1/device/vbd")["51728"] == "(n1,r0)"
    assert perms(sock, "/local/domain/0/backend/vbd/1")["51728"] == "(n0,r1)"

    again = pvhvm(state, "create", str(ROOT / "examples" / "mixed.cfg"), f"imagedir={images}",
                  "--platform", "xen", "--xenstore", str(sock))
    assert again.returncode == 1 and "already exists" in again.stderr

    destroyed = pvhvm(state, "destroy", "mixed")
    assert destroyed.returncode == 0, destroyed.stderr
    assert xs(sock, "xenstore-ls", "-p", "/") == before
    assert not (state / "xen" / "domains" / "mixed").exists()


def test_dry_run_json_has_xenstore(images: Path, short_dir: Path) -> None:

    proc = pvhvm(short_dir / "state", "create", str(ROOT / "examples" / "pv-only.cfg"),
                 f"imagedir={images}", "--platform", "xen", "-n", "--json")
    assert proc.returncode == 0, proc.stderr
    nodes = jsonout.result(proc.stdout)["xenstore"]
    assert nodes["/local/domain/1/device/vbd/51712/backend"] == (
        "/local/domain/0/backend/vbd/1/51712")
    assert not (short_dir / "state" / "xen" / "domains").exists()


def test_embedded_daemon_by_default(images: Path, short_dir: Path) -> None:
    """Without --xenstore pvhvm starts its own daemon; destroying the last xen domain stops it,
    and the next create starts it again."""
    state = short_dir / "state"
    pid_file = state / "xen" / "xenstored" / "xenstored.pid"
    sock = state / "xen" / "xenstored" / "socket"
    env = {**os.environ, "XENSTORED_PATH": str(sock)}
    try:
        for name in ("one", "two"):
            proc = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"),
                         f"imagedir={images}", f"name={name}", "--platform", "xen")
            assert proc.returncode == 0, proc.stderr
        assert xs(sock, "xenstore-read", "/local/domain/1/name").strip() == "one"
        daemon = int(pid_file.read_text().split()[0])
        assert pvhvm(state, "destroy", "one").returncode == 0
        # The daemon still serves "two"; "one" is gone from it.
        assert subprocess.run(["xenstore-exists", "/local/domain/1"], check=False, env=env,
                              capture_output=True).returncode != 0
        assert xs(sock, "xenstore-read", "/local/domain/2/name").strip() == "two"
        assert pvhvm(state, "destroy", "two").returncode == 0
        assert not sock.exists() and not pid_file.exists()
        assert not pid_alive(daemon)  # gone (or a zombie waiting for its reaper)
        again = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"),
                      f"imagedir={images}", "--platform", "xen")
        assert again.returncode == 0, again.stderr
        # domids are not reused (issue 21 item 6): the third domain is 3, not 1 again
        assert xs(sock, "xenstore-read", "/local/domain/3/name").strip() == "pv-only"
        assert pvhvm(state, "destroy", "pv-only").returncode == 0
        assert not sock.exists()
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def test_failed_xen_create_leaves_nothing(
    xenstored: DaemonProcess, images: Path, short_dir: Path
) -> None:
    sock = xenstored.socket_path
    xs(sock, "xenstore-write", "/local/domain/1/name", "someone-else")
    before = xs(sock, "xenstore-ls", "/")
    state = short_dir / "state"
    proc = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"), f"imagedir={images}",
                 "--platform", "xen", "--xenstore", str(sock))
    assert proc.returncode == 1 and "domid 1 is already in XenStore" in proc.stderr
    assert xs(sock, "xenstore-ls", "/") == before
    assert not list((state / "xen" / "domains").iterdir())


def test_verbs_on_a_xen_domain(xenstored: DaemonProcess, images: Path, short_dir: Path) -> None:
    """list NAME and block-/network-list read the domain back (backends and their xenbus state
    live from XenStore); verbs that need a running guest say why they cannot act."""

    sock = xenstored.socket_path
    state = short_dir / "state"
    created = pvhvm(state, "create", str(ROOT / "examples" / "mixed.cfg"), f"imagedir={images}",
                    "--platform", "xen", "--xenstore", str(sock))
    assert created.returncode == 0, created.stderr
    listed = pvhvm(state, "list", "mixed")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["mixed", "1"]

    disks = jsonout.result(pvhvm(state, "block-list", "mixed", "--json").stdout)
    assert [(d["vdev"], d["type"], d["driver"]) for d in disks] == [
        ("hda", "ioemu", "device model"),
        ("xvdb", "xenbus", "/local/domain/0/backend/vbd/1/51728 (state 1)"),
    ]
    # A backend moving its state on (as blkback would, to 2 InitWait) shows at once.
    xs(sock, "xenstore-write", "/local/domain/0/backend/vbd/1/51728/state", "2")
    text = pvhvm(state, "block-list", "mixed").stdout
    assert "/local/domain/0/backend/vbd/1/51728 (state 2)" in text
    nics = jsonout.result(pvhvm(state, "network-list", "mixed", "--json").stdout)
    assert [(n["type"], n["driver"]) for n in nics] == [
        ("ioemu", "device model"), ("xenbus", "/local/domain/0/backend/vif/1/1 (state 1)"),
    ]
    # Removed behind pvhvm's back: said, not a traceback.
    xs(sock, "xenstore-rm", "/local/domain/1/device/vif/1")
    nics = jsonout.result(pvhvm(state, "network-list", "mixed", "--json").stdout)
    assert nics[1]["driver"] == "missing from XenStore"

    for verb in ("pause", "unpause", "shutdown", "reboot", "console"):
        refused = pvhvm(state, verb, "mixed")
        assert refused.returncode == 1, (verb, refused.stderr)
        assert refused.stderr.strip() == (
            "pvhvm: error: domain 'mixed' is on the xen platform: pvhvm wrote its XenStore "
            f"entries, but no hypervisor runs it on this host for 'pvhvm {verb}' to act on; on "
            f"a Xen host use 'xl {verb} mixed'"
        )
    assert pvhvm(state, "destroy", "mixed").returncode == 0
    assert pvhvm(state, "block-list", "mixed").stderr.strip() == (
        "pvhvm: error: no domain named 'mixed'")


def test_unreachable_xenstore_is_said_and_leaves_nothing(images: Path, short_dir: Path) -> None:
    state = short_dir / "state"
    proc = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"), f"imagedir={images}",
                 "--platform", "xen", "--xenstore", str(short_dir / "nobody.sock"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"pvhvm: error: cannot connect to xenstored at {short_dir / 'nobody.sock'}: "
        "[Errno 2] No such file or directory")
    assert not list((state / "xen" / "domains").iterdir())


def test_report_and_xenstore_option_misuse(
    xenstored: DaemonProcess, images: Path, short_dir: Path
) -> None:
    state = short_dir / "state"
    sock = xenstored.socket_path
    assert pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"), f"imagedir={images}",
                 "--platform", "xen", "--xenstore", str(sock)).returncode == 0
    report = pvhvm(state, "report", "pv-only")
    assert report.returncode == 1 and report.stderr.strip() == (
        "pvhvm: error: domain 'pv-only' is on the xen platform: no guest runs on this host to "
        "report its devices")
    assert pvhvm(state, "destroy", "pv-only").returncode == 0
    # --xenstore with the qemu platform is a mistake, said before anything starts.
    wrong = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"), f"imagedir={images}",
                  "--xenstore", str(sock))
    assert wrong.returncode == 1
    assert "--xenstore applies to --platform xen only" in wrong.stderr


def test_pv_devices_attached_and_detached_as_xl_writes_them(
    xenstored: DaemonProcess, images: Path, short_dir: Path
) -> None:
    """block-/network-attach write a PV device's xenbus nodes (state 1) as libxl does;
    detach sets the backend Closing and waits for Closed, which nothing here gives, so it
    times out in one line; --force removes the nodes; destroy still leaves the store as it was."""
    sock = xenstored.socket_path
    xs(sock, "xenstore-write", "/local/domain/0/name", "Domain-0")
    before = xs(sock, "xenstore-ls", "-p", "/")
    state = short_dir / "state"
    created = pvhvm(state, "create", str(ROOT / "examples" / "pv-only.cfg"),
                    f"imagedir={images}", "--platform", "xen", "--xenstore", str(sock))
    assert created.returncode == 0, created.stderr

    done = pvhvm(state, "block-attach", "pv-only", f"{images}/data.img,raw,xvdb,w")
    assert done.returncode == 0, done.stderr
    front, back = "/local/domain/1/device/vbd/51728", "/local/domain/0/backend/vbd/1/51728"
    assert xs(sock, "xenstore-read", f"{front}/backend").strip() == back
    assert xs(sock, "xenstore-read", f"{back}/params").strip() == f"{images}/data.img"
    assert xs(sock, "xenstore-read", f"{back}/state").strip() == "1"
    assert perms(sock, "/local/domain/1/device/vbd")["51728"] == "(n1,r0)"
    listed = pvhvm(state, "block-list", "pv-only")
    assert f"{back} (state 1)" in listed.stdout
    refused = pvhvm(state, "block-attach", "pv-only", f"{images}/boot.img,raw,hdb,w,type=ioemu")
    assert refused.returncode == 1 and "IDE has no hotplug" in refused.stderr

    nic = pvhvm(state, "network-attach", "pv-only", "mac=00:16:3e:7a:00:02")
    assert nic.returncode == 0, nic.stderr
    assert xs(sock, "xenstore-read", "/local/domain/1/device/vif/1/mac").strip() == \
        "00:16:3e:7a:00:02"

    waited = pvhvm(state, "block-detach", "pv-only", "xvdb", "--timeout", "0.5")
    assert waited.returncode == 1 and waited.stderr.count("\n") == 1
    assert "did not close within 0.5s" in waited.stderr
    assert xs(sock, "xenstore-read", f"{back}/state").strip() == "5"  # Closing, as libxl
    assert xs(sock, "xenstore-read", f"{back}/online").strip() == "0"
    forced = pvhvm(state, "block-detach", "pv-only", "51728", "--force")
    assert forced.returncode == 0, forced.stderr
    assert xs(sock, "xenstore-list", "/local/domain/1/device/vbd").split() == ["51712"]
    assert "xvdb" not in pvhvm(state, "block-list", "pv-only").stdout
    gone = pvhvm(state, "network-detach", "pv-only", "00:16:3e:7a:00:02", "--force")
    assert gone.returncode == 0, gone.stderr
    assert xs(sock, "xenstore-list", "/local/domain/1/device/vif").split() == ["0"]

    again = pvhvm(state, "network-attach", "pv-only")  # left there for destroy to remove
    assert again.returncode == 0, again.stderr
    assert pvhvm(state, "destroy", "pv-only").returncode == 0
    assert xs(sock, "xenstore-ls", "-p", "/") == before
