"""Kept logs (issue 21, item 3): start markers, the current run, rotation by size; a failed
start quotes only its own QEMU output; bridges a vif names; the VNC display as recorded."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
from pathlib import Path

import pytest

from pvhvm.errors import DomainError
from pvhvm.plan.plan import DEFAULT_BRIDGE, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.runtime import logs
from pvhvm.runtime.lifecycle import (
    bridge_allowed,
    vif_bridge_problems,
    vif_notes,
    vnc_display,
)
from pvhvm.runtime.listing import list_rows, vnc_address
from pvhvm.runtime.state import DomainRecord, StateStore
from pvhvm.runtime.supervisor import Supervisor, vnc_of


def test_marker_line() -> None:
    when = datetime.datetime(2026, 12, 6, 22, 0, 5, tzinfo=datetime.UTC)
    assert logs.marker("web1", 4242, when) == (
        "--- pvhvm: domain web1 started at 2026-12-06T22:00:05+00:00 (QEMU pid 4242) ---\n")


def test_markers_append_and_the_current_run_is_after_the_last(tmp_path: Path) -> None:
    log = tmp_path / "g.console.log"
    logs.write_marker(log, "g", 1)
    with open(log, "a") as out:
        out.write("first boot\nKernel panic - not syncing: sysrq")  # no newline at the end
    logs.write_marker(log, "g", 2)
    with open(log, "a") as out:
        out.write("second boot\n")
    text = log.read_text()
    assert "Kernel panic" in text  # the earlier run is kept
    lines = text.splitlines()
    assert lines[3].startswith("--- pvhvm: domain g started at ") and "(QEMU pid 2)" in lines[3]
    assert logs.current_run(text) == "second boot\n"
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_current_run_without_a_marker_is_everything() -> None:
    assert logs.current_run("a\nb\n") == "a\nb\n"
    assert logs.current_run("") == ""
    assert logs.current_run(logs.marker("g", 3)) == ""


def test_rotate_keeps_three(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    for generation in range(5):
        log.write_text(f"{generation}" * 20)
        assert logs.rotate(log, limit=10)
    assert not log.exists()
    assert [(tmp_path / f"x.log.{n}").read_text()[0] for n in (1, 2, 3)] == ["4", "3", "2"]
    assert not (tmp_path / "x.log.4").exists()
    log.write_text("small")
    assert not logs.rotate(log, limit=10) and log.read_text() == "small"


def test_rotate_open_truncates_in_place_under_a_writer(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(writer, b"old output " * 10)
        assert logs.rotate_open(log, limit=50)
        os.write(writer, b"new\n")  # QEMU's descriptor: O_APPEND lands at the new end
    finally:
        os.close(writer)
    assert log.read_bytes() == b"new\n"
    rotated = tmp_path / "c.log.1"
    assert rotated.read_bytes() == b"old output " * 10
    assert stat.S_IMODE(os.stat(rotated).st_mode) == 0o600


def _record(name: str = "g", vnc: dict[str, object] | None = None) -> DomainRecord:
    return DomainRecord(name=name, domid=1, uuid="u", platform="qemu", memory_mib=64, vcpus=1,
                        plan={}, argv=[], on_poweroff="destroy", on_reboot="restart",
                        on_crash="destroy", vnc=vnc)


def test_failed_start_quotes_only_its_own_qemu_output(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    supervisor = Supervisor(store, "g")
    log = store.paths("g").qemu_log
    log.parent.mkdir(parents=True)
    log.write_text("--- earlier argv\nqemu: old error one\nqemu: old error two\n")
    supervisor.qemu_log_offset = log.stat().st_size
    with open(log, "a") as out:
        out.write("--- this argv\nqemu: this run's error\n")
    message = supervisor._launch_failure()
    assert "this run's error" in message and "old error" not in message
    supervisor.qemu_log_offset = log.stat().st_size
    assert supervisor._launch_failure().endswith(": no output")


def _vif(devid: int, bridge: str | None) -> VifPlan:
    """A vif as the planner makes it: one that names no bridge is on Xen's default."""
    return VifPlan(devid=devid, kind=DeviceKind.XENBUS, mac="00:16:3e:00:00:01",
                   bridge=bridge or DEFAULT_BRIDGE, model=None)


