"""``pvhvm bench net`` runs, its output parses, and it leaves nothing behind. No figures checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvhvm.bench import BenchError
from pvhvm.bench.net import (
    SETUPS,
    TINY,
    NicSetup,
    net_options,
    parse_console,
    parse_iperf_json,
    parse_ping,
    run_env,
)
from pvhvm.bench.netenv import (
    BRIDGE,
    BRIDGE_CONF,
    MARKER,
    Network,
    add_acl,
    can_create_bridge,
    link_exists,
    remove_acl,
)
from tests import jsonout

IPERF_JSON = {
    "start": {"version": "iperf 3.12"},
    "intervals": [],
    "end": {
        "sum_sent": {"bits_per_second": 8.1e8, "retransmits": 3},
        "sum_received": {"bits_per_second": 8.0e8},
        "cpu_utilization_percent": {"host_total": 99.0, "remote_total": 4.5},
    },
}
PING = """PING 10.213.0.1 (10.213.0.1): 56 data bytes

--- 10.213.0.1 ping statistics ---
20 packets transmitted, 19 packets received, 5% packet loss
round-trip min/avg/max = 0.400/0.500/2.000 ms
"""


def test_parse_iperf_json_takes_the_receivers_rate() -> None:
    row = parse_iperf_json("noise\n" + json.dumps(IPERF_JSON), "tcp-tx", "xenbus", "virtio-net")
    assert row.mbps == pytest.approx(100.0)
    assert row.gbit_s == pytest.approx(0.8)
    assert row.retransmits == 3
    assert row.client_cpu_pct == 99.0 and row.server_cpu_pct == 4.5
    with pytest.raises(BenchError, match="iperf3: unable"):
        parse_iperf_json('{"error": "unable to connect"}', "tcp-tx", "xenbus", "virtio-net")
    with pytest.raises(BenchError):
        parse_iperf_json("no json", "tcp-tx", "xenbus", "virtio-net")


def test_parse_ping_summary() -> None:
    row = parse_ping(PING, "ping", "ioemu", "e1000")
    assert row.rtt_us == pytest.approx(500.0)
    assert row.rtt_max_us == pytest.approx(2000.0)
    assert row.rr_per_s == pytest.approx(2000.0)
    assert row.loss_pct == pytest.approx(5.0)
    assert row.mbps is None


def test_parse_console_and_failures() -> None:
    setup = SETUPS[0]
    text = "\r\n".join([
        "PVHVM-BENCH-BOOTED 2.0", "PVHVM-BENCH-NIC eth0 driver=virtio_net mac=00:16:3e:d5:00:02",
        "PVHVM-BENCH-JOB-BEGIN tcp-tx", *json.dumps(IPERF_JSON, indent=1).splitlines(),
        "PVHVM-BENCH-JOB-END tcp-tx rc=0",
        "PVHVM-BENCH-JOB-BEGIN ping", "[   3.1] kernel noise", *PING.splitlines(),
        "PVHVM-BENCH-JOB-END ping rc=0", "PVHVM-BENCH-DONE",
    ])
    results, nic = parse_console(text, setup)
    assert [r.job for r in results] == ["tcp-tx", "ping"]
    assert all(r.device == "xenbus" and r.setup == "virtio-net" for r in results)
    assert "driver=virtio_net" in nic
    with pytest.raises(BenchError, match="rc=1"):
        parse_console(text.replace("tcp-tx rc=0", "tcp-tx rc=1"), setup)


def test_setups_differ_only_in_the_vif_type_and_model() -> None:
    net = Network()
    vifs = [s.vif(net) for s in SETUPS]
    assert vifs[0].endswith("type=xenbus")
    assert [s.name for s in SETUPS] == ["virtio-net", "e1000", "rtl8139"]
    prefix = f"bridge={BRIDGE}, mac="
    assert all(v.startswith(prefix) for v in vifs)
    assert NicSetup("x", "ioemu", "e1000").vif(net).endswith("type=ioemu, model=e1000")


def test_options_and_run_env() -> None:
    tiny = net_options(quick=False, tiny=True, setups=None, jobs=None)
    assert tiny.params == TINY and tiny.jobs == ("tcp-tx",)
    assert [s.name for s in tiny.setups] == ["virtio-net"]
    env = run_env(tiny)
    assert 'BENCH_JOBS="tcp-tx"' in env and 'HOST_IP="10.213.0.1"' in env
    with pytest.raises(BenchError, match="unknown NIC setup"):
        net_options(quick=True, tiny=False, setups=["ne2000"], jobs=None)
    with pytest.raises(BenchError, match="unknown net job"):
        net_options(quick=True, tiny=False, setups=None, jobs=["udp"])


def test_acl_lines_are_added_and_removed_exactly(tmp_path: Path) -> None:
    conf = tmp_path / "qemu" / "bridge.conf"
    add_acl("pvbench0", conf)
    assert conf.read_text() == f"{MARKER}\nallow pvbench0\n"
    add_acl("pvbench0", conf)  # idempotent (a killed run's lines are replaced)
    assert conf.read_text().count("allow pvbench0") == 1
    remove_acl("pvbench0", conf)
    assert not conf.exists() and not conf.parent.exists()
    conf.parent.mkdir()
    conf.write_text("allow br0\nallow pvbench0\n")  # someone else's lines stay
    add_acl("pvbench0", conf)
    remove_acl("pvbench0", conf)
    assert conf.read_text() == "allow br0\nallow pvbench0\n"


@pytest.mark.e2e
def test_bench_net_tiny_boots_a_pv_guest_on_a_bridge(tmp_path: Path) -> None:
    reason = can_create_bridge()
    if reason is not None:
        pytest.skip(f"bench net cannot create its bridge here: {reason}")
    conf_before = BRIDGE_CONF.read_text() if BRIDGE_CONF.exists() else None
    env = {**os.environ, "PVHVM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "pvhvm", "bench", "net", "--tiny", "--json",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = jsonout.result(done.stdout)
    assert document["schema"] == "pvhvm-bench-net/1"
    rows = document["results"]
    assert {(r["job"], r["device"], r["setup"]) for r in rows} == {
        ("tcp-tx", "host", "loopback"), ("tcp-tx", "xenbus", "virtio-net"),
    }
    for row in rows:
        assert isinstance(row["mbps"], float) and row["mbps"] > 0
    (guest,) = document["guests"]
    assert "driver=virtio_net" in guest["nic"]
    assert any("bridge,id=net0,br=pvbench0" in arg for arg in guest["argv"])
    # nothing left behind
    assert not link_exists(BRIDGE)
    assert (BRIDGE_CONF.read_text() if BRIDGE_CONF.exists() else None) == conf_before
