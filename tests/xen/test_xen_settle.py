"""What a dead domain's hotplug scripts leave behind (pvhvm.xen.settle), against pvhvm's own
xenstored and real processes: an "orphan" is a real ``sh`` with libxl's ``XENBUS_PATH`` in its
environment that writes with xenstore-utils' real ``xenstore-write``, as the block script's
children do after libxl killed the script itself."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pvhvm.xen.settle import BACKEND_ROOT, describe, hotplug_processes, settle
from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import DaemonProcess, spawn_daemon

pytestmark = pytest.mark.skipif(shutil.which("xenstore-write") is None,
                                reason="xenstore-utils is not installed (dev/setup installs it)")


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    with tempfile.TemporaryDirectory(prefix="pvs-", dir="/tmp") as directory, \
            spawn_daemon(Path(directory) / "xs.sock") as running:
        yield running


def connect(daemon: DaemonProcess) -> XenStoreClient:
    return XenStoreClient(daemon.socket_path)


def orphan(daemon: DaemonProcess, xenbus_path: str, delay: float,
           write: str | None = None) -> subprocess.Popen[bytes]:
    """A process as a killed hotplug script's child: ``XENBUS_PATH`` inherited, it writes
    ``write`` (a node under dom0's backend tree) after ``delay`` seconds."""
    script = f"sleep {delay}" + (f"; xenstore-write {write} late" if write else "")
    env = dict(os.environ, XENBUS_PATH=xenbus_path, XENSTORED_PATH=str(daemon.socket_path))
    child = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    # until it has exec'd, the child is a fork of this process, with this environment
    domid = int(xenbus_path.split("/")[2])
    deadline = time.monotonic() + 10
    while child.pid not in hotplug_processes(domid):
        assert time.monotonic() < deadline, "the orphan never showed its XENBUS_PATH"
        time.sleep(0.01)
    return child


def nodes(daemon: DaemonProcess) -> set[str]:
    out = subprocess.run(["xenstore-ls", "-f", BACKEND_ROOT], capture_output=True, text=True,
                         env=dict(os.environ, XENSTORED_PATH=str(daemon.socket_path)),
                         check=False).stdout
    return {line.split(" = ")[0] for line in out.splitlines()}


def write(daemon: DaemonProcess, *paths: str) -> None:
    with connect(daemon) as xs:
        for path in paths:
            xs.write(path, "1")


def test_processes_are_found_by_their_xenbus_path() -> None:
    env = dict(os.environ, XENBUS_PATH="backend/vbd/7/51712")
    mine = subprocess.Popen(["sleep", "30"], env=env)
    other = subprocess.Popen(["sleep", "30"],
                             env=dict(os.environ, XENBUS_PATH="backend/vbd/17/51712"))
    try:
        assert mine.pid in hotplug_processes(7)
        assert other.pid not in hotplug_processes(7)
        assert mine.pid in hotplug_processes(7, ("vbd", "qdisk"), 51712)
        assert mine.pid not in hotplug_processes(7, ("vif",))
        assert mine.pid not in hotplug_processes(7, ("vbd",), 51728)
        assert other.pid in hotplug_processes(17)
    finally:
        for process in (mine, other):
            process.kill()
            process.wait()
    assert mine.pid not in hotplug_processes(7)


def test_a_dead_domains_leftovers_go_after_its_orphans_end(daemon: DaemonProcess) -> None:
    write(daemon, f"{BACKEND_ROOT}/vbd/7/51712/hotplug-error",
          f"{BACKEND_ROOT}/vif/7/0/hotplug-status", f"{BACKEND_ROOT}/vbd/8/51712/state")
    late = f"{BACKEND_ROOT}/vbd/7/51728/hotplug-error"
    child = orphan(daemon, "backend/vbd/7/51728", 1.5, write=late)
    started = time.monotonic()
    settled = settle(7, set, connect=lambda: connect(daemon), timeout=30)
    # it waited for the orphan, so its late write was removed too
    assert child.poll() is not None and time.monotonic() - started >= 1.4
    assert settled.still_running == []
    assert sorted(settled.removed) == [f"{BACKEND_ROOT}/vbd/7", f"{BACKEND_ROOT}/vif/7"]
    # and the vif directory it emptied, as libxl leaves no empty directory behind
    assert nodes(daemon) == {f"{BACKEND_ROOT}/vbd", f"{BACKEND_ROOT}/vbd/8",
                             f"{BACKEND_ROOT}/vbd/8/51712", f"{BACKEND_ROOT}/vbd/8/51712/state"}
    said = describe(settled)
    assert said is not None and f"{BACKEND_ROOT}/vbd/7" in said


def test_nothing_of_a_live_domain_is_removed(daemon: DaemonProcess) -> None:
    write(daemon, f"{BACKEND_ROOT}/vbd/7/51712/state")
    settled = settle(7, lambda: {0, 7}, connect=lambda: connect(daemon), timeout=5)
    assert settled.removed == [] and describe(settled) is None
    assert f"{BACKEND_ROOT}/vbd/7/51712/state" in nodes(daemon)


def test_an_orphan_that_outlives_the_bound_is_said(daemon: DaemonProcess) -> None:
    child = orphan(daemon, "backend/vif/9/0", 30)
    try:
        settled = settle(9, set, connect=lambda: connect(daemon), timeout=1)
        # the shell and the sleep it started: both carry the script's environment
        assert child.pid in settled.still_running
        said = describe(settled)
        assert said is not None and str(child.pid) in said
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_a_detached_device_is_removed_only_once_its_frontend_is_gone(
        daemon: DaemonProcess) -> None:
    back = f"{BACKEND_ROOT}/vbd/7"
    write(daemon, f"{back}/51728/hotplug-error", f"{back}/51712/state",
          "/local/domain/7/device/vbd/51712/state")
    # xvdb (51728): its frontend is gone, so what a late write made goes; xvda is untouched
    settled = settle(7, lambda: {7}, kinds=("vbd",), devid=51728,
                     connect=lambda: connect(daemon), timeout=5)
    assert settled.removed == [f"{back}/51728"]
    # xvda (51712) still has its frontend: libxl has not let go of it, nothing is removed
    assert settle(7, lambda: {7}, kinds=("vbd",), devid=51712,
                  connect=lambda: connect(daemon), timeout=5).removed == []
    assert f"{back}/51712/state" in nodes(daemon)
    # the last device of a domain's kind: its empty domid and kind directories go with it
    write(daemon, f"{BACKEND_ROOT}/vif/7/1/hotplug-error")
    assert settle(7, lambda: {7}, kinds=("vif",), devid=1,
                  connect=lambda: connect(daemon), timeout=5).removed == [f"{BACKEND_ROOT}/vif/7/1"]
    assert not any(path.startswith(f"{BACKEND_ROOT}/vif") for path in nodes(daemon))
    # and a domain's last backend: the backend directory itself (xenstore-ls -f lists
    # nothing under it then, as before the domain was made)
    settle(7, set, connect=lambda: connect(daemon), timeout=5)
    assert nodes(daemon) == set()
