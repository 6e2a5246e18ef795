"""``pvhvm bench net``: TCP throughput and ping latency through a PV NIC and emulated NICs.

Topology (netenv.py): a private Linux bridge ``pvbench0`` with the host's address 10.213.0.1/24
and the host's ``iperf3 -s`` bound to it; each guest's NIC is a tap on that bridge, made by
QEMU's ``-netdev bridge`` (qemu-bridge-helper). That is pvhvm's own path: the guest config has
``vif = ["bridge=pvbench0, ..."]`` and the bridge exists, so ``qemu_argv`` gives it
``-netdev bridge``. User networking (slirp) is not used: it copies every packet through
QEMU's own TCP/IP stack, which would be the bottleneck for every NIC alike.

Fairness: every guest boots the same kernel, initramfs, iperf3 binary, run file, vCPUs, memory,
MAC and IP; the same netdev backend on the same bridge to the same server. Only the ``vif``
line's type/model changes (``type=xenbus`` → virtio-net-pci; ``type=ioemu,model=e1000|rtl8139``).
Guests run one after the other, so they never compete. The host running the same iperf3 client
against its own bridge address is the upper bound (it never leaves the host's kernel).

Jobs: ``tcp-tx`` (guest → host, iperf3), ``tcp-rx`` (host → guest, ``iperf3 -R``), ``ping``
(busybox ping, one request outstanding: round-trip latency, and 1/RTT as a request/response
rate). MB/s is the receiver's byte count over the measured time (10^6 bytes per second).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from pvhvm.bench import BenchError
from pvhvm.bench.guest import BOOTED, DONE, JOB_END, _read, _tail, job_results, split_console
from pvhvm.bench.io import host_facts
from pvhvm.bench.netenv import Network, bench_network, flush_neighbours
from pvhvm.config.domain import config_from_text
from pvhvm.guest import debs, initramfs
from pvhvm.guest.bench import BenchExtra, build_net_extra
from pvhvm.guest.kit import Kit, build_kit
from pvhvm.hostfs import cache_home
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.qemu.argv import Accel, ArgvOptions, RunPaths, qemu_argv

SCHEMA = "pvhvm-bench-net/1"
NIC = "PVHVM-BENCH-NIC"
GUEST_MEMORY_MIB = 512
GUEST_VCPUS = 2
GUEST_MAC = "00:16:3e:d5:00:02"
CMDLINE = "console=ttyS0,115200 quiet rdinit=/bench/net-init"
_PING_RE = re.compile(
    r"(\d+) packets transmitted, (\d+) packets received.*?"
    r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms", re.S,
)


@dataclass(frozen=True)
class NicSetup:
    """One guest NIC: the vif line's type and model."""

    name: str
    device: str  # "xenbus" | "ioemu"
    model: str | None = None

    def vif(self, net: Network) -> str:
        spec = f"bridge={net.bridge}, mac={GUEST_MAC}, type={self.device}"
        return spec + (f", model={self.model}" if self.model else "")


SETUPS = (
    NicSetup("virtio-net", "xenbus"),
    NicSetup("e1000", "ioemu", "e1000"),
    NicSetup("rtl8139", "ioemu", "rtl8139"),
)
SETUP_NAMES = tuple(s.name for s in SETUPS)
JOB_NAMES = ("tcp-tx", "tcp-rx", "ping")
HOST_SETUP = "loopback"  # the host's client to its own bridge address


@dataclass(frozen=True)
class NetParams:
    duration_s: int = 10
    omit_s: int = 2
    ping_count: int = 500
    ping_interval_s: float = 0.01


FULL = NetParams()
QUICK = NetParams(duration_s=5, omit_s=1, ping_count=200)
TINY = NetParams(duration_s=2, omit_s=0, ping_count=20)


@dataclass(frozen=True)
class NetOptions:
    params: NetParams = FULL
    jobs: tuple[str, ...] = JOB_NAMES
    setups: tuple[NicSetup, ...] = SETUPS
    host: bool = True
    accel: Accel = Accel.TCG
    kit_dir: Path = field(default_factory=lambda: cache_home() / "image")
    workdir: Path | None = None
    network: Network = field(default_factory=Network)


