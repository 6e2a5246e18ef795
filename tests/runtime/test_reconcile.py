"""Records against reality: stale starting records, dead QEMUs, owner locks, racing names
(no QEMU: a sleeping Python stands in for it, its command line naming the QMP socket)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pvhvm.errors import DomainError
from pvhvm.runtime import lifecycle
from pvhvm.runtime.state import (
    DomainPaths,
    DomainRecord,
    DomainState,
    OwnerLock,
    StateStore,
    pid_alive,
    process_cpu_seconds,
    qemu_alive,
)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def build(
    state: DomainState = DomainState.RUNNING, qemu_pid: int | None = None
) -> Callable[[int, DomainPaths], DomainRecord]:
    def make(domid: int, paths: DomainPaths) -> DomainRecord:
        return DomainRecord(
            name=paths.directory.name, domid=domid, uuid="u", platform="qemu", memory_mib=64,
            vcpus=1, plan={}, argv=[], on_poweroff="destroy", on_reboot="restart",
            on_crash="destroy", state=state.value, qemu_pid=qemu_pid,
        )
    return make


@pytest.fixture
def fake_qemu(store: StateStore) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line names domain 'vm's QMP socket, as QEMU's does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             f"path={store.paths('vm').qmp_socket}"])
    yield proc
    proc.kill()
    proc.wait()


def introduce(store: StateStore, state: DomainState, qemu_pid: int | None = None,
              keep_owner: bool = False) -> OwnerLock | None:
    _, owner = store.introduce("vm", build(state, qemu_pid))
    if keep_owner:
        return owner
    owner.close()
    return None


def on_disk_state(store: StateStore) -> str:
    return str(json.loads(store.paths("vm").record.read_text())["state"])


def test_introduce_makes_a_whole_domain_and_one_of_two_wins(store: StateStore) -> None:
    record, owner = store.introduce("vm", build())
    assert record.domid == 1 and store.read("vm") == record
    assert OwnerLock.held(store.paths("vm").owner_lock) is True
    with pytest.raises(DomainError, match="domain 'vm' already exists"):
        store.introduce("vm", build())
    owner.close()
    assert OwnerLock.held(store.paths("vm").owner_lock) is False
    assert store.names() == ["vm"]
    assert not [p for p in (store.root / "domains").iterdir() if p.name.startswith(".")]


def test_domids_are_not_reused(store: StateStore) -> None:
    """Issue 21 item 6: a freed domid is not given again (it was the smallest free one)."""
    for name in ("a", "b", "c"):
        store.introduce(name, build())[1].close()
    store.release("b")
    assert store.introduce("d", build())[0].domid == 4


def test_staging_of_a_dead_creator_is_swept(store: StateStore) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (store.root / "domains").mkdir(parents=True)
    staging = store.root / "domains" / f".vm.{dead.pid}.new"
    staging.mkdir()
    mine = store.root / "domains" / f".other.{os.getpid()}.new"
    mine.mkdir()
    assert store.names() == []
    store.sweep_staging()
    assert not staging.exists() and mine.exists()


def test_starting_record_without_owner_is_removed(store: StateStore) -> None:
    introduce(store, DomainState.STARTING)
    assert lifecycle.refresh(store, "vm") is None
    assert not store.paths("vm").directory.exists()


def test_starting_record_without_owner_takes_its_qemu_with_it(
    store: StateStore, fake_qemu: subprocess.Popen[bytes]
) -> None:
    introduce(store, DomainState.STARTING, qemu_pid=fake_qemu.pid)
    assert lifecycle.refresh(store, "vm") is None
    assert fake_qemu.wait(timeout=5) != 0
    assert not store.paths("vm").directory.exists()


def test_starting_record_with_owner_is_kept(store: StateStore) -> None:
    owner = introduce(store, DomainState.STARTING, keep_owner=True)
    assert owner is not None
    record = lifecycle.refresh(store, "vm")
    assert record is not None and record.domain_state is DomainState.STARTING
    owner.close()
    assert lifecycle.refresh(store, "vm") is None


def test_owned_record_whose_qemu_is_gone_shows_crashed_but_is_not_rewritten(
    store: StateStore,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = introduce(store, DomainState.RUNNING, qemu_pid=dead.pid, keep_owner=True)
    record = lifecycle.refresh(store, "vm")
    assert record is not None and record.domain_state is DomainState.CRASHED
    assert on_disk_state(store) == "running"  # the supervisor is the record's writer
    assert owner is not None
    owner.close()


def test_unowned_record_whose_qemu_is_gone_is_reported_crashed(store: StateStore) -> None:
    introduce(store, DomainState.RUNNING, qemu_pid=None)
    (record,) = lifecycle.list_domains(store)
    assert record.domain_state is DomainState.CRASHED
    lifecycle.destroy("vm", store)
    assert lifecycle.list_domains(store) == []


def test_unowned_running_qemu_is_found_again(
    store: StateStore, fake_qemu: subprocess.Popen[bytes]
) -> None:
    introduce(store, DomainState.RUNNING, qemu_pid=fake_qemu.pid)
    record = lifecycle.refresh(store, "vm", adopt=False)
    assert record is not None and record.domain_state is DomainState.RUNNING
    assert fake_qemu.poll() is None


def test_a_reused_pid_is_not_our_qemu(store: StateStore) -> None:
    introduce(store, DomainState.RUNNING, qemu_pid=os.getpid())
    record = store.read("vm")
    assert record is not None and pid_alive(os.getpid())
    assert not qemu_alive(record, store.paths("vm"))
    refreshed = lifecycle.refresh(store, "vm", adopt=False)
    assert refreshed is not None and refreshed.domain_state is DomainState.CRASHED


def test_directory_without_record_and_owner_is_removed(store: StateStore) -> None:
    introduce(store, DomainState.RUNNING)
    store.paths("vm").record.unlink()
    assert lifecycle.refresh(store, "vm") is None
    assert not store.paths("vm").directory.exists()


def test_zombies_count_as_gone() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid) and not pid_alive(None)


def test_cpu_seconds() -> None:
    assert process_cpu_seconds(os.getpid()) > 0
    assert process_cpu_seconds(None) == 0.0


def test_unknown_domain(store: StateStore) -> None:
    for verb in (lifecycle.lookup, lifecycle.pause, lifecycle.unpause, lifecycle.reboot,
                 lifecycle.shutdown, lifecycle.destroy):
        with pytest.raises(DomainError, match="no domain named 'nope'"):
            verb("nope", store)  # type: ignore[operator]
