"""Two libvirt hosts reached over TCP, and a live migration between them (issue 11, part 4).

Each host is a network namespace of its own (tests/hosts.py: its own address, hostname and a
``xenbr0`` bridge, as the Xen config's ``vif = ["bridge=xenbr0"]`` expects) running its own
libvirtd (tests/libvirt/daemon.py: its own sockets, state and host_uuid) that listens on TCP
on that address. pvhvm, here, reaches both only as ``qemu+tcp://ADDRESS/system``. The two
hosts are joined by a link of their own, which their QEMUs migrate over (each daemon's
``migration_host``): this host is not on it, so the stream cannot go through here.

The PV-only example is created on the second host by URI; its guest's device report is read
over libvirt's console (``pvhvm console``: virsh console over TCP), as a remote host's guest
must be, since pvhvm cannot read a file there; then it is live-migrated to the first host and
back by ``pvhvm migrate NAME --to qemu+tcp://ADDRESS/system``, with the same uuid, disks, NICs
and guest-seen devices, and it still powers off on the ACPI button at the end.

Why two namespaces and not this host's own daemon as the other end: a guest bridged on the
second host's xenbr0 cannot land on this host, which has no xenbr0 (making one here would
change what every other test's NIC does), and QEMU refuses to move a virtio NIC from a tap to
user networking ("virtio-net: saved image requires vnet_hdr=on").

This host's own libvirtd and a TCP host are the second test: the example created here (a
local URI: console logged in pvhvm's state, its NIC on user networking as pvhvm does where the
bridge is missing) goes to the TCP host by ``--to qemu+tcp://ADDRESS/system`` alone and comes
back (``--migrate-uri``: this host's libvirt would name its hostname, localhost here); the
console log stays here while it is away and holds the boot's report again once it is back.

Client-managed migration (pvhvm's) needs only that the client reaches both daemons and the
source's QEMU the destination's; libvirt's peer-to-peer mode (``virsh migrate --p2p``) would
also need the source's libvirtd to reach the destination's at the URI given, which it cannot
between the two namespaces here ("Network is unreachable").
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pty
import random
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pvhvm.guest.report import END, IDE_CLASS, DeviceReport, parse_report
from tests import jsonout
from tests.e2e.conftest import BOOT_TIMEOUT, EXAMPLES, Pvhvm
from tests.hosts import NetnsHost, namespace_pids, namespaces
from tests.libvirt.daemon import PrivateLibvirtd

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("libvirt")]

DETACH = b"\x1d"  # ^], virsh console's escape
BANNER = b"Escape character is ^]"  # virsh console, once attached


@dataclass
class LibvirtHost:
    """A second host and the libvirtd running in it."""

    host: NetnsHost
    daemon: PrivateLibvirtd

    @property
    def uri(self) -> str:
        return self.daemon.tcp_uri

    def names(self) -> list[str]:
        return self.daemon.virsh("list", "--all", "--name").split()

    def bridge_ports(self) -> list[str]:
        """The interfaces on its xenbr0: a running guest's tap while it runs here."""
        done = self.host.run(["ip", "-o", "link", "show", "master", "xenbr0"],
                             capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]

    def no_bridge_ports(self, timeout: float = 10.0) -> bool:
        """Whether its xenbr0 has no port left, within ``timeout`` (a tap goes as its QEMU's
        file descriptors close, which a loaded machine may take a moment over)."""
        deadline = time.monotonic() + timeout
        while self.bridge_ports():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