def net_options(
    *, quick: bool, tiny: bool, setups: list[str] | None, jobs: list[str] | None,
    no_host: bool = False, kit_dir: Path | None = None, workdir: Path | None = None,
) -> NetOptions:
    """Options from the CLI's flags: tiny < quick < full."""
    params = TINY if tiny else QUICK if quick else FULL
    if jobs is None:
        jobs = ["tcp-tx"] if tiny else list(JOB_NAMES)
    for job in jobs:
        if job not in JOB_NAMES:
            raise BenchError(f"unknown net job {job!r} (known: {', '.join(JOB_NAMES)})")
    if setups is None:
        setups = ["virtio-net"] if tiny else list(SETUP_NAMES)
    chosen = []
    for name in setups:
        match = [s for s in SETUPS if s.name == name]
        if not match:
            raise BenchError(f"unknown NIC setup {name!r} (known: {', '.join(SETUP_NAMES)})")
        chosen.append(match[0])
    options = NetOptions(params=params, jobs=tuple(jobs), setups=tuple(chosen), host=not no_host,
                         workdir=workdir)
    if kit_dir is not None:
        options = NetOptions(**{**options.__dict__, "kit_dir": kit_dir})
    return options


@dataclass
class NetResult:
    """One job's figures. Throughput jobs fill mbps; ping fills the latency fields."""

    job: str
    device: str  # "xenbus" | "ioemu" | "host"
    setup: str
    mbps: float | None = None  # MB/s (10^6 bytes/s) at the receiver
    gbit_s: float | None = None
    retransmits: int | None = None
    #: iperf3's CPU use: the client (guest, or host for host rows) and the server (host)
    client_cpu_pct: float | None = None
    server_cpu_pct: float | None = None
    rtt_us: float | None = None
    rtt_max_us: float | None = None
    rr_per_s: float | None = None  # 1 / mean RTT: request/response rate, one outstanding
    loss_pct: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def parse_iperf_json(text: str, job: str, device: str, setup: str) -> NetResult:
    """A row from ``iperf3 -J`` output (3.x): the receiver's rate, the sender's retransmits."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except ValueError as err:
        raise BenchError(f"{job} ({setup}): iperf3 printed no JSON: {err}") from err
    if not isinstance(data, dict):
        raise BenchError(f"{job} ({setup}): iperf3 printed no JSON")
    if data.get("error"):
        raise BenchError(f"{job} ({setup}): iperf3: {data['error']}")
    try:
        end = data["end"]
        received = float(end["sum_received"]["bits_per_second"])
        retransmits = end.get("sum_sent", {}).get("retransmits")
        cpu = end.get("cpu_utilization_percent", {})
    except (KeyError, TypeError, ValueError) as err:
        raise BenchError(f"{job} ({setup}): unexpected iperf3 JSON: {err}") from err
    return NetResult(
        job=job, device=device, setup=setup, mbps=received / 8e6, gbit_s=received / 1e9,
        retransmits=int(retransmits) if retransmits is not None else None,
        client_cpu_pct=cpu.get("host_total"), server_cpu_pct=cpu.get("remote_total"),
    )


def parse_ping(text: str, job: str, device: str, setup: str) -> NetResult:
    """A row from busybox ping's summary (``round-trip min/avg/max = a/b/c ms``)."""
    match = _PING_RE.search(text)
    if match is None:
        raise BenchError(f"{job} ({setup}): no ping summary in: {text.strip()[-300:]}")
    sent, received = int(match.group(1)), int(match.group(2))
    avg_us = float(match.group(4)) * 1000
    return NetResult(
        job=job, device=device, setup=setup, rtt_us=avg_us,
        rtt_max_us=float(match.group(5)) * 1000,
        rr_per_s=1e6 / avg_us if avg_us > 0 else None,
        loss_pct=100.0 * (sent - received) / sent if sent else None,
    )


def parse_job(text: str, job: str, device: str, setup: str) -> NetResult:
    if job == "ping":
        return parse_ping(text, job, device, setup)
    return parse_iperf_json(text, job, device, setup)


