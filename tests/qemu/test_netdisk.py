"""Network disk targets -> QEMU -blockdev options, checked as data and against real QEMU 7.2.

The end-to-end cases serve an image with the real qemu-nbd and open it through the options
netdisk writes, with qemu-io (reading a pattern back) and with qemu-system-x86_64 itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.config.disk import parse_disk
from pvhvm.config.domain import config_from_text
from pvhvm.errors import PlanError
from pvhvm.plan.plan import make_plan
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.qemu.netdisk import available_drivers, blockdev_options, protocol_options

ALL = frozenset({"nbd", "rbd", "iscsi", "http", "https", "ftp", "ftps", "ssh", "gluster", "nfs"})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nbd://10.0.0.1/guest",
         {"driver": "nbd", "server": {"type": "inet", "host": "10.0.0.1", "port": "10809"},
          "export": "guest"}),
        ("nbd://[fd00::1]:10810/",
         {"driver": "nbd", "server": {"type": "inet", "host": "fd00::1", "port": "10810"}}),
        ("nbd+unix:///guest?socket=/run/nbd.sock",
         {"driver": "nbd", "server": {"type": "unix", "path": "/run/nbd.sock"},
          "export": "guest"}),
        ("nbd:10.0.0.1:10809:exportname=guest",
         {"driver": "nbd", "server": {"type": "inet", "host": "10.0.0.1", "port": "10809"},
          "export": "guest"}),
        ("nbd:unix:/run/nbd.sock",
         {"driver": "nbd", "server": {"type": "unix", "path": "/run/nbd.sock"}}),
        ("rbd:pool/guest", {"driver": "rbd", "pool": "pool", "image": "guest"}),
        ("rbd:pool/ns/guest@snap:id=admin:conf=/etc/ceph/ceph.conf",
         {"driver": "rbd", "pool": "pool", "namespace": "ns", "image": "guest",
          "snapshot": "snap", "user": "admin", "conf": "/etc/ceph/ceph.conf"}),
        ("iscsi://10.0.0.2/iqn.2001-04.com.example:store/1",
         {"driver": "iscsi", "transport": "tcp", "portal": "10.0.0.2:3260",
          "target": "iqn.2001-04.com.example:store", "lun": 1}),
        ("iscsi://joe@10.0.0.2:3261/iqn.2001-04.com.example:store",
         {"driver": "iscsi", "transport": "tcp", "portal": "10.0.0.2:3261",
          "target": "iqn.2001-04.com.example:store", "lun": 0, "user": "joe"}),
        ("https://mirror.example/debian.iso",
         {"driver": "https", "url": "https://mirror.example/debian.iso"}),
        ("ssh://root@host:2222/var/lib/guest.img",
         {"driver": "ssh", "server": {"host": "host", "port": "2222"},
          "path": "/var/lib/guest.img", "user": "root"}),
        ("gluster://gl1/vol/images/guest.img",
         {"driver": "gluster", "volume": "vol", "path": "images/guest.img",
          "server": [{"type": "inet", "host": "gl1", "port": "24007"}]}),
        ("nfs://filer/export/guest.img",
         {"driver": "nfs", "server": {"type": "inet", "host": "filer"},
          "path": "/export/guest.img"}),
    ],
)
def test_protocol_options(url: str, expected: dict[str, Any]) -> None:
    assert protocol_options(url) == expected


def test_format_node_over_protocol_node() -> None:
    options = blockdev_options("rbd:pool/guest", node_name="disk-xvda", format="qcow2",
                               read_only=True, drivers=ALL)
    assert options == {
        "driver": "qcow2", "node-name": "disk-xvda", "read-only": True,
        "file": {"driver": "rbd", "pool": "pool", "image": "guest",
                 "node-name": "disk-xvda-file", "read-only": True},
    }


def test_a_disk_spec_s_url_goes_through() -> None:
    """xl's reading of a prefixed nbd:// target keeps enough to give QEMU the URL back."""
    disk = parse_disk("nbd://10.0.0.1/guest,xvda,w")
    assert disk.network_url is not None
    assert protocol_options(disk.network_url)["export"] == "guest"


