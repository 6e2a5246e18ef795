"""``pvhvm reboot`` on the supervisor's side (issue 21, item 2): the guest's power-off that
follows the request is its reboot, acted on as on_reboot (libvirt's fakeReboot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pvhvm.runtime.state import DomainPaths, DomainRecord, DomainState, StateStore
from pvhvm.runtime.supervisor import DESTROY, Supervisor


class FakeQmp:
    """What run_once and reset_in_place use of a QMPClient: commands are recorded."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    async def execute(self, command: str, arguments: Any = None) -> dict[str, Any]:
        self.commands.append(command)
        return {}

    @property
    async def events(self) -> AsyncIterator[dict[str, Any]]:  # none: they come queued
        await asyncio.Event().wait()
        yield {}


class FakeQemu:
    """A QEMU that exits when told to."""

    def __init__(self) -> None:
        self.pid = 4242
        self.returncode: int | None = None
        self.exited = asyncio.Event()

    async def wait(self) -> int:
        await self.exited.wait()
        return 0

    def kill(self) -> None:
        self.exit()

    def exit(self) -> None:
        self.returncode = 0
        self.exited.set()


def supervisor_of(tmp_path: Path, on_reboot: str, requested: bool) -> Supervisor:
    store = StateStore(tmp_path)

    def build(domid: int, paths: DomainPaths) -> DomainRecord:
        return DomainRecord(
            name="g", domid=domid, uuid="u", platform="qemu", memory_mib=64, vcpus=1,
            plan={}, argv=[], on_poweroff="destroy", on_reboot=on_reboot, on_crash="destroy",
            state=DomainState.RUNNING.value, reboot_requested=requested)

    _, owner = store.introduce("g", build)
    owner.close()
    return Supervisor(store, "g")


async def run_with(supervisor: Supervisor, words: list[str]) -> tuple[str, FakeQmp]:
    qmp, qemu = FakeQmp(), FakeQemu()
    supervisor.qmp = qmp  # type: ignore[assignment]
    supervisor.proc = qemu
    events: asyncio.Queue[str] = asyncio.Queue()
    for word in words:
        events.put_nowait(word)
    task = asyncio.create_task(supervisor.run_once(supervisor.record(), events))
    await asyncio.sleep(0.2)
    if not task.done():
        qemu.exit()  # the domain's end, if the words did not end the run
    return await task, qmp


def test_a_power_off_after_reboot_is_a_reset_in_the_same_qemu(tmp_path: Path) -> None:
    supervisor = supervisor_of(tmp_path, "restart", requested=True)
    # what QEMU sends as the guest powers off (-no-shutdown): SHUTDOWN, STOP; then RESUME
    action, qmp = asyncio.run(run_with(supervisor, ["poweroff", "stop", "resume"]))
    assert qmp.commands == ["system_reset", "cont"]
    record = supervisor.record()
    assert record.state == "running" and not record.reboot_requested
    del action  # the fake QEMU is made to exit afterwards: what that means is not tested here


def test_a_power_off_after_reboot_with_on_reboot_destroy_ends_the_domain(
    tmp_path: Path
) -> None:
    supervisor = supervisor_of(tmp_path, "destroy", requested=True)
    got, qmp = asyncio.run(run_with(supervisor, ["poweroff"]))
    assert got == DESTROY and qmp.commands == []


def test_a_power_off_after_reboot_with_on_reboot_preserve_keeps_it(tmp_path: Path) -> None:
    supervisor = supervisor_of(tmp_path, "preserve", requested=True)
    _, qmp = asyncio.run(run_with(supervisor, ["poweroff"]))
    record = supervisor.record()
    assert qmp.commands == [] and record.state == "shutdown" and not record.reboot_requested


def test_a_power_off_without_reboot_is_on_poweroff(tmp_path: Path) -> None:
    supervisor = supervisor_of(tmp_path, "restart", requested=False)
    got, qmp = asyncio.run(run_with(supervisor, ["poweroff"]))
    assert got == DESTROY and qmp.commands == []  # on_poweroff=destroy
