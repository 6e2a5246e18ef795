"""Port forwards and live figures on a real guest (TCG), one boot: the kit guest's busybox
httpd reached from the host through a vif's hostfwd=, then domstats --json and top -b seeing
its CPU and disk counters move under load made inside the guest (issue 21, items 4 and 5)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm
from tests.e2e.test_hotplug import guest_shell
from tests.hosts import processes_mentioning
from tests.libvirt.daemon import PrivateLibvirtd

pytestmark = pytest.mark.e2e

CONFIG = """\
name = "{name}"
builder = "hvm"
memory = 192
vcpus = 1
kernel = "{images}/vmlinuz"
ramdisk = "{images}/initramfs.cpio.gz"
extra = "console=ttyS0 root=/dev/vda"
disk = [ "format=raw, vdev=xvda, access=rw, type=xenbus, target={images}/rootfs.ext4",
         "format=raw, vdev=xvdb, access=rw, type=xenbus, target={images}/data.img" ]
vif = [ "type=xenbus, hostfwd=tcp::{port}-:80, hostfwd=udp:127.0.0.1:{port}-:53" ]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def domstats(pvhvm: Pvhvm, name: str) -> dict[str, Any]:
    document = jsonout.result(pvhvm.run("domstats", "--json", name).stdout, "domstats")
    (figures,) = document["domains"]
    assert figures["name"] == name
    return dict(figures)


def test_a_port_forward_reaches_the_guest_and_the_figures_move_under_load(
        pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path) -> None:
    name, port = "stats", free_port()
    config = tmp_path / "stats.cfg"
    config.write_text(CONFIG.format(name=name, images=imagedir, port=port))
    domain.append(name)
    pvhvm.run("create", str(config), "--accel", "tcg")
    pvhvm.wait_report(name)

    # the forward: QEMU listens on this host's loopback (no host address: 127.0.0.1)
    guest_shell(pvhvm, name, "ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; "
                             "mkdir -p /tmp/www; echo served-by-$(hostname) > /tmp/www/index; "
                             "busybox httpd -p 80 -h /tmp/www")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index", timeout=30) as reply:
        assert reply.read().decode().strip() == "served-by-pvhvm-guest"
    with socket.socket() as elsewhere:  # not on the host's other addresses
        elsewhere.settimeout(5)
        host_ip = socket.gethostbyname(socket.gethostname())
        if not host_ip.startswith("127."):
            assert elsewhere.connect_ex((host_ip, port)) != 0

    # figures: counters since QEMU started, then again after load inside the guest
    before = domstats(pvhvm, name)
    assert before["memory"]["actual_kib"] == 192 * 1024 == before["memory"]["target_kib"]
    disk, data = before["block"]
    assert disk["vdev"] == "xvda" and disk["rd_bytes"] > 0  # it booted from it
    assert data["vdev"] == "xvdb" and data["wr_bytes"] == 0
    (nic,) = before["net"]
    assert nic["backend"] == "user" and nic["rx_bytes"] is None
    assert "user networking" in nic["unavailable"]
    (vcpu,) = before["cpu"]["vcpus"]
    guest_shell(pvhvm, name, "echo 3 > /proc/sys/vm/drop_caches; "
                             "dd if=/dev/vda of=/dev/null bs=64k count=128; "
                             "dd if=/dev/zero of=/dev/vdb bs=64k count=64 conv=fsync",
                timeout=120)
    after = domstats(pvhvm, name)
    disk_after, data_after = after["block"]
    assert disk_after["rd_bytes"] - disk["rd_bytes"] >= 8 << 20
    assert disk_after["rd_ops"] > disk["rd_ops"]
    assert data_after["wr_bytes"] - data["wr_bytes"] >= 4 << 20
    assert data_after["wr_ops"] > data["wr_ops"]
    assert after["cpu"]["seconds"] > before["cpu"]["seconds"]
    (vcpu_after,) = after["cpu"]["vcpus"]
    assert vcpu_after["thread_id"] == vcpu["thread_id"]
    assert vcpu_after["seconds"] > vcpu["seconds"]

    # top: rates between two samples while the guest reads its disk in a loop
    guest_shell(pvhvm, name, "(while :; do echo 3 > /proc/sys/vm/drop_caches; "
                             "cat /dev/vda > /dev/null; done) & echo $! > /tmp/loader")
    try:
        out = pvhvm.run("top", "-b", "-n", "1", "-d", "3", name).stdout
    finally:
        guest_shell(pvhvm, name, "kill $(cat /tmp/loader)")
    header, row = out.splitlines()
    columns = dict(zip(header.split(), row.split(), strict=True))
    assert columns["NAME"] == name and columns["STATE"] == "running"
    assert float(columns["CPU(%)"]) > 5, out
    assert float(columns["RD(KiB/s)"]) > 0 and float(columns["RD(op/s)"]) > 0, out
    assert columns["NETRX(KiB/s)"] == "-"  # user networking: no counters, none invented