def parse_console(text: str, setup: NicSetup) -> tuple[list[NetResult], str]:
    """Job rows and the NIC line from a benchmark guest's console log."""
    jobs, nic_line = split_console(text, NIC)
    results = job_results(
        jobs, setup.name, lambda output, job: parse_job(output, job, setup.device, setup.name)
    )
    return results, nic_line


# --- guests -----------------------------------------------------------------------------------

def guest_config(setup: NicSetup, net: Network, kit: Kit, initrd: Path, name: str) -> str:
    """The xl-style config of a NIC benchmark guest: no disk, one NIC on the bench bridge."""
    return "\n".join([
        f'name = "{name}"', 'builder = "hvm"',
        f"memory = {GUEST_MEMORY_MIB}",
        f"vcpus = {GUEST_VCPUS}",
        f'kernel = "{kit.vmlinuz}"',
        f'ramdisk = "{initrd}"',
        f'extra = "{CMDLINE}"',
        f'vif = [ "{setup.vif(net)}" ]',
        'on_poweroff = "destroy"',
        'on_reboot = "destroy"',
        'on_crash = "destroy"',
        "",
    ])


def run_env(options: NetOptions) -> str:
    p, n = options.params, options.network
    values = {
        "BENCH_JOBS": " ".join(options.jobs), "HOST_IP": n.host_ip, "GUEST_IP": n.guest_ip,
        "PREFIX": n.prefix, "PORT": n.port, "DURATION": p.duration_s, "OMIT": p.omit_s,
        "PING_COUNT": p.ping_count, "PING_INTERVAL": p.ping_interval_s,
    }
    return "".join(f'{key}="{value}"\n' for key, value in values.items())


def write_initrd(kit: Kit, extra: BenchExtra, options: NetOptions, output: Path) -> None:
    """kit initramfs (gzip) + iperf3 extra + run archive, each padded to 512 bytes."""
    with open(output, "wb") as out:
        for part in (kit.initramfs, extra.archive):
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
            out.write(b"\0" * (-out.tell() % 512))
        out.write(initramfs.cpio_newc([
            initramfs.CpioEntry.directory("bench"),
            initramfs.CpioEntry.file("bench/run.env", run_env(options).encode()),
        ]))


@dataclass
class GuestRecord:
    setup: str
    device: str
    vif: str
    boot_s: float = 0.0
    wall_s: float = 0.0
    nic: str = ""
    argv: list[str] = field(default_factory=list)


def run_guest(
    setup: NicSetup, options: NetOptions, kit: Kit, initrd: Path, workdir: Path, *,
    timeout: float = 600, on_progress: Callable[[int], None] | None = None,
) -> tuple[list[NetResult], GuestRecord]:
    """Boot one guest on the bench bridge, wait for it to power off, parse its console."""
    net = options.network
    name = f"bench-net-{setup.name}"
    rundir = workdir / name
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    config = config_from_text(guest_config(setup, net, kit, initrd, name), f"{rundir}/cfg")
    plan = make_plan(config, Platform.QEMU)
    sockets = Path(tempfile.mkdtemp(prefix="pvq-", dir="/tmp"))  # sun_path < 108 bytes
    paths = RunPaths(
        qmp_socket=sockets / "qmp", control_socket=sockets / "ctl",
        console_socket=sockets / "con", console_log=rundir / "console.log",
    )
    argv = qemu_argv(plan, paths, ArgvOptions(
        accel=options.accel, supervised=False, bridges=frozenset({net.bridge}),
    ))
    if f"bridge,id=net0,br={net.bridge}" not in " ".join(argv):
        raise BenchError(f"{name}: pvhvm did not put the NIC on {net.bridge}: {argv}")
    record = GuestRecord(setup=setup.name, device=setup.device, vif=setup.vif(net), argv=argv)
    flush_neighbours(net.bridge)
    qemu_log = rundir / "qemu.log"
    start = time.monotonic()
    try:
        with open(qemu_log, "wb") as log_file:
            proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                seen = 0
                while proc.poll() is None:
                    if time.monotonic() - start > timeout:
                        raise BenchError(f"{name} did not finish in {timeout:.0f} s: "
                                         + _tail(paths.console_log))
                    text = _read(paths.console_log)
                    if not record.boot_s and BOOTED in text:
                        record.boot_s = round(time.monotonic() - start, 2)
                    done = text.count(JOB_END)
                    if on_progress is not None and done != seen:
                        seen = done
                        on_progress(done)
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    record.wall_s = round(time.monotonic() - start, 2)
    text = _read(paths.console_log)
    if DONE not in text:
        raise BenchError(
            f"{name} stopped before finishing (QEMU exit {proc.returncode}; "
            f"{_read(qemu_log).strip()[-500:]}): " + _tail(paths.console_log)
        )
    results, record.nic = parse_console(text, setup)
    if len(results) != len(options.jobs):
        raise BenchError(f"{name}: {len(results)} of {len(options.jobs)} jobs reported")
    return results, record


