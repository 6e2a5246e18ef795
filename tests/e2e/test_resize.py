"""mem-set and vcpu-set on a real guest (TCG), through the CLI, seen from inside the guest
(its busybox shell on the console): the balloon moves MemTotal down and back up, a
hot-plugged vCPU comes online, the refusals above the maximums, and a guest reboot keeps
both. One boot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvhvm.qemu import qmp
from tests import jsonout
from tests.e2e.conftest import EXAMPLES, Pvhvm
from tests.e2e.test_hotplug import guest_shell, last_report, refused, wait_for

pytestmark = pytest.mark.e2e


def mem_total_kib(pvhvm: Pvhvm, name: str) -> int:
    out = guest_shell(pvhvm, name, "grep MemTotal /proc/meminfo")
    match = re.search(r"MemTotal:\s+(\d+) kB", out)
    assert match, out
    return int(match.group(1))


def online_cpus(pvhvm: Pvhvm, name: str) -> str:
    out = guest_shell(pvhvm, name, "cat /sys/devices/system/cpu/online")
    lines = [ln.strip() for ln in out.splitlines() if re.fullmatch(r"[0-9,-]+", ln.strip())]
    return lines[-1] if lines else ""


def balloon_mib(pvhvm: Pvhvm, name: str) -> int:
    result = qmp.execute(pvhvm.state / "domains" / name / "ctl.sock", "query-balloon")
    return int(result["actual"]) >> 20


def listed(pvhvm: Pvhvm, name: str) -> tuple[int, int]:
    row = jsonout.result(pvhvm.run("list", "--json", name).stdout)[0]
    return int(row["memory_mib"]), int(row["vcpus"])


def test_mem_set_and_vcpu_set_seen_by_the_guest(
        pvhvm: Pvhvm, domain: list[str], imagedir: Path) -> None:
    name = "resize"
    domain.append(name)
    pvhvm.run("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}", f"name={name}",
              "memory=192", "maxmem=320", "vcpus=1", "maxvcpus=2", "--accel", "tcg")
    pvhvm.wait_report(name)
    # booted with maxmem, ballooned down to memory at start
    assert wait_for("the balloon at 192 MiB", lambda: balloon_mib(pvhvm, name) == 192, 60)
    start = mem_total_kib(pvhvm, name)
    assert start < 200 * 1024, start
    assert listed(pvhvm, name) == (192, 1)

    # down, then up to maxmem: the guest's MemTotal follows
    pvhvm.run("mem-set", name, "128m")
    assert wait_for("the balloon at 128 MiB", lambda: balloon_mib(pvhvm, name) == 128, 60)
    low = mem_total_kib(pvhvm, name)
    assert 60 * 1024 <= start - low <= 68 * 1024, (start, low)
    pvhvm.run("mem-set", name, "320")
    assert wait_for("the balloon at 320 MiB", lambda: balloon_mib(pvhvm, name) == 320, 60)
    high = mem_total_kib(pvhvm, name)
    assert 188 * 1024 <= high - low <= 196 * 1024, (low, high)
    assert listed(pvhvm, name) == (320, 1)

    # refusals: one line, exit 1, nothing changed
    assert "maxmem = 320 MiB" in refused(pvhvm, "mem-set", name, "321")
    assert "maxmem = 320 MiB" in refused(pvhvm, "mem-set", name, "1g")
    assert "below the least" in refused(pvhvm, "mem-set", name, "0")
    assert "is not a size" in refused(pvhvm, "mem-set", name, "lots")
    assert "maxvcpus = 2" in refused(pvhvm, "vcpu-set", name, "3")
    assert "at least 1" in refused(pvhvm, "vcpu-set", name, "0")
    assert balloon_mib(pvhvm, name) == 320

    # a vCPU hot-plugged, and the guest brings it online
    pvhvm.run("vcpu-set", name, "2", "--ignore-host")
    assert wait_for("cpu1 online", lambda: online_cpus(pvhvm, name) == "0-1", 60)
    assert listed(pvhvm, name) == (320, 2)
    assert "refused under tcg" in refused(pvhvm, "vcpu-set", name, "1")

    # a guest reboot keeps both (as xl's): the target is set again, the vCPU stays
    pvhvm.run("mem-set", name, "160")
    pvhvm.run("reboot", name)
    last_report(pvhvm, name, 1)
    assert wait_for("the balloon at 160 MiB", lambda: balloon_mib(pvhvm, name) == 160, 60)
    assert wait_for("two vCPUs online", lambda: online_cpus(pvhvm, name) == "0-1", 60)
    long = jsonout.result(pvhvm.run("list", "-l", name).stdout)[0]
    assert (long["plan"]["memory"], long["plan"]["maxmem"]) == (160, 320)
    assert (long["plan"]["vcpus"], long["plan"]["maxvcpus"]) == (2, 2)
    assert "2,maxcpus=2" in long["argv"]
