"""Live figures of a running domain on the qemu platform, as ``xl top`` (xentop) and
``virsh domstats`` give them: CPU, memory, block and network I/O.

Where each figure comes from (QEMU 7.2, Linux):

* CPU: the QEMU process's user + system time (``/proc/PID/stat``), and per vCPU the time of
  its thread (QMP ``query-cpus-fast`` names each vCPU's ``thread-id``;
  ``/proc/PID/task/TID/stat``). The process time includes QEMU's own threads (I/O, the
  iothreads), as xentop's figure for a stub domain includes its device model.
* memory: the balloon's ``actual`` (QMP ``query-balloon``), what the guest has now, beside
  the target mem-set gave and the static maximum (``-m``).
* block: QMP ``query-blockstats``, one entry per disk: bytes and operations read and written
  (a disk is known by its block backend ``disk-<vdev>``, or for a hot-plugged one by its
  device ``vbd-<devid>``).
* network: QEMU 7.2 keeps no per-netdev counters it would report (there is no
  ``query-netdev``; ``info network`` shows none; virtio-net exposes no byte counters over
  QOM). A NIC on a bridge is a tap device whose counters the host kernel keeps
  (``/sys/class/net/TAP/statistics``; the tap's name is in the ``iff:`` line of the tun
  descriptor's ``/proc/PID/fdinfo``): taken when the domain has exactly one tap and one NIC
  on a bridge, so the match is certain. A NIC on QEMU user networking (slirp) has no
  counters anywhere: said so, never a made-up zero.

On the libvirt platform the same figures come from libvirt (:func:`libvirt_sample`):
``getCPUStats`` (the domain's CPU time), ``vcpus`` (each vCPU's), ``memoryStats`` (the
balloon's ``actual``), ``blockStats`` per disk and ``interfaceStats`` per NIC (by the target
device in the live XML; a user-networking NIC has none there either).

A :class:`DomainSample` holds cumulative counters at one moment; :func:`rates` turns two
samples of one domain into per-second figures (what ``top`` shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPError

from pvhvm.errors import DomainError
from pvhvm.qemu import qmp
from pvhvm.runtime.state import DomainPaths, DomainRecord, DomainState, qemu_alive

#: seconds one QMP command may take
QMP_TIMEOUT = 10.0
#: why a NIC on user networking has no figures
USER_NET_UNAVAILABLE = ("QEMU user networking (slirp) keeps no traffic counters QEMU 7.2 "
                        "reports (no query-netdev)")


@dataclass(frozen=True)
class VcpuTime:
    """One vCPU: its index, the QEMU thread that runs it and that thread's CPU seconds."""

    index: int
    #: None where the thread is not known (libvirt's vcpus() does not say)
    thread_id: int | None
    seconds: float


@dataclass(frozen=True)
class DiskCounters:
    """One disk's cumulative I/O (QMP BlockDeviceStats)."""

    vdev: str
    rd_bytes: int
    wr_bytes: int
    rd_ops: int
    wr_ops: int


