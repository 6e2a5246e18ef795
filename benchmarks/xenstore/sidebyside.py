"""pvhvm's xenstored beside Xen's own two, on the same client load, in one run (issue 19 item 5;
not a timed test).

The daemons, each on a Unix socket of its own, none of them the host's:

* ``pvhvm``: ``python -m pvhvm.xenstore --socket PATH`` from ``--src``;
* ``cxenstored``: Debian's C xenstored 4.17 (``xen-utils-4.17``:
  /usr/lib/xen-4.17/bin/xenstored), ``--no-fork``, its socket in ``XENSTORED_RUNDIR``. It
  introduces dom0 at start from /proc/xen/xsd_port and xsd_kva, so it runs in a mount
  namespace of its own where those are a port number and a zeroed page (an empty ring);
  with ``--no-domain-init`` it crashes at the first request (a NULL domain);
* ``oxenstored``: Debian's OCaml oxenstored 4.17 with Debian's /etc/xen/oxenstored.conf
  (xen-utils-common; quotas, access log), ``--no-domain-init --no-fork``. Its socket path is
  compiled in (/var/run/xenstored/socket), so it runs in a mount namespace of its own with a
  private /run whose /run/xenstored is a directory of ours (the socket is reached by its own
  path), where /proc/sys/fs/nr_open reads as this host's hard RLIMIT_NOFILE: it raises its
  limit to nr_open at start, which a container without CAP_SYS_RESOURCE refuses.

The Xen binaries come unpacked from Debian's packages (``apt-get download``, ``dpkg-deb -x``,
nothing installed; the cache tests/xen/conftest.py's ``xl_native`` fixture uses). On a host with
no Xen, both daemons' libxc, event channel and grant table handles are
tests/xen/xlpeer/nohyp.c (LD_PRELOAD), built here with gcc: an event channel that never
fires. Socket connections are dom0's to all three (no per-domain quotas apply to them).

``--in-dom0`` (what dom0.py runs in the Xen host's dom0): the daemons are dom0's installed
ones under / and pvhvm's daemon is dom0's installed package; the extra C xenstored and
oxenstored still get the shim (a second daemon on dom0's real handles would bind
VIRQ_DOM_EXC a second time, and C xenstored's dom0 introduction would map dom0's own xenbus
ring, which dom0's running xenstored serves) and the private /proc/xen and /run above, so
dom0's running xenstored is left alone. ``--real`` also measures that running xenstored
through its own socket (/run/xenstored/socket), on the read-only mixes only: xsload writes
its clients' keys under /bench once, and /bench is removed after the run.

The load is throughput.py's (``xsload.c``: one C process per client, one request in flight or
pipelined) and hostile.py's (good Python clients alone, beside all the hostile clients, beside
a 20,000-watch flood on unrelated paths). Each round runs every daemon in turn, ``--rounds``
times, and medians are printed, with each daemon's rate as a ratio to pvhvm's, and its CPU
time per request, user and system apart, from /proc. Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/xenstore/sidebyside.py [--seconds 2]
        [--rounds 3] [--only throughput|hostile] [--watches N] [--profile FILE]
    python3 sidebyside.py --in-dom0 --xsload ./xsload --shim ./nohyp.so [--real] ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hostile
import throughput

from pvhvm.xenstore.wire import Op, encode, join_strings

HERE = Path(__file__).resolve().parent
SHIM = HERE.parents[1] / "tests" / "xen" / "xlpeer" / "nohyp.c"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pvhvm" / "xlpeer"
ROOT = CACHE / "root"
LIBDIR = ROOT / "usr/lib/x86_64-linux-gnu"
BINDIR = ROOT / "usr/lib/xen-4.17/bin"


@dataclass(frozen=True)
class XenTools:
    """Where the Xen daemons and their libraries are: the unpacked packages (this host), or
    ``/`` in a Xen host's dom0 (``--in-dom0``), where they are installed."""

    root: Path
    in_dom0: bool

    @property
    def bindir(self) -> Path:
        return self.root / "usr/lib/xen-4.17/bin"

    @property
    def libdir(self) -> Path:
        return self.root / "usr/lib/x86_64-linux-gnu"
#: xen-utils-4.17 (the daemons), xen-utils-common (oxenstored.conf), the libraries they link
PACKAGES = (
    "xen-utils-4.17", "xen-utils-common", "libxen-dev", "libxenmisc4.17", "libxentoollog1",
    "libyajl2", "libxenhypfs1", "libxengnttab1", "libxenevtchn1", "libxenforeignmemory1",
    "libxencall1", "libxendevicemodel1", "libxenstore4", "libxentoolcore1",
)


