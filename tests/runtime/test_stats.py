"""runtime/stats.py and cli/stats.py without a guest: QMP results and /proc, /sys files as
QEMU 7.2 and Linux give them, mapped to disks and NICs; rates between two samples; the batch
table and the virsh-style text. (tests/e2e/test_stats.py measures a real guest.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pvhvm.cli.main import main
from pvhvm.cli.output import envelope
from pvhvm.cli.stats import TOP_COLUMNS, format_top, stats_lines, top_row
from pvhvm.errors import NotOnPlatformError
from pvhvm.platforms.xen import XenPlatform
from pvhvm.runtime.state import DomainRecord
from pvhvm.runtime.stats import (
    USER_NET_UNAVAILABLE,
    DiskCounters,
    DomainSample,
    NicCounters,
    VcpuTime,
    bridged_devids,
    disk_counters,
    interface_counters,
    libvirt_sample,
    nic_counters,
    rates,
    tap_names,
    thread_seconds,
)
from tests import jsonout

PLAN = {
    "disks": [{"vdev": "xvda", "devid": 51712}, {"vdev": "hdc", "devid": 5632},
              {"vdev": "xvdb", "devid": 51728}],
    "vifs": [{"devid": 0, "mac": "00:16:3e:00:00:01"}, {"devid": 1, "mac": "00:16:3e:00:00:02"}],
}


def _stats(rd: int, wr: int) -> dict[str, int]:
    return {"rd_bytes": rd, "wr_bytes": wr, "rd_operations": rd // 512,
            "wr_operations": wr // 512, "flush_operations": 3}


def test_blockstats_are_matched_to_the_plans_disks() -> None:
    """-drive disks are known by their backend (device), a hot-plugged one (blockdev-add,
    no backend name) by its device id in qdev; QEMU's order is not the plan's."""
    blockstats = [
        {"device": "", "qdev": "/machine/peripheral/vbd-51728/virtio-backend",
         "stats": _stats(1024, 2048)},
        {"device": "disk-hdc", "qdev": "/machine/peripheral-anon/device[1]",
         "stats": _stats(0, 0)},
        {"device": "disk-xvda", "qdev": "/machine/peripheral/vbd-51712/virtio-backend",
         "stats": _stats(512 * 10, 512 * 4)},
        {"device": "", "qdev": "/machine/peripheral/something-else", "stats": _stats(1, 1)},
    ]
    assert disk_counters(blockstats, PLAN) == [
        DiskCounters("xvda", 5120, 2048, 10, 4),
        DiskCounters("hdc", 0, 0, 0, 0),
        DiskCounters("xvdb", 1024, 2048, 2, 4),
    ]


def test_bridged_nics_are_read_from_the_argv() -> None:
    argv = ["qemu", "-netdev", "bridge,id=net1,br=br0", "-netdev", "user,id=net0",
            "-netdev", "bridge,id=net4,br=br,,odd"]
    assert bridged_devids(argv) == {1, 4}


def test_a_user_nic_says_it_has_no_counters_a_single_tap_gives_its_own() -> None:
    host = {"rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2}
    user, tap = nic_counters(PLAN["vifs"], {1}, ["tap7"], lambda name: host)
    assert user == NicCounters(0, "00:16:3e:00:00:01", "user", unavailable=USER_NET_UNAVAILABLE)
    # what the tap sends reaches the guest: rx and tx as the guest sees them
    assert tap == NicCounters(1, "00:16:3e:00:00:02", "bridge", rx_bytes=20, tx_bytes=10,
                              rx_packets=2, tx_packets=1, source="tap7")


def test_several_taps_are_not_guessed() -> None:
    nics = nic_counters(PLAN["vifs"], {0, 1}, ["tap1", "tap2"], lambda name: {})
    assert all(n.rx_bytes is None and n.unavailable and "not certain" in n.unavailable
               for n in nics)


def test_tap_names_come_from_tun_fdinfo(tmp_path: Path) -> None:
    fdinfo = tmp_path / "42" / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "3").write_text("pos:\t0\nflags:\t02\nmnt_id:\t15\n")
    (fdinfo / "12").write_text("pos:\t0\nflags:\t04002\nmnt_id:\t24\niff:\ttap3\n")
    (fdinfo / "9").write_text("pos:\t0\nflags:\t04002\nmnt_id:\t24\niff:\ttap0\n")
    assert tap_names(42, tmp_path) == ["tap0", "tap3"]
    assert tap_names(43, tmp_path) == []


def test_interface_and_thread_counters_from_sys_and_proc(tmp_path: Path) -> None:
    statistics = tmp_path / "net" / "tap0" / "statistics"
    statistics.mkdir(parents=True)
    for key, value in (("rx_bytes", 5), ("tx_bytes", 6), ("rx_packets", 7),
                       ("tx_packets", 8)):
        (statistics / key).write_text(f"{value}\n")
    assert interface_counters("tap0", tmp_path / "net") == {
        "rx_bytes": 5, "tx_bytes": 6, "rx_packets": 7, "tx_packets": 8}
    assert interface_counters("tap9", tmp_path / "net") is None
    task = tmp_path / "proc" / "42" / "task" / "43"
    task.mkdir(parents=True)
    ticks = os.sysconf("SC_CLK_TCK")
    # a thread name with spaces and a ')' of its own: fields count from the last ')'
    (task / "stat").write_text(f"43 (CPU 0/TCG) x) R 1 2 3 4 5 6 7 8 9 10 {3 * ticks} "
                               f"{ticks} 0 0 20 0 1 0 100 0 0\n")
    assert thread_seconds(42, 43, tmp_path / "proc") == 4.0
    assert thread_seconds(42, 44, tmp_path / "proc") is None


def _sample(t: float, cpu: float, vcpu: float, rd: int, wr: int,
            rx: int | None = None) -> DomainSample:
    nic = (NicCounters(0, "00:16:3e:00:00:01", "user", unavailable=USER_NET_UNAVAILABLE)
           if rx is None else
           NicCounters(0, "00:16:3e:00:00:01", "bridge", rx_bytes=rx, tx_bytes=rx // 2,
                       rx_packets=1, tx_packets=1, source="tap0"))
    return DomainSample(
        name="web", domid=3, state="running", monotonic=t, wallclock=1e9 + t,
        cpu_seconds=cpu, vcpus=(VcpuTime(0, 77, vcpu),), memory_actual_kib=262144,
        memory_target_kib=262144, memory_max_kib=524288,
        disks=(DiskCounters("xvda", rd, wr, rd // 4096, wr // 4096),), nics=(nic,))


def test_rates_between_two_samples() -> None:
    before = _sample(100.0, 10.0, 8.0, 0, 0, rx=1000)
    after = _sample(102.0, 11.0, 8.5, 8192 * 1024, 4096 * 1024, rx=3048)
    figures = rates(before, after)
    assert figures.interval == 2.0
    assert figures.cpu_percent == pytest.approx(50.0)
    assert figures.vcpu_percent == (pytest.approx(25.0),)
    assert figures.rd_bytes_per_s == 4096 * 1024 and figures.wr_bytes_per_s == 2048 * 1024
    assert figures.rd_ops_per_s == 1024 and figures.wr_ops_per_s == 512
    assert figures.rx_bytes_per_s == 1024 and figures.tx_bytes_per_s == 512
    row = dict(zip(TOP_COLUMNS, top_row(figures), strict=True))
    assert row["CPU(%)"] == "50.0" and row["RD(KiB/s)"] == "4096.0"
    assert row["MEM(k)"] == "262144" and row["NETRX(KiB/s)"] == "1.0"


def test_no_counters_is_a_dash_not_a_zero_and_a_restart_counts_from_zero() -> None:
    figures = rates(_sample(0.0, 50.0, 40.0, 9000, 9000), _sample(1.0, 0.5, 0.5, 4096, 0))
    assert figures.cpu_percent == pytest.approx(50.0)  # QEMU restarted: 0.5 s of 1 s
    assert figures.rd_bytes_per_s == 4096 and figures.wr_bytes_per_s == 0
    assert figures.rx_bytes_per_s is None
    row = dict(zip(TOP_COLUMNS, top_row(figures), strict=True))
    assert row["NETRX(KiB/s)"] == "-" and row["NETTX(KiB/s)"] == "-"


def test_the_batch_table_and_the_virsh_text() -> None:
    figures = rates(_sample(0.0, 1.0, 1.0, 0, 0), _sample(1.0, 1.5, 1.2, 4096, 0))
    table = format_top([top_row(figures)]).splitlines()
    assert table[0].split() == list(TOP_COLUMNS)
    assert table[1].split()[:3] == ["web", "3", "running"]
    assert len({len(line) for line in table}) == 1  # aligned columns
    lines = stats_lines(figures.sample)
    assert lines[0] == "Domain: 'web'"
    assert "  cpu.time=1500000000" in lines and "  vcpu.0.time=1200000000" in lines
    assert "  block.0.name=xvda" in lines and "  block.0.rd.bytes=4096" in lines
    assert f"  net.0.unavailable={USER_NET_UNAVAILABLE}" in lines
    document = figures.sample.to_json()
    assert document["net"][0]["rx_bytes"] is None
    assert document["memory"] == {"actual_kib": 262144, "target_kib": 262144,
                                  "max_kib": 524288}
    # as domstats --json prints it: valid against the schema (a NIC without counters too)
    printed = json.dumps(envelope("domstats", {"domains": [document], "skipped": []}))
    assert jsonout.result(printed, "domstats")["domains"] == [document]


def test_domstats_and_top_of_no_domain_and_of_an_unknown_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / "state"))

    def run(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        out, err = capsys.readouterr()
        return int(exit_.value.code or 0), out, err

    code, out, err = run("domstats", "--json")
    assert (code, err) == (0, "")
    assert jsonout.result(out, "domstats") == {"domains": [], "skipped": []}
    code, out, err = run("domstats", "ghost")
    assert (code, out) == (1, "") and err == "pvhvm: error: no domain named 'ghost'\n"
    code, out, err = run("top", "-b", "-d", "0.1")
    assert code == 0 and out.split() == list(TOP_COLUMNS)


class FakeLibvirtDomain:
    """libvirt.virDomain's statistics calls, answering as libvirt 9.0 does."""

    XML = """<domain><devices>
      <disk type='file' device='disk'><source file='/i/root.img'/><target dev='vda'/>
        <alias name='ua-disk-xvda'/></disk>
      <disk type='file' device='cdrom'><target dev='hdc'/><alias name='ua-disk-hdc'/></disk>
      <interface type='user'><mac address='00:16:3e:00:00:01'/><alias name='ua-vif-0'/>
      </interface>
      <interface type='bridge'><mac address='00:16:3e:00:00:02'/><target dev='vnet3'/>
        <alias name='ua-vif-1'/></interface>
    </devices></domain>"""

    def getCPUStats(self, total: bool) -> list[dict[str, int]]:
        return [{"cpu_time": 2_500_000_000, "user_time": 1, "system_time": 1}]

    def vcpus(self) -> tuple[list[tuple[int, int, int, int]], list[object]]:
        return [(0, 1, 1_000_000_000, 0), (1, 1, 500_000_000, 1)], []

    def memoryStats(self) -> dict[str, int]:
        return {"actual": 131072, "rss": 99}

    def maxMemory(self) -> int:
        return 262144

    def XMLDesc(self, flags: int) -> str:
        return self.XML

    def blockStats(self, dev: str) -> tuple[int, int, int, int, int]:
        assert dev == "vda"
        return 10, 40960, 2, 8192, -1

    def interfaceStats(self, dev: str) -> tuple[int, ...]:
        assert dev == "vnet3"
        return 100, 2, 0, 0, 300, 4, 0, 0