@dataclass(frozen=True)
class NicCounters:
    """One NIC's cumulative traffic as the guest sees it (rx: to the guest), or None with
    the reason in ``unavailable``."""

    devid: int
    mac: str
    backend: str
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    rx_packets: int | None = None
    tx_packets: int | None = None
    #: where the counters come from (``tap0``), or None
    source: str | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class DomainSample:
    """A running domain's counters at one moment (``monotonic``: time.monotonic())."""

    name: str
    domid: int
    state: str
    monotonic: float
    wallclock: float
    cpu_seconds: float
    vcpus: tuple[VcpuTime, ...]
    memory_actual_kib: int | None
    memory_target_kib: int
    memory_max_kib: int
    disks: tuple[DiskCounters, ...]
    nics: tuple[NicCounters, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``domstats --json`` object of one domain (counters since QEMU started)."""
        return {
            "name": self.name, "domid": self.domid, "state": self.state,
            "time": self.wallclock,
            "cpu": {"seconds": self.cpu_seconds,
                    "vcpus": [{"vcpu": v.index, "thread_id": v.thread_id,
                               "seconds": v.seconds} for v in self.vcpus]},
            "memory": {"actual_kib": self.memory_actual_kib,
                       "target_kib": self.memory_target_kib,
                       "max_kib": self.memory_max_kib},
            "block": [{"vdev": d.vdev, "rd_bytes": d.rd_bytes, "wr_bytes": d.wr_bytes,
                       "rd_ops": d.rd_ops, "wr_ops": d.wr_ops} for d in self.disks],
            "net": [{"devid": n.devid, "mac": n.mac, "backend": n.backend,
                     "rx_bytes": n.rx_bytes, "tx_bytes": n.tx_bytes,
                     "rx_packets": n.rx_packets, "tx_packets": n.tx_packets,
                     "source": n.source, "unavailable": n.unavailable} for n in self.nics],
        }


@dataclass(frozen=True)
class DomainRates:
    """Per-second figures between two samples of one domain (what ``top`` shows)."""

    sample: DomainSample
    interval: float
    cpu_percent: float
    vcpu_percent: tuple[float, ...]
    rd_bytes_per_s: float
    wr_bytes_per_s: float
    rd_ops_per_s: float
    wr_ops_per_s: float
    #: None when no NIC of the domain has counters
    rx_bytes_per_s: float | None = None
    tx_bytes_per_s: float | None = None
    per_disk: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


# --- /proc ---------------------------------------------------------------------------------


def _stat_seconds(stat_file: Path) -> float | None:
    """utime + stime of a /proc stat file in seconds, None when it cannot be read."""
    try:
        text = stat_file.read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15 (proc(5))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_seconds(pid: int, thread_id: int, proc: Path = Path("/proc")) -> float | None:
    """CPU seconds of one thread of ``pid`` (a vCPU's), None when it is gone."""
    return _stat_seconds(proc / str(pid) / "task" / str(thread_id) / "stat")


def process_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    return _stat_seconds(proc / str(pid) / "stat")


def tap_names(pid: int, proc: Path = Path("/proc")) -> list[str]:
    """The tap devices ``pid`` holds open: the ``iff:`` line the tun driver writes in each of
    its descriptors' fdinfo (drivers/net/tun.c, tun_chr_show_fdinfo)."""
    names: list[str] = []
    try:
        entries = sorted((proc / str(pid) / "fdinfo").iterdir(), key=lambda p: int(p.name))
    except (OSError, ValueError):
        return names
    for entry in entries:
        try:
            text = entry.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "iff" and value.strip():
                names.append(value.strip())
    return names


def interface_counters(name: str, sys_net: Path = Path("/sys/class/net")
                       ) -> dict[str, int] | None:
    """rx/tx bytes and packets of a host interface (the kernel's statistics/), or None."""
    counters = {}
    for key in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"):
        try:
            counters[key] = int((sys_net / name / "statistics" / key).read_text())
        except (OSError, ValueError):
            return None
    return counters


# --- QMP results → counters (pure) -----------------------------------------------------------


def disk_counters(blockstats: Iterable[Mapping[str, Any]], plan: Mapping[str, Any]
                  ) -> list[DiskCounters]:
    """One entry per disk of the domain's plan, from QMP ``query-blockstats``: matched by the
    block backend ``disk-<vdev>`` (-drive id) or the device ``vbd-<devid>`` (hot-plugged)."""
    by_devid = {str(d.get("devid")): str(d.get("vdev")) for d in plan.get("disks", [])}
    known = set(by_devid.values())
    out: list[DiskCounters] = []
    for entry in blockstats:
        vdev = None
        device = str(entry.get("device") or "")
        if device.startswith("disk-") and device[5:] in known:
            vdev = device[5:]
        qdev = str(entry.get("qdev") or "")
        for part in qdev.split("/"):
            if vdev is None and part.startswith("vbd-"):
                vdev = by_devid.get(part[4:])
        node = str(entry.get("node-name") or "")
        if vdev is None and node.startswith("disk-") and node[5:] in known:
            vdev = node[5:]
        if vdev is None:
            continue
        stats = entry.get("stats") or {}
        out.append(DiskCounters(
            vdev=vdev, rd_bytes=int(stats.get("rd_bytes", 0)),
            wr_bytes=int(stats.get("wr_bytes", 0)),
            rd_ops=int(stats.get("rd_operations", 0)),
            wr_ops=int(stats.get("wr_operations", 0))))
    order = {str(d.get("vdev")): i for i, d in enumerate(plan.get("disks", []))}
    return sorted(out, key=lambda d: order.get(d.vdev, len(order)))


def nic_counters(vifs: Iterable[Mapping[str, Any]], bridged: set[int], taps: list[str],
                 counters_of: Callable[[str], dict[str, int] | None] = interface_counters,
                 ) -> list[NicCounters]:
    """Each NIC's counters: a NIC on a bridge takes the tap's (rx/tx swapped: what the tap
    sends the guest receives) when it is the only one and QEMU holds exactly one tap."""
    vifs = list(vifs)
    out: list[NicCounters] = []
    for vif in vifs:
        devid = int(vif.get("devid") or 0)
        mac = str(vif.get("mac"))
        if devid not in bridged:
            out.append(NicCounters(devid, mac, "user", unavailable=USER_NET_UNAVAILABLE))
            continue
        if len(bridged) != 1 or len(taps) != 1:
            out.append(NicCounters(
                devid, mac, "bridge",
                unavailable=f"QEMU holds {len(taps)} tap device(s) for {len(bridged)} NIC(s) "
                            "on bridges; which is which is not certain"))
            continue
        host = counters_of(taps[0])
        if host is None:
            out.append(NicCounters(devid, mac, "bridge",
                                   unavailable=f"tap {taps[0]} has no statistics"))
            continue
        out.append(NicCounters(
            devid, mac, "bridge", rx_bytes=host["tx_bytes"], tx_bytes=host["rx_bytes"],
            rx_packets=host["tx_packets"], tx_packets=host["rx_packets"], source=taps[0]))
    return out


def bridged_devids(argv: Iterable[str]) -> set[int]:
    """devids of the NICs QEMU put on a bridge: ``-netdev bridge,id=netN,...`` in the argv
    (create's and the hot-plugged ones', which the record's argv carries)."""
    argv = list(argv)
    devids: set[int] = set()
    for option, value in itertools.pairwise(argv):
        if option != "-netdev" or not value.startswith("bridge,"):
            continue
        for item in value.split(","):
            key, _, text = item.partition("=")
            if key == "id" and text.startswith("net") and text[3:].isdigit():
                devids.add(int(text[3:]))
    return devids


# --- a sample ----------------------------------------------------------------------------------


async def _query(socket: Path) -> dict[str, Any]:
    client = await qmp.connect(socket, "pvhvm-stats", timeout=QMP_TIMEOUT)
    results: dict[str, Any] = {}
    try:
        for command in ("query-cpus-fast", "query-balloon", "query-blockstats"):
            try:
                results[command] = await asyncio.wait_for(client.execute(command),
                                                          QMP_TIMEOUT)
            except ExecuteError:
                results[command] = None  # no balloon (an old domain): no figure
    except (TimeoutError, QMPError, OSError, EOFError) as err:
        raise DomainError(f"QMP on {socket} failed: {err}") from err
    finally:
        with contextlib.suppress(QMPError, OSError, EOFError):
            await client.disconnect()
    return results


def sample(record: DomainRecord, paths: DomainPaths) -> DomainSample:
    """The counters of ``record``'s running (or paused) QEMU now; DomainError otherwise."""
    state = record.domain_state
    if state not in (DomainState.RUNNING, DomainState.PAUSED) or record.qemu_pid is None \
            or not qemu_alive(record, paths):
        raise DomainError(f"domain {record.name!r} is {state.value}: no QEMU runs it to "
                          "measure")
    pid = record.qemu_pid
    results = asyncio.run(_query(paths.control_socket))
    monotonic, wallclock = time.monotonic(), time.time()
    cpu = process_seconds(pid)
    if cpu is None:
        raise DomainError(f"domain {record.name!r}: its QEMU (pid {pid}) is gone")
    vcpus: list[VcpuTime] = []
    for entry in results.get("query-cpus-fast") or []:
        thread_id = int(entry.get("thread-id", 0))
        seconds = thread_seconds(pid, thread_id)
        if seconds is not None:
            vcpus.append(VcpuTime(int(entry.get("cpu-index", len(vcpus))), thread_id, seconds))
    balloon = results.get("query-balloon")
    actual = (int(balloon["actual"]) // 1024
              if isinstance(balloon, dict) and "actual" in balloon else None)
    plan = record.plan
    target = int(plan.get("memory_target_kib") or record.memory_mib * 1024)
    maximum = int(plan.get("maxmem") or plan.get("memory") or record.memory_mib) * 1024
    disks = disk_counters(results.get("query-blockstats") or [], plan)
    nics = nic_counters(plan.get("vifs", []), bridged_devids(record.argv), tap_names(pid))
    return DomainSample(
        name=record.name, domid=record.domid, state=state.value, monotonic=monotonic,
        wallclock=wallclock, cpu_seconds=cpu, vcpus=tuple(sorted(vcpus, key=lambda v: v.index)),
        memory_actual_kib=actual, memory_target_kib=target, memory_max_kib=maximum,
        disks=tuple(disks), nics=tuple(nics))


def rates(before: DomainSample, after: DomainSample) -> DomainRates:
    """Per-second figures between two samples of one domain (counters that went down, as
    after a QEMU restart, count from zero)."""
    interval = max(after.monotonic - before.monotonic, 1e-6)

    def per_s(old: float, new: float) -> float:
        return max(new - old if new >= old else new, 0.0) / interval

    earlier = {v.index: v.seconds for v in before.vcpus}
    vcpu_percent = tuple(100 * per_s(earlier.get(v.index, v.seconds), v.seconds)
                         for v in after.vcpus)
    old_disks = {d.vdev: d for d in before.disks}
    per_disk: dict[str, tuple[float, float, float, float]] = {}
    for disk in after.disks:
        old = old_disks.get(disk.vdev, disk)
        per_disk[disk.vdev] = (per_s(old.rd_bytes, disk.rd_bytes),
                               per_s(old.wr_bytes, disk.wr_bytes),
                               per_s(old.rd_ops, disk.rd_ops), per_s(old.wr_ops, disk.wr_ops))
    old_nics = {n.devid: n for n in before.nics}
    rx: float | None = None
    tx: float | None = None
    for nic in after.nics:
        old_nic = old_nics.get(nic.devid)
        if nic.rx_bytes is None or nic.tx_bytes is None or old_nic is None \
                or old_nic.rx_bytes is None or old_nic.tx_bytes is None:
            continue
        rx = (rx or 0.0) + per_s(old_nic.rx_bytes, nic.rx_bytes)
        tx = (tx or 0.0) + per_s(old_nic.tx_bytes, nic.tx_bytes)
    return DomainRates(
        sample=after, interval=interval,
        cpu_percent=100 * per_s(before.cpu_seconds, after.cpu_seconds),
        vcpu_percent=vcpu_percent,
        rd_bytes_per_s=sum(r[0] for r in per_disk.values()),
        wr_bytes_per_s=sum(r[1] for r in per_disk.values()),
        rd_ops_per_s=sum(r[2] for r in per_disk.values()),
        wr_ops_per_s=sum(r[3] for r in per_disk.values()),
        rx_bytes_per_s=rx, tx_bytes_per_s=tx, per_disk=per_disk)


# --- libvirt -------------------------------------------------------------------------------


def _alias(element: ET.Element) -> str:
    alias = element.find("alias")
    return "" if alias is None else str(alias.get("name") or "")


def libvirt_sample(record: DomainRecord, dom: Any) -> DomainSample:
    """The counters libvirt gives for ``dom`` (a libvirt.virDomain of ``record``), as
    ``virsh domstats`` reads them; libvirt's errors are the caller's to turn into lines."""
    state = record.domain_state
    monotonic, wallclock = time.monotonic(), time.time()
    cpu = dom.getCPUStats(True)[0]
    vcpus = tuple(VcpuTime(int(number), None, int(cpu_time) / 1e9)
                  for number, _state, cpu_time, _cpu in dom.vcpus()[0])
    memory = dom.memoryStats()
    live = ET.fromstring(dom.XMLDesc(0))
    by_alias = {f"ua-disk-{d.get('vdev')}": str(d.get("vdev"))
                for d in record.plan.get("disks", [])}
    disks = []
    for disk in live.findall("devices/disk"):
        target = disk.find("target")
        dev = None if target is None else target.get("dev")
        if dev is None or disk.find("source") is None:
            continue  # an empty CD drive has nothing to count
        rd_ops, rd_bytes, wr_ops, wr_bytes, _errors = dom.blockStats(dev)
        disks.append(DiskCounters(by_alias.get(_alias(disk), dev), int(rd_bytes),
                                  int(wr_bytes), int(rd_ops), int(wr_ops)))
    nics = []
    for interface in live.findall("devices/interface"):
        alias = _alias(interface)
        devid = int(alias[7:]) if alias.startswith("ua-vif-") and alias[7:].isdigit() else -1
        mac_element = interface.find("mac")
        mac = "" if mac_element is None else str(mac_element.get("address"))
        backend = "user" if interface.get("type") == "user" else "bridge"
        target = interface.find("target")
        dev = None if target is None else target.get("dev")
        if dev is None:
            nics.append(NicCounters(devid, mac, backend, unavailable=(
                "libvirt has no host device for this NIC to count (user networking)")))
            continue
        rx_bytes, rx_packets, _e, _d, tx_bytes, tx_packets, _te, _td = dom.interfaceStats(dev)
        nics.append(NicCounters(devid, mac, backend, rx_bytes=int(rx_bytes),
                                tx_bytes=int(tx_bytes), rx_packets=int(rx_packets),
                                tx_packets=int(tx_packets), source=dev))
    # the static maximum the domain booted with (<memory>, KiB)
    maximum = int(dom.maxMemory())
    return DomainSample(
        name=record.name, domid=record.domid, state=state.value, monotonic=monotonic,
        wallclock=wallclock, cpu_seconds=int(cpu.get("cpu_time", 0)) / 1e9, vcpus=vcpus,
        memory_actual_kib=int(memory["actual"]) if "actual" in memory else None,
        memory_target_kib=int(record.plan.get("memory_target_kib")
                              or record.memory_mib * 1024),
        memory_max_kib=int(maximum), disks=tuple(disks), nics=tuple(nics))