def unpack() -> None:
    """Debian's packages unpacked into the cache (what is already there is kept)."""
    needed = [BINDIR / "xenstored", BINDIR / "oxenstored", ROOT / "etc/xen/oxenstored.conf",
              LIBDIR / "libxenctrl.so.4.17", ROOT / "usr/include/xenevtchn.h"]
    if all(path.exists() for path in needed):
        return
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES:
        if not list(debs.glob(f"{package}_*.deb")):
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True,
                           capture_output=True)
    for package in PACKAGES:
        for deb in debs.glob(f"{package}_*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(ROOT)], check=True)


def build_shim(directory: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("sidebyside.py: needs gcc (or cc) for the oxenstored shim")
    shim = directory / "nohyp.so"
    subprocess.run([gcc, "-O1", "-shared", "-fPIC", "-o", str(shim), str(SHIM),
                    f"-I{ROOT / 'usr/include'}"], check=True)
    return shim


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    socket: str
    log: Path | None


def _wait_for(path: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 90  # dom0 under TCG: pvhvm under cProfile took over 15 s
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start (exit {process.poll()})") from None
            time.sleep(0.05)
        finally:
            probe.close()


@contextlib.contextmanager
def started(name: str, src: Path | None, tmp: Path, shim: Path, xen: XenTools,
            profile: Path | None = None) -> Iterator[Daemon]:
    """One daemon on a socket of its own; stopped (SIGTERM, then waited for) on exit.
    ``src`` None: the pvhvm this python imports (dom0's installed copy); ``profile``: pvhvm's
    daemon runs under cProfile, its stats written there when it stops."""
    env = dict(os.environ)
    if not xen.in_dom0:
        env["LD_LIBRARY_PATH"] = str(xen.libdir)
    log: Path | None = None
    if name == "pvhvm":
        path = str(tmp / "pvhvm.sock")
        log = tmp / "pvhvm.log"
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        argv = [sys.executable, *profiler, "-m", "pvhvm.xenstore", "--socket", path]
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src)
    elif name == "cxenstored":
        # --no-domain-init crashes it at the first request (4.17: a socket connection then
        # has no domain), so dom0 is introduced as in a real dom0: its event channel port
        # and ring page come from /proc/xen (here a private one: a port number and a zeroed
        # page, an empty ring no one writes), its event channel and grant handles from nohyp
        rundir = tmp / "cxenstored"
        procxen = rundir / "proc-xen"
        procxen.mkdir(parents=True)
        (procxen / "xsd_port").write_text("7\n")
        (procxen / "xsd_kva").write_bytes(bytes(4096))
        path = str(rundir / "socket")
        env.update(XENSTORED_RUNDIR=str(rundir), LD_PRELOAD=str(shim))
        script = (f"mount -t tmpfs tmpfs /proc && mkdir /proc/xen && "
                  f'mount --bind {procxen} /proc/xen && exec "$0" --no-fork')
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                str(xen.bindir / "xenstored")]
    else:
        conf = tmp / "oxenstored.conf"
        text = (xen.root / "etc/xen/oxenstored.conf").read_text()
        conf.write_text(text.replace("/var/run/xen/xenstored.pid", "/run/xen/xenstored.pid")
                        + "xenstored-log-file = /run/xenstored/log\n"
                        + "access-log-file = /run/xenstored/access-log\n")
        env["LD_PRELOAD"] = str(shim)
        # a private /run: the socket path is compiled in, and dom0's own xenstored has it;
        # its /run/xenstored is a directory of ours, so the socket is reached by its own path
        # (through /proc/PID/root, connects from many processes at once failed with ENOENT
        # in dom0)
        rundir = tmp / "oxenstored"
        rundir.mkdir()
        script = ("mount -t tmpfs tmpfs /run && mkdir /run/xenstored /run/xen && "
                  f"mount --bind {rundir} /run/xenstored && ")
        if not xen.in_dom0:  # dom0 is root with CAP_SYS_RESOURCE: its nr_open is reachable
            nr_open = tmp / "nr_open"
            nr_open.write_text(f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]}\n")
            script += f"mount --bind {nr_open} /proc/sys/fs/nr_open && "
        script += f'exec "$0" --no-domain-init --no-fork --config-file {conf}'
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                str(xen.bindir / "oxenstored")]
        path = str(rundir / "socket")
        log = rundir / "log"
    output = open(log if name == "pvhvm" and log is not None else os.devnull,  # noqa: SIM115
                  "wb")
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=output,
                               stderr=output)
    try:
        _wait_for(path, process, name)
        yield Daemon(name, process.pid, path, log)
    finally:
        process.terminate()
        process.wait(60)  # under TCG, cProfile's stats take a while to write
        output.close()