def test_a_missing_bridge_is_a_problem_xens_default_a_note(tmp_path: Path) -> None:
    conf = tmp_path / "bridge.conf"
    conf.write_text("allow br0\n")
    bridges = frozenset({"br0"})
    vifs = [_vif(0, "xenbr1"), _vif(1, None), _vif(2, "br0"), _vif(3, "xenbr0")]
    assert vif_bridge_problems(vifs, bridges, conf) == [
        "vif 0: bridge 'xenbr1' does not exist on this host (bridges here: br0); give an "
        "existing bridge, or no bridge= for QEMU user networking"]
    assert vif_notes(vifs, bridges) == [
        f"vif {n}: no bridge 'xenbr0' (Xen's default bridge, used when a vif names none) on "
        "this host: QEMU user networking" for n in (1, 3)]
    # where xenbr0 exists it is used, and QEMU's bridge helper must allow it
    (problem,) = vif_bridge_problems([_vif(1, None)], frozenset({"xenbr0"}), conf)
    assert "bridge 'xenbr0' exists but QEMU's bridge helper" in problem
    assert vif_notes([_vif(1, None)], frozenset({"xenbr0"})) == []
    # under libvirt no helper is involved: only a missing bridge is a problem there
    assert vif_bridge_problems([_vif(1, None)], frozenset({"xenbr0"}), None) == []
    assert len(vif_bridge_problems([_vif(0, "xenbr1")], frozenset(), None)) == 1


def test_a_bridge_the_helper_does_not_allow_names_bridge_conf(tmp_path: Path) -> None:
    conf = tmp_path / "bridge.conf"
    problems = vif_bridge_problems([_vif(0, "br0")], frozenset({"br0"}), conf)
    assert len(problems) == 1
    assert f"{conf} cannot be read" in problems[0] and f"'allow br0' to {conf}" in problems[0]
    conf.write_text("allow br1\n")
    (problem,) = vif_bridge_problems([_vif(0, "br0")], frozenset({"br0"}), conf)
    assert f"{conf} does not allow it" in problem


def test_bridge_conf_rules(tmp_path: Path) -> None:
    conf, extra = tmp_path / "bridge.conf", tmp_path / "extra.conf"
    extra.write_text("allow br2\n")
    conf.write_text(f"# QEMU's ACL\nallow br0  # the lab\ninclude {extra}\n")
    assert bridge_allowed("br0", conf) and bridge_allowed("br2", conf)
    assert bridge_allowed("br1", conf) is False
    conf.write_text("allow all\ndeny br1\n")
    assert bridge_allowed("br0", conf) and bridge_allowed("br1", conf) is False
    conf.write_text(f"allow all\ninclude {tmp_path / 'missing.conf'}\n")
    assert bridge_allowed("br0", conf) is None


def test_vnc_as_query_vnc_says_it() -> None:
    answer = {"enabled": True, "host": "127.0.0.1", "service": "5903", "family": "ipv4",
              "auth": "none", "clients": []}
    vnc = vnc_of(answer)
    assert vnc == {"host": "127.0.0.1", "port": 5903, "display": 3, "family": "ipv4"}
    assert vnc_of({"enabled": False}) is None
    assert vnc_address(vnc) == "127.0.0.1:3"
    assert vnc_address({"host": "0.0.0.0", "display": 1}) == ":1"
    assert vnc_address({"host": "::1", "display": 2}) == "[::1]:2"
    record = _record(vnc=vnc)
    assert vnc_display(record) == "127.0.0.1:3"
    (row,) = list_rows([record], lambda r: 0.0)
    assert row.to_json()["vnc"] == "127.0.0.1:3"
    with pytest.raises(DomainError, match="has no VNC server"):
        vnc_display(_record())


def test_the_supervisor_rotates_open_logs_periodically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    paths = store.paths("g")
    paths.console_log.parent.mkdir(parents=True)
    for path in (paths.console_log, paths.qemu_log, paths.supervisor_log):
        path.write_bytes(b"x" * 64)
    monkeypatch.setattr(logs, "ROTATE_INTERVAL", 0.01)
    monkeypatch.setattr(logs, "ROTATE_SIZE", 32)

    async def a_while() -> None:
        task = asyncio.create_task(Supervisor(store, "g").rotate_logs())
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(a_while())
    for path in (paths.console_log, paths.qemu_log, paths.supervisor_log):
        assert path.read_bytes() == b"" and logs.rotated(path, 1).read_bytes() == b"x" * 64


def test_marker_for_a_qemu_libvirt_started() -> None:
    moment = datetime.datetime(2026, 12, 7, 1, 0, 0, tzinfo=datetime.UTC)
    assert logs.marker("web1", None, moment) == (
        "--- pvhvm: domain web1 started at 2026-12-07T01:00:00+00:00 (started by libvirt) ---\n")
