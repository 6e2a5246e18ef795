"""Hotplug's decisions without a QEMU: which slot, what is refused, what argv re-creates a
hot-plugged device (real QMP and guests: tests/e2e/test_hotplug.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from pvhvm.config.disk import Access, parse_disk
from pvhvm.config.domain import config_from_text
from pvhvm.config.vif import parse_vif
from pvhvm.errors import DomainError
from pvhvm.plan.plan import DiskPlan, default_mac, make_plan
from pvhvm.plan.types import DeviceKind
from pvhvm.qemu import hotplug as qemu_hotplug
from pvhvm.qemu import qmp
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.runtime import hotplug
from pvhvm.runtime.state import DomainRecord

PATHS = RunPaths(qmp_socket=Path("/r/qmp.sock"), control_socket=Path("/r/ctl.sock"),
                 console_socket=Path("/r/console.sock"), console_log=Path("/r/console.log"))


def record_of(text: str) -> DomainRecord:
    plan = make_plan(config_from_text('name = "g"\nbuilder = "hvm"\n' + text, "g.cfg"),
                     check_files=False)
    return DomainRecord(
        name="g", domid=1, uuid=plan.uuid, platform="qemu", memory_mib=plan.memory_mib,
        vcpus=plan.vcpus, plan=plan.to_json(), argv=qemu_argv(plan, PATHS, ArgvOptions()),
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", state="running")


PV = 'disk = ["/i/root.img,xvda,w,type=xenbus"]\n'


def test_slots_are_the_reserved_ports_in_order_then_refused() -> None:
    record = record_of(PV)
    assert hotplug._free_slot(record) == "hotplug1"
    record.hotplugged.append({"kind": "disk", "slot": "hotplug1"})
    assert hotplug._free_slot(record) == "hotplug2"
    record.hotplugged.append({"kind": "vif", "slot": "hotplug2"})
    with pytest.raises(hotplug.HotplugError, match="no free hotplug slot: its 2 slot"):
        hotplug._free_slot(record)
    with pytest.raises(hotplug.HotplugError, match="its 0 slot"):
        hotplug._free_slot(record_of(PV + "hotplug_slots = 0\n"))


def test_pc_hotplugs_on_its_root_bus() -> None:
    assert hotplug._free_slot(record_of('disk = ["/i/root.img,hda,w"]\n')) is None


@pytest.mark.parametrize(("spec", "words"), [
    ("/i/d.img,hdb,w,type=ioemu", "IDE has no hotplug"),
    ("/i/d.iso,hdc:cdrom,r", "IDE has no hotplug"),
    ("/i/root.img,xvda,w", "already has disk 'xvda'"),
    ("nbd://h/x,xvdb,w", "file or block device"),
])
def test_disks_refused(spec: str, words: str) -> None:
    with pytest.raises(hotplug.HotplugError, match=words):
        hotplug._disk_plan(parse_disk(spec), record_of(PV))


def test_untyped_disk_is_pv_as_xl_attaches_it(tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(b"")
    disk = hotplug._disk_plan(parse_disk(f"{image},xvdb,r"), record_of(PV))
    assert (disk.kind, disk.devid, disk.access) == (DeviceKind.XENBUS, 51728, Access.RO)


def test_vif_devid_and_mac_as_the_planner_makes_them() -> None:
    record = record_of(PV + 'vif = ["type=xenbus"]\n')
    vif = hotplug._vif_plan(parse_vif(""), record)
    assert (vif.devid, vif.mac, vif.kind) == (1, default_mac(record.uuid, 1), DeviceKind.XENBUS)
    taken = record.plan["vifs"][0]["mac"]
    with pytest.raises(hotplug.HotplugError, match="already used"):
        hotplug._vif_plan(parse_vif(f"mac={taken}"), record)
    with pytest.raises(hotplug.HotplugError, match="emulated NIC cannot be hot-plugged"):
        hotplug._vif_plan(parse_vif("type=ioemu,model=e1000"), record)


def test_argv_fragment_goes_before_the_supervisor_options_and_comes_out_again() -> None:
    record = record_of(PV)
    disk = DiskPlan(vdev="xvdb", devid=51728, kind=DeviceKind.XENBUS, target="/i/d,1.img",
                    format="qcow2", access=Access.RW_SHARED, cdrom=False, ide_place=None)
    node = qemu_hotplug.blockdev_node(disk, direct_io=False, block_device=False)
    assert node == {"driver": "qcow2", "node-name": "disk-xvdb", "read-only": False,
                    "file": {"driver": "file", "filename": "/i/d,1.img", "aio": "threads",
                             "cache": {"direct": False, "no-flush": False}, "locking": "off"}}
    device = qemu_hotplug.disk_device(disk, 2, "hotplug1")
    fragment = qemu_hotplug.blockdev_argv(node) + qemu_hotplug.device_argv(device)
    assert json.loads(fragment[1]) == node
    assert fragment[3] == ("virtio-blk-pci,id=vbd-51728,drive=disk-xvdb,num-queues=2,"
                           "queue-size=256,bus=hotplug1")
    argv = hotplug.before_tail(record.argv, fragment)
    assert argv[argv.index("-no-shutdown") - 4:argv.index("-no-shutdown")] == fragment
    assert hotplug._without(argv, fragment) == record.argv


class FakeQemu:
    """A QMP peer on a Unix socket (a fake transport): answers each command from ``replies``
    (default: success) and keeps the commands it was sent."""

    def __init__(self, replies: dict[str, dict[str, Any]]) -> None:
        self.replies = replies
        self.commands: list[tuple[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                        "package": ""}, "capabilities": []}}
        writer.write(json.dumps(greeting).encode() + b"\n")
        decoder, buffer = json.JSONDecoder(), ""
        while chunk := await reader.read(4096):  # qemu.qmp sends JSON with no newline
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    message, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                await self.answer(message, writer)
        writer.close()

    async def answer(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        command = message["execute"]
        self.commands.append((command, message.get("arguments")))
        reply = self.replies.get(command, {"return": {}})
        if "id" in message:
            reply = {**reply, "id": message["id"]}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


async def attach_through(fake: FakeQemu, socket: Path) -> None:
    server = await asyncio.start_unix_server(fake.serve, path=str(socket))
    try:
        client = await qmp.connect(socket, "test")
        try:
            await hotplug.plug_pair(client, ("blockdev-add", {"node-name": "disk-xvdb"}),
                                    {"driver": "virtio-blk-pci", "id": "vbd-51728"},
                                    ("blockdev-del", {"node-name": "disk-xvdb"}))
        finally:
            await client.disconnect()
    finally:
        server.close()
        await server.wait_closed()


def test_a_device_qemu_refuses_takes_its_block_node_with_it(tmp_path: Path) -> None:
    refusal = {"error": {"class": "GenericError",
                         "desc": "Bus 'hotplug1' does not support hotplugging"}}
    fake = FakeQemu({"device_add": refusal})
    with pytest.raises(DomainError, match=r"QEMU refused device_add: .*hotplugging"):
        asyncio.run(attach_through(fake, tmp_path / "q.sock"))
    assert [c for c, _ in fake.commands] == [
        "qmp_capabilities", "blockdev-add", "device_add", "blockdev-del"]
    assert fake.commands[-1][1] == {"node-name": "disk-xvdb"}


def test_a_refused_block_node_adds_no_device(tmp_path: Path) -> None:
    fake = FakeQemu({"blockdev-add": {"error": {"class": "GenericError", "desc": "no"}}})
    with pytest.raises(DomainError, match="QEMU refused blockdev-add"):
        asyncio.run(attach_through(fake, tmp_path / "q.sock"))
    assert [c for c, _ in fake.commands] == ["qmp_capabilities", "blockdev-add"]


@pytest.mark.parametrize(("attach", "spec", "prefix"), [
    (hotplug.disk_to_attach, "/i/d.img,xvdb,w,junk=1", "disk spec '/i/d.img,xvdb,w,junk=1': "),
    (hotplug.vif_to_attach, "bridge=br0,colour=red", "vif spec 'bridge=br0,colour=red': "),
])
def test_a_bad_spec_is_named_once(attach: Any, spec: str, prefix: str) -> None:
    """block-/network-attach's error names the spec once (the parser's message already
    does; it used to read "disk spec ...: disk spec ...:")."""
    with pytest.raises(hotplug.HotplugError) as info:
        attach(spec, record_of(PV))
    assert str(info.value).startswith(prefix) and str(info.value).count(spec) == 1, info.value