@pytest.mark.parametrize(
    ("url", "drivers", "words"),
    [
        ("rbd:pool/guest", {"nbd"}, "this QEMU has no rbd block driver (Debian: apt-get "
         "install qemu-block-extra); on the xen platform give it to qdisk"),
        ("https://mirror.example/d.iso", ALL, "https driver is read-only"),
        ("rbd:pool/guest:mon_host=1.2.3.4", ALL, "rbd option 'mon_host=1.2.3.4'"),
        ("rbd:guest", ALL, "rbd:POOL[/NAMESPACE]/IMAGE"),
        ("iscsi://u:secret@10.0.0.2/iqn.x/0", ALL, "iSCSI password"),
        ("iscsi://10.0.0.2/iqn.x/first", ALL, "LUN 'first'"),
        ("nbd://h:port/x", ALL, "port 'port'"),
        ("nbd+unix:///x", ALL, "needs ?socket=PATH"),
        ("nbd:justahost", ALL, "nbd:HOST:PORT"),
        ("gopher://h/x", ALL, "no QEMU block driver for 'gopher'"),
    ],
)
def test_refused_in_one_line(url: str, drivers: set[str], words: str) -> None:
    with pytest.raises(PlanError) as info:
        blockdev_options(url, node_name="d", drivers=drivers)
    message = str(info.value)
    assert words in message and "\n" not in message and repr(url) in message


# --- real QEMU ---------------------------------------------------------------------------


def test_available_drivers_asks_real_qemu() -> None:
    found = available_drivers()
    assert "nbd" in found  # built into every QEMU
    assert "bogus" not in available_drivers(["bogus", "nbd"])