def test_libvirt_figures_are_mapped_to_pvhvms_devices() -> None:
    record = DomainRecord(
        name="lv", domid=5, uuid="u", platform="libvirt", memory_mib=128, vcpus=2,
        plan={"disks": [{"vdev": "xvda"}, {"vdev": "hdc"}], "vifs": []}, argv=[],
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", state="running")
    sample = libvirt_sample(record, FakeLibvirtDomain())
    assert sample.cpu_seconds == 2.5
    assert sample.vcpus == (VcpuTime(0, None, 1.0), VcpuTime(1, None, 0.5))
    assert (sample.memory_actual_kib, sample.memory_target_kib,
            sample.memory_max_kib) == (131072, 131072, 262144)
    assert sample.disks == (DiskCounters("xvda", 40960, 8192, 10, 2),)  # the empty CD: none
    user, bridged = sample.nics
    assert user.devid == 0 and user.rx_bytes is None and user.unavailable
    assert bridged == NicCounters(1, "00:16:3e:00:00:02", "bridge", rx_bytes=100,
                                  tx_bytes=300, rx_packets=2, tx_packets=4, source="vnet3")


def test_the_xen_platform_points_at_xl_top() -> None:
    with pytest.raises(NotOnPlatformError) as info:
        XenPlatform().domain_stats("g")
    assert str(info.value) == ("domain 'g' is on the xen platform: no hypervisor runs it on "
                               "this host to measure; on a Xen host use 'xl top' (xentop)")
