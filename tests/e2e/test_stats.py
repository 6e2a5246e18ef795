"""Port forwards and live figures on a real guest (TCG), one boot: the kit guest's busybox
httpd reached from the host through a vif's hostfwd=, then domstats --json and top -b seeing
its CPU and disk counters move under load made inside the guest (issue 21, items 4 and 5)."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Pvhvm
from tests.e2e.test_hotplug import guest_shell

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
    document = json.loads(pvhvm.run("domstats", "--json", name).stdout)
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