def _cpu(pid: int) -> tuple[float, float]:
    return throughput._daemon_cpu(pid)


def _log_size(daemon: Daemon) -> int | None:
    try:
        return daemon.log.stat().st_size if daemon.log is not None else None
    except OSError:
        return None


#: dom0's own xenstored (``--real``) gets read-only mixes only (xsload writes its clients'
#: keys under /bench once at start; they are removed after the run)
READ_ONLY_MIXES = ("read",)


def running_xenstored() -> Daemon:
    """dom0's own xenstored (the one Xen's toolstack uses): its pid and socket."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = (proc / "comm").read_text().strip()
            if comm in ("xenstored", "oxenstored") and os.readlink(proc / "ns/mnt") == \
                    os.readlink("/proc/self/ns/mnt"):
                return Daemon(f"dom0:{comm}", int(proc.name), "/run/xenstored/socket", None)
    sys.exit("sidebyside.py: --real: no xenstored or oxenstored runs in this mount namespace")


def remove_node(path: str, node: str) -> None:
    """RM ``node`` through the daemon at ``path`` (xs_wire.h XS_RM; ENOENT is fine)."""
    with contextlib.closing(hostile._connect(path)) as sock:
        sock.sendall(encode(Op.RM, join_strings(node)))
        hostile._recv_reply(sock, bytearray())


def run_throughput(daemons: list[Daemon], xsload: Path, seconds: float, rounds: int,
                   scenarios: list[tuple[str, int, int]]) -> None:
    print(f"\nthroughput (xsload.c); {rounds} rounds of {seconds:g} s, medians; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'daemon':>15} {'mix':>10} {'clients':>7} {'depth':>5} {'req/s':>8} {'ratio':>6} "
          f"{'p50 µs':>7} {'p99 µs':>7} {'usr µs':>7} {'sys µs':>7}")
    for daemon in daemons:  # warm up (not counted): a fresh daemon's first requests are slow
        throughput.run_client([str(xsload), daemon.socket, "16", "1",
                               "read" if daemon.name.startswith("dom0:") else "writeread", "1"])
    for mix, clients, depth in scenarios:
        these = [d for d in daemons if not d.name.startswith("dom0:") or mix in READ_ONLY_MIXES]
        rows: dict[str, list[tuple[float, ...]]] = {d.name: [] for d in these}
        for _ in range(rounds):
            for daemon in these:
                before = _cpu(daemon.pid)
                rate, p50, p99, requests = throughput.run_client(
                    [str(xsload), daemon.socket, str(clients), str(seconds), mix, str(depth)])
                user, system = ((a - b) / requests
                                for a, b in zip(_cpu(daemon.pid), before, strict=True))
                rows[daemon.name].append((rate, p50, p99, user, system))
        base = statistics.median(r[0] for r in rows[daemons[0].name])
        for daemon in these:
            rate, p50, p99, user, system = (statistics.median(c)
                                            for c in zip(*rows[daemon.name], strict=True))
            print(f"{daemon.name:>15} {mix:>10} {clients:>7} {depth:>5} {rate:>8.0f} "
                  f"{rate / base:>6.2f} {p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f} "
                  f"{user * 1e6:>7.1f} {system * 1e6:>7.1f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


DAEMONS = ("pvhvm", "cxenstored", "oxenstored")
#: a phase whose good clients have not all finished this long after its end is "stalled"
STALL_SECONDS = 30.0


def run_good(path: str, clients: int, seconds: float) -> tuple[float, float, float, int] | None:
    """hostile.run_good with a bound: None when a good client is still waiting for a reply
    STALL_SECONDS after the phase (its processes are then killed)."""
    start_at = time.time() + 1.0
    procs = [subprocess.Popen(hostile._me("good", path, str(i), str(start_at), str(seconds)),
                              stdout=subprocess.PIPE, text=True) for i in range(clients)]
    deadline = time.monotonic() + 1.0 + seconds + STALL_SECONDS
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
                other.wait()
            return None
    results = [json.loads(out) for out in outputs]
    requests = sum(r["requests"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    sample = sorted(x for r in results for x in r["sample"])
    return (requests / elapsed, sample[len(sample) // 2],
            sample[min(len(sample) - 1, int(len(sample) * 0.99))], requests)


#: the hostile clients of a phase not all in place this long after they started: the phase
#: is reported as such and skipped
SETUP_SECONDS = 180.0


def start_hostile(path: str, kinds: tuple[str, ...], prefix: str,
                  watches: int = hostile.FLOOD_WATCHES,
                  transactions: int = hostile.TRANSACTIONS_TRIED
                  ) -> tuple[list[subprocess.Popen[str]], str | None]:
    """hostile.start_hostile, bounded: the processes, and the first client not "ready"
    within SETUP_SECONDS (None when all are)."""
    procs: list[subprocess.Popen[str]] = []
    deadline = time.monotonic() + SETUP_SECONDS
    for kind in kinds:
        proc = subprocess.Popen(hostile._me("hostile", path, kind, prefix, str(watches),
                                            str(transactions)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or proc.stdout.readline().strip() != "ready":
            return procs, kind
    return procs, None


def stop_hostile(procs: list[subprocess.Popen[str]]) -> None:
    """hostile.stop_hostile, bounded: a hostile client stuck in connect() to a daemon that
    no longer accepts (C xenstored's backlog is 1) is killed after 30 s."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_hostile(daemons: list[Daemon], seconds: float, rounds: int, clients: int,
                watches: int = hostile.FLOOD_WATCHES,
                transactions: int = hostile.TRANSACTIONS_TRIED) -> None:
    print(f"\nhostile clients (hostile.py), {clients} good client(s); {rounds} rounds of "
          f"{seconds:g} s per phase, medians; ratio: to the same daemon's solo rate"
          + (f"; floods of {watches:,} watches (the phase names say 20,000)"
             if watches != 20_000 else "")
          + (f"; {transactions:,} transactions tried" if transactions != 20_000 else ""))
    print(f"{'daemon':>11} {'phase':>32} {'req/s':>8} {'ratio':>6} {'p50 µs':>7} "
          f"{'p99 µs':>7} {'cpu µs':>7} {'RSS MiB':>8} {'log B':>7}")
    rows: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    stalled: set[tuple[str, str]] = set()
    skipped: set[tuple[str, str]] = set()
    for _ in range(rounds):
        for daemon in daemons:
            solo = 0.0
            for phase, kinds, prefix in hostile.PHASES:
                procs, not_ready = start_hostile(daemon.socket, kinds, prefix, watches,
                                                 transactions)
                if not_ready is not None:
                    stop_hostile(procs)
                    print(f"{daemon.name:>11} {phase:>32}  the {not_ready} client was not in "
                          f"place {SETUP_SECONDS:g} s after it started: phase skipped",
                          flush=True)
                    skipped.add((daemon.name, phase))
                    continue
                size = _log_size(daemon)
                before = sum(_cpu(daemon.pid))
                measured = run_good(daemon.socket, clients, seconds)
                if measured is None:
                    stalled.add((daemon.name, phase))
                    measured = (0.0, float("nan"), float("nan"), 1)
                rate, p50, p99, requests = measured
                cpu = (sum(_cpu(daemon.pid)) - before) / requests
                rss = hostile._rss_kib(daemon.pid) / 1024
                after = _log_size(daemon)
                grown = float("nan") if size is None or after is None else after - size
                stop_hostile(procs)
                solo = solo or rate
                rows.setdefault((daemon.name, phase), []).append(
                    (rate, rate / solo if solo else float("nan"), p50, p99, cpu, rss, grown))
                print(f"{daemon.name:>11} {phase:>32} {rate:>8.0f}  (this round)", flush=True)
                time.sleep(0.5)
    print("medians:")
    for daemon in daemons:
        for phase, _, _ in hostile.PHASES:
            if (daemon.name, phase) not in rows:
                print(f"{daemon.name:>11} {phase:>32}  skipped: hostile clients not in place")
                continue
            rate, ratio, p50, p99, cpu, rss, grown = (
                statistics.median(c) for c in zip(*rows[(daemon.name, phase)], strict=True))
            note = (f"  stalled: a good request unanswered {STALL_SECONDS:g} s after the phase"
                    if (daemon.name, phase) in stalled else "")
            print(f"{daemon.name:>11} {phase:>32} {rate:>8.0f} {ratio:>6.2f} "
                  f"{p50 * 1e6:>7.0f} {p99 * 1e6:>7.0f} {cpu * 1e6:>7.1f} {rss:>8.1f} "
                  f"{grown:>7.0f}{note}", flush=True)
    for daemon in daemons:
        with contextlib.suppress(OSError):
            print(f"{daemon.name:>11} at end: RSS {hostile._rss_kib(daemon.pid) / 1024:.1f} "
                  f"MiB, {len(hostile.daemon_connections(daemon.pid))} sockets open")