@pytest.fixture
def libvirt_hosts() -> Iterator[tuple[LibvirtHost, LibvirtHost]]:
    """Two hosts joined by a link of their own, each with a libvirtd on TCP; everything is
    stopped and removed at the end, and nothing may be left: no domain, QEMU, libvirtd,
    namespace or veth."""
    for tool in ("libvirtd", "virsh", "unshare", "ip", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing: run dev/setup"
    if os.geteuid() != 0:
        pytest.skip("network namespaces and libvirtd as root need root")
    with contextlib.ExitStack() as stack:
        first, second = (stack.enter_context(NetnsHost()) for _ in range(2))
        for host in (first, second):  # runs once its daemon has stopped, before it closes
            stack.callback(_nothing_runs_in, host)
        on_first, on_second = first.link(second)
        daemons = []
        for host, address in ((first, on_first), (second, on_second)):
            host.add_bridge("xenbr0")
            daemon = PrivateLibvirtd(host, migration_address=address)
            stack.callback(_stop, daemon)
            daemons.append(daemon)
        _start(daemons)
        made = [(h.name, h.host_ifname) for h in (first, second)]
        yield LibvirtHost(first, daemons[0]), LibvirtHost(second, daemons[1])
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    for name, ifname in made:
        assert name not in namespaces(), f"namespace {name} left behind"
        assert f" {ifname}@" not in links and f" {ifname}:" not in links, f"{ifname} left"


@pytest.fixture
def host_and_tcp_host() -> Iterator[tuple[PrivateLibvirtd, LibvirtHost]]:
    """This host's own libvirtd (its unix socket, as test_libvirt.py's) and a second host
    with a libvirtd on TCP at its end of the link from here; both removed at the end."""
    for tool in ("libvirtd", "virsh", "unshare", "ip", "nsenter"):
        assert shutil.which(tool), f"{tool} is missing: run dev/setup"
    if os.geteuid() != 0:
        pytest.skip("network namespaces and libvirtd as root need root")
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(NetnsHost())
        stack.callback(_nothing_runs_in, host)
        local, remote = PrivateLibvirtd(), PrivateLibvirtd(host)
        for daemon in (local, remote):
            stack.callback(_stop, daemon)
        _start([local, remote])
        yield local, LibvirtHost(host, remote)
    assert host.name not in namespaces(), f"namespace {host.name} left behind"


def _start(daemons: list[PrivateLibvirtd]) -> None:
    """Start the daemons side by side (each waits seconds for its sockets); the first
    failure is raised once all have tried."""
    with concurrent.futures.ThreadPoolExecutor(len(daemons)) as pool:
        for started in [pool.submit(daemon.start) for daemon in daemons]:
            started.result()


def _stop(daemon: PrivateLibvirtd) -> None:
    """Stop ``daemon``; fails if it still ran a domain (the test's own clean-up missed it)."""
    leftovers = daemon.stop()
    assert not leftovers, f"domains left running in libvirt: {leftovers}"


def _nothing_runs_in(host: NetnsHost) -> None:
    """No process (a libvirtd, a QEMU) outlived the daemons' stop in ``host``."""
    deadline = time.monotonic() + 5  # PID 1 reaps orphans late here
    while (pids := namespace_pids(host.name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pids, f"still running in {host.name}: {pids}"


class GuestConsole:
    """``pvhvm console NAME`` on a pseudo-terminal (virsh console wants one): what the guest
    prints, and commands typed into its shell."""

    def __init__(self, pvhvm: Pvhvm, name: str) -> None:
        self.master, terminal = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pvhvm", "console", name], stdin=terminal, stdout=terminal,
            stderr=terminal, env=pvhvm.env(), start_new_session=True)
        os.close(terminal)
        # virsh reads what is typed only once it is attached: what comes before is lost
        seen = b""
        deadline = time.monotonic() + 60
        while BANNER not in seen:
            assert time.monotonic() < deadline, f"pvhvm console did not attach: {seen!r}"
            seen += self._read(0.2)

    def __enter__(self) -> GuestConsole:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError:  # the console process has gone and its terminal with it
            assert self.proc.poll() is None, f"pvhvm console exited {self.proc.returncode}"
            return b""

    def run(self, command: str, timeout: float = 30.0) -> str | None:
        """Type ``command`` into the guest's shell; what it printed up to a marker it echoes
        after, or None when that did not come within ``timeout`` (the shell not up yet)."""
        number = random.randrange(10_000, 90_000)
        marker = f"done-{number + 1}".encode()
        os.write(self.master, f"\n{command}; echo done-$(({number}+1))\n".encode())
        seen = b""
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            seen += self._read(0.2)
        return seen.decode(errors="replace") if marker in seen else None

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.write(self.master, DETACH)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        os.close(self.master)


def console_report(pvhvm: Pvhvm, name: str, timeout: float = BOOT_TIMEOUT) -> DeviceReport:
    """The guest's device report, printed anew by the pvhvm guest image's report script in its
    shell over ``pvhvm console`` (typed again until the shell is up after boot)."""
    deadline = time.monotonic() + timeout
    with GuestConsole(pvhvm, name) as console:
        while time.monotonic() < deadline:
            text = console.run("sh /etc/pvhvm/report.sh", timeout=10)
            if text is not None and END in text:
                return parse_report(text)
    raise AssertionError(f"no device report from {name} over its console")


def devices(report: DeviceReport) -> tuple[object, ...]:
    """What the guest sees, as comparable before and after a migration."""
    return (report.pci, report.blocks, report.nets, report.root)


def test_created_on_a_tcp_host_and_live_migrated_between_two(
    pvhvm: Pvhvm, libvirt_hosts: tuple[LibvirtHost, LibvirtHost], imagedir: Path
) -> None:
    first, second = libvirt_hosts
    assert second.daemon.virsh("hostname").strip() == second.host.hostname
    created = pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                        "--platform", "libvirt", "--connect", second.uri, "--accel", "tcg")
    try:
        assert f"started by libvirt at {second.uri} (tcg)" in " ".join(created.stderr.split())
        assert second.names() == ["pv-only"] and first.names() == []
        (record,) = jsonout.result(pvhvm.run("list", "-l", "pv-only").stdout)
        assert record["platform"] == "libvirt" and record["plan"]["libvirt_uri"] == second.uri
        uuid = record["uuid"]
        assert second.daemon.virsh("domuuid", "pv-only").strip() == uuid
        # the guest's NIC is on the second host's bridge, which this host does not have
        assert len(second.bridge_ports()) == 1 and first.bridge_ports() == []

        # a remote host's console log is not pvhvm's to read: refused in one line
        refused = pvhvm.run("report", "pv-only", check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert f"runs on the libvirt host at {second.uri}" in refused.stderr
        assert "pvhvm console pv-only" in refused.stderr

        seen = console_report(pvhvm, "pv-only")
        assert not seen.has_class(IDE_CLASS) and seen.root == "/dev/vda"
        assert [(b.name, b.driver) for b in seen.blocks] == [("vda", "virtio_blk")]
        mac = record["plan"]["vifs"][0]["mac"]
        assert [(n.driver, n.mac) for n in seen.nets] == [("virtio_net", mac)]
        disks = jsonout.result(pvhvm.run("block-list", "pv-only", "--json").stdout)
        nics = jsonout.result(pvhvm.run("network-list", "pv-only", "--json").stdout)
        assert [(d["vdev"], d["driver"]) for d in disks] == [("xvda", "libvirt virtio vda")]
        assert [(n["driver"], n["bridge"]) for n in nics] == [("libvirt virtio", "xenbr0")]

        # libvirt's shared-storage check refuses first (the disks are on no shared file
        # system it knows); the domain stays where it was, running
        unsafe = pvhvm.run("migrate", "pv-only", "--to", first.uri, check=False)
        assert unsafe.returncode == 1 and "Traceback" not in unsafe.stderr
        assert f"it still runs at {second.uri}" in unsafe.stderr
        assert second.names() == ["pv-only"] and first.names() == []

        for there, here in ((first, second), (second, first)):
            pvhvm.run("migrate", "pv-only", "--to", there.uri, "--unsafe", timeout=300)
            assert there.names() == ["pv-only"] and here.names() == []
            assert there.daemon.virsh("domuuid", "pv-only").strip() == uuid
            assert len(there.bridge_ports()) == 1 and here.no_bridge_ports()
            (moved,) = jsonout.result(pvhvm.run("list", "-l", "pv-only").stdout)
            assert moved["plan"]["libvirt_uri"] == there.uri
            assert moved["state"] == "running" and moved["uuid"] == uuid
            assert jsonout.result(pvhvm.run("block-list", "pv-only", "--json").stdout) == disks
            assert jsonout.result(pvhvm.run("network-list", "pv-only", "--json").stdout) == nics
            # the guest came along, and sees the same devices as before
            assert devices(console_report(pvhvm, "pv-only", timeout=60)) == devices(seen)
        again = pvhvm.run("migrate", "pv-only", "--to", second.uri, check=False)
        assert again.returncode == 1 and "already runs at" in again.stderr

        pvhvm.run("shutdown", "-w", "pv-only", "--timeout", "120", timeout=180)
        (rows) = jsonout.result(pvhvm.run("list", "--json").stdout)
        assert "pv-only" not in [row["name"] for row in rows]
        assert first.names() == [] and second.names() == []
    finally:
        pvhvm.run("destroy", "pv-only", check=False)
    assert not first.daemon.qemu_pids() and not second.daemon.qemu_pids()


def live_xml(daemon: PrivateLibvirtd) -> str:
    return daemon.virsh("dumpxml", "pv-only")


def test_between_this_hosts_libvirt_and_a_tcp_host(
    pvhvm: Pvhvm, host_and_tcp_host: tuple[PrivateLibvirtd, LibvirtHost], imagedir: Path
) -> None:
    """Created by this host's libvirtd (a local URI: console logged in pvhvm's state, NIC on
    user networking), migrated to the TCP host by its URI alone and back: away, the console
    log stays here (that host's files are not pvhvm's) and report points at the console;
    home again, the log is back, and still holds the report the guest printed at boot."""
    local, remote = host_and_tcp_host
    pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
              "--platform", "libvirt", "--connect", local.uri, "--accel", "tcg")
    try:
        log = str(pvhvm.state / "libvirt" / "logs" / "pv-only.console.log")
        assert f"<log file='{log}' append='on'/>" in live_xml(local)
        done = pvhvm.run("report", "pv-only", "--json", "--timeout", str(BOOT_TIMEOUT),
                         timeout=BOOT_TIMEOUT + 60)
        booted = jsonout.result(done.stdout)
        assert booted["ide_controller"] is False and booted["root"] == "/dev/vda"
        disks = jsonout.result(pvhvm.run("block-list", "pv-only", "--json").stdout)
        nics = jsonout.result(pvhvm.run("network-list", "pv-only", "--json").stdout)
        uuid = jsonout.result(pvhvm.run("list", "-l", "pv-only").stdout)[0]["uuid"]

        # --to the URI alone: the TCP host's libvirt names its own address for the stream
        pvhvm.run("migrate", "pv-only", "--to", remote.uri, "--unsafe", timeout=300)
        assert remote.names() == ["pv-only"] and local.virsh("list", "--all", "--name").split() == []
        assert remote.daemon.virsh("domuuid", "pv-only").strip() == uuid
        assert "<log " not in live_xml(remote.daemon)
        refused = pvhvm.run("report", "pv-only", check=False)
        assert refused.returncode == 1 and f"libvirt host at {remote.uri}" in refused.stderr
        assert jsonout.result(pvhvm.run("block-list", "pv-only", "--json").stdout) == disks
        assert jsonout.result(pvhvm.run("network-list", "pv-only", "--json").stdout) == nics
        away = console_report(pvhvm, "pv-only", timeout=60)
        assert (away.root, [(b.name, b.driver) for b in away.blocks]) == (
            "/dev/vda", [("vda", "virtio_blk")])

        # back: this host's libvirt would name its hostname (here: localhost) for the
        # stream, so the address the TCP host reaches it at is given (virsh's --migrateuri)
        pvhvm.run("migrate", "pv-only", "--to", local.uri, "--unsafe", "--migrate-uri",
                  f"tcp://{remote.host.host_address}", timeout=300)
        assert remote.names() == [] and local.virsh("list", "--name").split() == ["pv-only"]
        assert local.virsh("domuuid", "pv-only").strip() == uuid
        assert f"<log file='{log}' append='on'/>" in live_xml(local)
        again = jsonout.result(pvhvm.run("report", "pv-only", "--json").stdout)
        assert again == booted
        assert devices(console_report(pvhvm, "pv-only", timeout=60)) == devices(away)
        pvhvm.run("shutdown", "-w", "pv-only", "--timeout", "120", timeout=180)
        assert local.virsh("list", "--all", "--name").split() == [] and remote.names() == []
    finally:
        pvhvm.run("destroy", "pv-only", check=False)
    assert not local.qemu_pids() and not remote.daemon.qemu_pids()