@pytest.fixture()
def nbd_export(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A qcow2 image holding 0x5a at 0..64k, exported raw by real qemu-nbd on a unix socket
    and on a TCP port."""
    image = tmp_path / "guest.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(image)],
                   check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = tmp_path / "nbd.sock"
    servers = [
        subprocess.Popen(["qemu-nbd", "--persistent", "--read-only", "-f", "raw", "-x", "guest",
                          f"--socket={sock}", str(image)], stderr=subprocess.PIPE),
        subprocess.Popen(["qemu-nbd", "--persistent", "--read-only", "-f", "raw", "-x", "guest",
                          "-b", "127.0.0.1", "-p", str(port), str(image)],
                         stderr=subprocess.PIPE),
    ]
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if sock.exists():
                break
        yield sock, port
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)


def _urls(sock: Path, port: int) -> list[str]:
    return [f"nbd+unix:///guest?socket={sock}", f"nbd:unix:{sock}:exportname=guest",
            f"nbd://127.0.0.1:{port}/guest", f"nbd:127.0.0.1:{port}:exportname=guest"]


def test_real_qemu_reads_through_the_options(nbd_export: tuple[Path, int]) -> None:
    for url in _urls(*nbd_export):
        options = blockdev_options(url, node_name="disk-xvda", format="qcow2",
                                   read_only=True, drivers={"nbd"})
        proc = subprocess.run(
            ["qemu-io", "-r", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0 64k 64k",
             "json:" + json.dumps(options)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 0 and "Pattern verification failed" not in proc.stdout, (
            url, proc.stdout, proc.stderr)


def test_qemu_system_takes_the_blockdev(nbd_export: tuple[Path, int]) -> None:
    """The JSON is what qemu-system-x86_64 7.2's -blockdev accepts, node names and all."""
    url = _urls(*nbd_export)[2]
    options = blockdev_options(url, node_name="disk-xvda", format="qcow2", read_only=True,
                               drivers={"nbd"})
    commands = "".join(json.dumps(c) + "\n" for c in (
        {"execute": "qmp_capabilities"},
        {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
        {"execute": "quit"},
    ))
    proc = subprocess.run(
        ["qemu-system-x86_64", "-machine", "none", "-display", "none", "-nodefaults", "-S",
         "-qmp", "stdio", "-blockdev", json.dumps(options)],
        input=commands, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    nodes = next(r["return"] for r in replies if isinstance(r.get("return"), list))
    by_name = {node["node-name"]: node for node in nodes}
    assert by_name["disk-xvda"]["drv"] == "qcow2" and by_name["disk-xvda"]["ro"]
    assert by_name["disk-xvda-file"]["drv"] == "nbd"
    assert by_name["disk-xvda"]["image"]["virtual-size"] == 1 << 20


# --- in the QEMU argv --------------------------------------------------------------------

PATHS = RunPaths(
    qmp_socket=Path("/run/pvhvm/g/qmp.sock"), control_socket=Path("/run/pvhvm/g/ctl.sock"),
    console_socket=Path("/run/pvhvm/g/console.sock"),
    console_log=Path("/var/log/pvhvm/g.console.log"),
)


def argv_of(disks: list[str]) -> list[str]:
    config = config_from_text(f'name="g"\nbuilder="hvm"\ndisk={disks!r}\n', "g.cfg")
    return qemu_argv(make_plan(config, check_files=False), PATHS, ArgvOptions())


def _drive(argv: list[str], vdev: str) -> str:
    return next(a for a in argv if a.startswith(f"id=disk-{vdev},"))


def test_network_disks_in_the_argv() -> None:
    argv = argv_of([
        "vdev=xvda,access=rw,type=xenbus,target=nbd://10.0.0.1:10810/root",
        "nbd://10.0.0.2/data,xvdb,r,type=xenbus",
        "vdev=hdc,devtype=cdrom,target=nbd:10.0.0.1:10811:exportname=iso",
        "/img,raw,hda,w",
    ])
    assert _drive(argv, "xvda") == (
        "id=disk-xvda,if=none,format=raw,file.driver=nbd,file.server.type=inet,"
        "file.server.host=10.0.0.1,file.server.port=10810,file.export=root")
    # xl reads a leading nbd: as a deprecated prefix; the URL comes back whole
    assert _drive(argv, "xvdb").endswith(
        "file.driver=nbd,file.server.type=inet,file.server.host=10.0.0.2,"
        "file.server.port=10809,file.export=data,readonly=on")
    assert _drive(argv, "hdc").endswith("file.export=iso,readonly=on,media=cdrom")
    assert any(a.startswith("ide-cd,drive=disk-hdc,bus=ide.1,unit=0") for a in argv)
    assert any(a.startswith("virtio-blk-pci,drive=disk-xvda,") for a in argv)
    assert _drive(argv, "hda").startswith("id=disk-hda,if=none,file=/img,format=raw")


def test_a_driver_this_qemu_lacks_is_one_line() -> None:
    """rbd is a module in Debian (qemu-block-extra): either it is there, or pvhvm says so."""
    spec = "vdev=xvda,access=rw,type=xenbus,target=rbd:pool/guest"
    if "rbd" in available_drivers(["rbd"]):
        assert "file.driver=rbd" in _drive(argv_of([spec]), "xvda")
        return
    with pytest.raises(PlanError) as info:
        argv_of([spec])
    assert "this QEMU has no rbd block driver (Debian: apt-get install qemu-block-extra)" in (
        str(info.value))


def test_script_backed_targets_still_refused() -> None:
    with pytest.raises(PlanError, match="script-backed targets"):
        argv_of(["iscsi:iqn.2001-04.com.example:store,xvda,w"])


def test_cli_refuses_a_missing_driver_in_one_line(tmp_path: Path) -> None:
    """pvhvm create: exit 1, one line, no traceback, no domain left behind."""
    (tmp_path / "vmlinuz").write_bytes(b"")
    cfg = tmp_path / "rbd.cfg"
    cfg.write_text(f'name = "rbd-guest"\nkernel = "{tmp_path / "vmlinuz"}"\n'
                   'disk = [ "vdev=xvda,access=rw,type=xenbus,target=rbd:pool/guest" ]\n')
    env = {**os.environ, "PVHVM_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run([sys.executable, "-m", "pvhvm", "create", str(cfg), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    if "rbd" in available_drivers(["rbd"]):
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "no rbd block driver" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pvhvm", "create", str(cfg), "--accel", "tcg"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert not list((tmp_path / "state" / "domains").glob("*"))


@given(st.one_of(
    st.text(max_size=40),
    st.builds(lambda scheme, rest: scheme + rest,
              st.sampled_from(["nbd://", "nbd+unix://", "nbd:", "rbd:", "iscsi://", "ssh://",
                               "gluster://", "nfs://", "https://", "nbd:unix:"]),
              st.text(max_size=30)),
))
def test_any_target_gives_options_or_one_plan_error(url: str) -> None:
    try:
        blockdev_options(url, node_name="d", read_only=True, drivers=ALL)
    except PlanError as err:
        assert "\n" not in str(err)