def print_profile(profile: Path, lines: int) -> None:
    """The daemon's cProfile stats: the top functions by own time, then by cumulative."""
    stats = pstats.Stats(str(profile))
    print(f"\npvhvm's daemon under cProfile ({profile}): top {lines} by own time")
    stats.sort_stats("tottime").print_stats(lines)
    print(f"top {lines} by cumulative time")
    stats.sort_stats("cumulative").print_stats(lines)


def main() -> None:
    global STALL_SECONDS, SETUP_SECONDS  # --stall, --setup
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", type=Path, default=None,
                        help="the source tree holding pvhvm/ (default: src on this host; in "
                             "dom0 the installed pvhvm)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations")
    parser.add_argument("--only", choices=("throughput", "hostile"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16],
                        help="good clients for the hostile phases")
    parser.add_argument("--daemons", nargs="+", default=list(DAEMONS), choices=DAEMONS,
                        help="which daemons (the first is the ratios' base)")
    parser.add_argument("--stall", type=float, default=STALL_SECONDS,
                        help="seconds after a hostile phase before a good request counts "
                             "as stalled")
    parser.add_argument("--in-dom0", action="store_true",
                        help="run in a Xen host's dom0: Xen's installed daemons (under /), "
                             "not the unpacked packages; needs --xsload and --shim where "
                             "there is no gcc")
    parser.add_argument("--xsload", type=Path, help="a built xsload (default: built here)")
    parser.add_argument("--shim", type=Path, help="a built nohyp.so (default: built here)")
    parser.add_argument("--real", action="store_true",
                        help="in dom0: also measure the running xenstored through its own "
                             "socket, read-only mixes only")
    parser.add_argument("--watches", type=int, default=hostile.FLOOD_WATCHES,
                        help="the flood clients' watches (hostile.py's default: 20,000)")
    parser.add_argument("--transactions", type=int, default=hostile.TRANSACTIONS_TRIED,
                        help="transactions the hostile client tries (default: 20,000)")
    parser.add_argument("--setup", type=float, default=SETUP_SECONDS,
                        help="seconds a phase's hostile clients get to be in place")
    parser.add_argument("--profile", type=Path,
                        help="run pvhvm's daemon under cProfile, stats to this file, and "
                             "print its top functions after the run")
    args = parser.parse_args()
    STALL_SECONDS = args.stall
    SETUP_SECONDS = args.setup
    if args.real and not args.in_dom0:
        parser.error("--real needs --in-dom0 (a running xenstored is dom0's)")
    xen = XenTools(Path("/"), True) if args.in_dom0 else XenTools(ROOT, False)
    if not args.in_dom0:
        unpack()
    src = args.src.resolve() if args.src is not None else \
        (None if args.in_dom0 else Path("src").resolve())
    names = args.daemons
    real = running_xenstored() if args.real else None
    scenarios = ([("read", 1, 1)] if real is not None else []) + throughput.SCENARIOS
    with tempfile.TemporaryDirectory(prefix="xsb", dir="/tmp") as tmpdir, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpdir)
        xen_daemons = any(name != "pvhvm" for name in names)
        shim = args.shim.resolve() if args.shim is not None else \
            (build_shim(tmp) if xen_daemons else tmp / "no-shim-needed")
        xsload = args.xsload.resolve() if args.xsload is not None else \
            throughput.compile_xsload(tmp)
        daemons = [stack.enter_context(started(name, src, tmp, shim, xen, args.profile))
                   for name in names]
        if real is not None:
            stack.callback(remove_node, real.socket, "/bench")
            daemons.append(real)
        load = os.getloadavg()
        print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
              f"{'in dom0' if args.in_dom0 else 'on this host'}, "
              f"{os.cpu_count()} CPUs; pvhvm from {src or 'the installed package'}")
        for daemon in daemons:
            print(f"{daemon.name}: pid {daemon.pid}, socket {daemon.socket}, RSS at start "
                  f"{hostile._rss_kib(daemon.pid) / 1024:.1f} MiB")
        if args.only in (None, "throughput"):
            run_throughput(daemons, xsload, args.seconds, args.rounds, scenarios)
        if args.only in (None, "hostile"):
            own = [d for d in daemons if d is not real]
            for clients in args.clients:
                run_hostile(own, args.seconds, args.rounds, clients, args.watches,
                            args.transactions)
    if args.profile is not None:
        print_profile(args.profile, 25)


if __name__ == "__main__":
    main()