# --- host -------------------------------------------------------------------------------------

def host_busybox(kit_dir: Path, workdir: Path) -> Path:
    """The kit's static busybox (for the host's ping row: the host may have no ping)."""
    deb = debs.fetch(["busybox-static"], kit_dir.resolve() / "debs")["busybox-static"]
    debs.unpack(deb, workdir / "busybox")
    return workdir / "busybox" / "bin" / "busybox"


def run_host_job(job: str, options: NetOptions, busybox: Path | None) -> NetResult:
    """The same job from the host to its own bridge address: the upper bound."""
    p, n = options.params, options.network
    if job == "ping":
        if busybox is None:
            raise BenchError("no busybox for the host's ping")
        argv = [str(busybox), "ping", "-q", "-c", str(p.ping_count), "-i",
                str(p.ping_interval_s), n.host_ip]
    else:
        argv = ["iperf3", "-c", n.host_ip, "-p", str(n.port), "-t", str(p.duration_s),
                "-O", str(p.omit_s), "-J", *(["-R"] if job == "tcp-rx" else [])]
    timeout = p.duration_s + p.omit_s + p.ping_count * p.ping_interval_s + 60
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"host {job} did not finish in {timeout:.0f} s") from err
    if done.returncode != 0:
        raise BenchError(f"host {job} failed: {(done.stdout + done.stderr).strip()[-500:]}")
    return parse_job(done.stdout, job, "host", HOST_SETUP)


# --- the run ----------------------------------------------------------------------------------

@dataclass
class NetReport:
    options: NetOptions
    results: list[NetResult] = field(default_factory=list)
    guests: list[GuestRecord] = field(default_factory=list)
    host: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def find(self, job: str, setup: str) -> NetResult | None:
        return next((r for r in self.results if r.job == job and r.setup == setup), None)

    def ratios(self) -> list[dict[str, Any]]:
        """virtio-net over each emulated NIC and over the host, per job (higher is better:
        MB/s for TCP, requests per second (1/RTT) for ping)."""
        out = []
        for job in self.options.jobs:
            pv = self.find(job, "virtio-net")
            row: dict[str, Any] = {"job": job}
            for other in [s.name for s in self.options.setups if s.name != "virtio-net"]:
                row[f"pv_over_{other}"] = _ratio(pv, self.find(job, other))
            row["pv_over_host"] = _ratio(pv, self.find(job, HOST_SETUP))
            out.append(row)
        return out

    def to_json(self) -> dict[str, Any]:
        p, n = self.options.params, self.options.network
        return {
            "schema": SCHEMA,
            "params": {
                **asdict(p), "jobs": list(self.options.jobs),
                "setups": [s.name for s in self.options.setups],
                "accel": self.options.accel.value, "guest_vcpus": GUEST_VCPUS,
                "guest_memory_mib": GUEST_MEMORY_MIB,
                "network": {"bridge": n.bridge, "host_ip": n.host_ip, "guest_ip": n.guest_ip,
                            "prefix": n.prefix, "port": n.port, "netdev": "bridge"},
            },
            "host": self.host,
            "results": [r.to_json() for r in self.results],
            "guests": [asdict(g) for g in self.guests],
            "ratios": self.ratios(),
            "wall_s": round(self.wall_s, 1),
        }


def _score(row: NetResult | None) -> float | None:
    if row is None:
        return None
    return row.mbps if row.mbps is not None else row.rr_per_s


def _ratio(a: NetResult | None, b: NetResult | None) -> float | None:
    sa, sb = _score(a), _score(b)
    if sa is None or sb is None or sb <= 0:
        return None
    return sa / sb