TAP_SCRIPT = r"""
set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/upper,workdir=$WORK/work" /etc
mount -t sysfs sysfs /sys
ip link add br-s type bridge
ip addr add 10.9.9.1/24 dev br-s
ip link set br-s up
mkdir -p /etc/qemu && echo 'allow br-s' >/etc/qemu/bridge.conf
"$PVHVM" create "$CFG" "imagedir=$IMAGEDIR" name=tapst "vif=['bridge=br-s']" "$DISK" \
    --accel tcg --no-check
"$PVHVM" domstats --json tapst >"$WORK/before.json"
MAC=$(grep -o '"mac": "[^"]*"' "$WORK/before.json" | cut -d'"' -f4)
ip neigh replace 10.9.9.2 lladdr "$MAC" dev br-s
"$PY" -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5): s.sendto(bytes(1000), ("10.9.9.2", 9))'
"$PVHVM" domstats --json tapst >"$WORK/after.json"
"$PVHVM" destroy tapst
"""


def test_a_nic_on_a_bridge_has_its_taps_counters(imagedir: Path, tmp_path: Path) -> None:
    """In a network and mount namespace of its own (as test_ops' bridge test): the NIC's tap
    is found from QEMU's descriptors, and what the host sends to the guest's MAC is the
    guest's rx (no boot needed: the frames reach the tap whatever the guest does)."""
    work = Path(tempfile.mkdtemp(prefix="pvt-", dir="/tmp"))
    try:
        for sub in ("upper", "work", "state"):
            (work / sub).mkdir()
        with open(imagedir / "tap.img", "wb") as image:
            image.truncate(1 << 20)
        env = {**os.environ, "WORK": str(work), "PVHVM_STATE_DIR": str(work / "state"),
               "PVHVM_HOSTD_LINGER": "1", "PVHVM": str(Path(sys.executable).parent / "pvhvm"),
               "PY": sys.executable,
               "CFG": str(EXAMPLES / "pv-only.cfg"), "IMAGEDIR": str(imagedir),
               "DISK": f"disk=['{imagedir}/tap.img,raw,xvda,w']"}
        if subprocess.run(["unshare", "--net", "--mount", "true"], check=False).returncode:
            pytest.skip("cannot make network and mount namespaces here")
        subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                        TAP_SCRIPT], env=env, check=True, timeout=120)
        (before,) = jsonout.result((work / "before.json").read_text(), "domstats")["domains"][0][
            "net"]
        (after,) = jsonout.result((work / "after.json").read_text(), "domstats")["domains"][0][
            "net"]
        assert before["backend"] == "bridge" and before["unavailable"] is None
        assert str(before["source"]).startswith("tap") and after["source"] == before["source"]
        assert after["rx_bytes"] - before["rx_bytes"] >= 5 * 1000
        assert after["rx_packets"] - before["rx_packets"] >= 5
    finally:
        deadline = time.monotonic() + 15  # the namespace's host supervisor lingers 1 s
        while time.monotonic() < deadline and processes_mentioning(str(work)):
            time.sleep(0.2)
        shutil.rmtree(work, ignore_errors=True)



@pytest.mark.xdist_group("libvirt")
def test_domstats_of_a_libvirt_domain(pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    """The libvirt platform's figures come from libvirt itself (getCPUStats, vcpus,
    memoryStats, blockStats; a user-networking NIC has none there): a private libvirtd."""
    daemon = PrivateLibvirtd()
    daemon.start()
    try:
        pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}", "name=lvst",
                  "--platform", "libvirt", "--connect", daemon.uri, "--accel", "tcg")
        try:
            first = domstats(pvhvm, "lvst")
            deadline = time.monotonic() + 120
            while first["block"][0]["rd_bytes"] == 0 and time.monotonic() < deadline:
                time.sleep(1)  # the guest's kernel has not read its root disk yet
                first = domstats(pvhvm, "lvst")
            time.sleep(3)
            second = domstats(pvhvm, "lvst")
        finally:
            pvhvm.run("destroy", "lvst")
    finally:
        assert not daemon.stop()
    (disk,) = second["block"]
    assert disk["vdev"] == "xvda" and disk["rd_bytes"] >= first["block"][0]["rd_bytes"] > 0
    assert second["cpu"]["seconds"] > first["cpu"]["seconds"] > 0
    assert [v["vcpu"] for v in second["cpu"]["vcpus"]] == [0]
    assert second["memory"]["actual_kib"] > 0
    (nic,) = second["net"]
    assert nic["devid"] == 0 and nic["rx_bytes"] is None and nic["unavailable"]