Step = Callable[[str, int], None]


def total_steps(options: NetOptions) -> int:
    guests = len(options.setups)
    return len(options.jobs) * (guests + (1 if options.host else 0)) + guests


def run_net(options: NetOptions, step: Step = lambda _m, _n: None) -> NetReport:
    """Run the benchmark; ``step(message, advance)`` reports progress."""
    report = NetReport(options=options, host=host_facts())
    report.host["iperf3"] = _iperf3_version()
    report.host["loadavg_at_start"] = _loadavg()  # other work on the host skews the figures
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pvn-", dir=options.workdir) as tmp:
        work = Path(tmp)
        step("building the guest kit and its iperf3 extra", 0)
        kit = build_kit(options.kit_dir)
        extra = build_net_extra(options.kit_dir)
        busybox = host_busybox(options.kit_dir, work) if "ping" in options.jobs else None
        initrd = work / "initrd"
        write_initrd(kit, extra, options, initrd)  # one initrd: the same bytes for every NIC
        step(f"creating bridge {options.network.bridge}", 0)
        with bench_network(options.network, work):
            if options.host:
                for job in options.jobs:
                    step(f"host: {job}", 0)
                    report.results.append(run_host_job(job, options, busybox))
                    step(f"host: {job} done", 1)
            for setup in options.setups:
                results, record = _run_one(setup, options, kit, initrd, work, step)
                report.results += results
                report.guests.append(record)
    report.wall_s = time.monotonic() - began
    return report


def _run_one(
    setup: NicSetup, options: NetOptions, kit: Kit, initrd: Path, work: Path, step: Step,
) -> tuple[list[NetResult], GuestRecord]:
    step(f"{setup.name}: booting", 0)
    reported = [0]

    def on_progress(done: int) -> None:
        step(f"{setup.name}: {done}/{len(options.jobs)} jobs", done - reported[0])
        reported[0] = done

    outcome = run_guest(setup, options, kit, initrd, work, on_progress=on_progress)
    step(f"{setup.name}: done", len(options.jobs) - reported[0] + 1)
    return outcome


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _iperf3_version() -> str:
    try:
        done = subprocess.run(["iperf3", "--version"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.splitlines()[0].strip() if done.stdout else "?"


# --- output -----------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def net_table(report: NetReport) -> Table:
    """One row per job: the host, then each NIC; MB/s for TCP jobs, RTT µs for ping."""
    table = Table(
        title="pvhvm bench net: TCP MB/s (iperf3, at the receiver), ping RTT µs; "
              "host = to its own bridge address",
        title_justify="left", box=box.SIMPLE_HEAD,
    )
    table.add_column("job", no_wrap=True)
    columns = ([HOST_SETUP] if report.options.host else []) + [
        s.name for s in report.options.setups
    ]
    for name in columns:
        label = "host" if name == HOST_SETUP else name
        table.add_column(label, justify="right")
    ratios = {r["job"]: r for r in report.ratios()}
    others = [s.name for s in report.options.setups if s.name != "virtio-net"]
    for other in others:
        table.add_column(f"PV/{other}", justify="right", style="bold")
    if report.options.host:
        table.add_column("PV/host", justify="right", style="bold")
    for job in report.options.jobs:
        cells = [job + (" µs" if job == "ping" else " MB/s")]
        for name in columns:
            row = report.find(job, name)
            if row is None:
                cells.append("-")
            elif job == "ping":
                cells.append(_num(row.rtt_us))
            else:
                cells.append(_num(row.mbps, 1))
        for other in others:
            cells.append(_fmt_ratio(ratios[job].get(f"pv_over_{other}")))
        if report.options.host:
            cells.append(_fmt_ratio(ratios[job].get("pv_over_host")))
        table.add_row(*cells)
    return table


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def guests_table(report: NetReport) -> Table:
    table = Table(title="guests", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("setup", "vif", "boot s", "wall s", "guest NIC"):
        table.add_column(column)
    for guest in report.guests:
        table.add_row(guest.setup, guest.vif, f"{guest.boot_s:.1f}", f"{guest.wall_s:.1f}",
                      guest.nic.removeprefix(f"{NIC} "))
    return table
