"""The libvirt platform's live-device verbs over a fake libvirt binding: what each hands
libvirt, and that a refusal or a failure leaves the record (and the save file) as it was.
The real daemon is in tests/e2e/test_libvirt_devices.py."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pvhvm.config.source import ConfigSource
from pvhvm.errors import DomainError, InputError, NotOnPlatformError
from pvhvm.libvirt import saveimage
from pvhvm.platforms import libvirt as platform_module
from pvhvm.platforms.libvirt import LibvirtPlatform
from pvhvm.runtime import lifecycle
from pvhvm.runtime.hotplug import HotplugError
from pvhvm.runtime.replan import ReplanError, plan_source
from pvhvm.runtime.resize import ResizeError
from pvhvm.runtime.save import peek
from pvhvm.runtime.savefile import HotplugSpec
from pvhvm.runtime.state import DomainRecord, StateStore

URI = "qemu+unix:///system?socket=/nowhere"
UUID = "0c1f8f3a-5d6e-4f70-8a9b-0123456789ab"
LIVE = f"""<domain type='qemu'><name>g</name><uuid>{UUID}</uuid>
<memory unit='KiB'>327680</memory><devices>
<disk type='file' device='disk'><source file='/img/root'/><target dev='vda' bus='virtio'/>
<alias name='ua-disk-xvda'/></disk>
<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><alias name='ua-disk-hdc'/>
</disk>
<interface type='user'><mac address='00:16:3e:00:00:01'/><alias name='ua-vif-0'/></interface>
{{balloon}}</devices></domain>"""


class FakeError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


class FakeDomain:
    """One running transient domain (libvirt's method names): its live XML, and what it
    was asked."""

    def __init__(self, conn: FakeConn, balloon: bool = True) -> None:
        self.conn = conn
        self.live = ET.fromstring(LIVE.format(
            balloon="<memballoon model='virtio'/>" if balloon else
            "<memballoon model='none'/>"))
        self.calls: list[tuple[str, Any, ...]] = []
        self.fail: dict[str, str] = {}
        #: whether the guest lets go of a device libvirt asks it to release
        self.releases = True

    def _maybe_fail(self, call: str) -> None:
        if call in self.fail:
            raise FakeError(self.fail[call])

    def UUIDString(self) -> str:
        return UUID

    def isActive(self) -> bool:
        return True

    def isPersistent(self) -> bool:
        return False

    def state(self) -> list[int]:
        return [1, 0]

    def info(self) -> list[int]:
        return [1, 0, 0, 1, 10**9]

    def ID(self) -> int:
        return 7

    def XMLDesc(self, flags: int) -> str:
        return ET.tostring(self.live, encoding="unicode")

    def attachDeviceFlags(self, xml: str, flags: int) -> None:
        self.calls.append(("attach", xml, flags))
        self._maybe_fail("attach")
        self.live.find("devices").append(ET.fromstring(xml))  # type: ignore[union-attr]

    def detachDeviceFlags(self, xml: str, flags: int) -> None:
        self.calls.append(("detach-xml", xml, flags))

    def detachDeviceAlias(self, alias: str, flags: int) -> None:
        self.calls.append(("detach", alias, flags))
        if self.releases:
            devices = self.live.find("devices")
            assert devices is not None
            for device in list(devices):
                element = device.find("alias")
                if element is not None and element.get("name") == alias:
                    devices.remove(device)

    def updateDeviceFlags(self, xml: str, flags: int) -> None:
        self.calls.append(("update", xml, flags))

    def setMemoryFlags(self, kib: int, flags: int) -> None:
        self.calls.append(("setmem", kib, flags))

    def memoryStats(self) -> dict[str, int]:
        return {"actual": 192 * 1024}

    def destroy(self) -> None:
        self.conn.domain = None

    def saveFlags(self, path: str, dxml: str, flags: int) -> None:
        self.calls.append(("save", path, flags))
        self._maybe_fail("save")
        data = dxml.encode() + b"\0"
        header = saveimage.MAGIC + (2).to_bytes(4, "little") + len(data).to_bytes(4, "little")
        Path(path).write_bytes(header + bytes(saveimage.HEADER_SIZE - len(header)) + data)
        self.conn.domain = None


class FakeConn:
    def __init__(self, binding: Any) -> None:
        self.binding = binding
        self.domain: FakeDomain | None = FakeDomain(self)
        self.restored: list[str] = []

    def lookupByName(self, name: str) -> FakeDomain:
        if self.domain is None or name != "g":
            raise FakeError("no domain", self.binding.VIR_ERR_NO_DOMAIN)
        return self.domain

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        return self.lookupByName("g")

    def restoreFlags(self, path: str, dxml: str | None, flags: int) -> None:
        self.restored.append(path)
        if self.binding.restore_fails:
            raise FakeError("QEMU could not load the state")
        self.domain = FakeDomain(self)

    def close(self) -> None:
        return None


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    binding = SimpleNamespace(
        libvirtError=FakeError, VIR_ERR_NO_DOMAIN=42, VIR_ERR_OPERATION_INVALID=55,
        VIR_DOMAIN_RUNNING=1, VIR_DOMAIN_BLOCKED=2, VIR_DOMAIN_PAUSED=3, VIR_DOMAIN_SHUTDOWN=4,
        VIR_DOMAIN_SHUTOFF=5, VIR_DOMAIN_CRASHED=6, VIR_DOMAIN_PMSUSPENDED=7,
        VIR_DOMAIN_AFFECT_LIVE=1, VIR_DOMAIN_AFFECT_CONFIG=2, VIR_DOMAIN_DEVICE_MODIFY_FORCE=4,
        VIR_DOMAIN_XML_SECURE=1, VIR_DOMAIN_XML_MIGRATABLE=8, VIR_DOMAIN_SAVE_RUNNING=2,
        VIR_DOMAIN_SAVE_PAUSED=4, restore_fails=False)
    binding.conn = FakeConn(binding)
    binding.open = lambda uri: binding.conn
    monkeypatch.setattr(platform_module, "_binding", lambda: binding)
    monkeypatch.setattr(lifecycle, "host_bridges", lambda: frozenset())
    return binding


@pytest.fixture
def lv(tmp_path: Path) -> Iterator[LibvirtPlatform]:
    # a short state directory: the record's socket paths must fit in 108 bytes
    state = Path(tempfile.mkdtemp(prefix="pvt-", dir="/tmp"))
    platform = LibvirtPlatform(StateStore(state))
    records = platform.records
    records.claim("g")
    (tmp_path / "root.img").write_bytes(bytes(4096))
    (tmp_path / "data.img").write_bytes(bytes(4096))
    # the record as create makes it: a plan of a real config, and that config's source,
    # which save carries and restore plans again (runtime/replan.py)
    source = ConfigSource(file="g.cfg", directory=str(tmp_path), text=(
        f'name = "g"\nuuid = "{UUID}"\nbuilder = "hvm"\nmemory = 192\nmaxmem = 320\n'
        'disk = ["root.img,raw,xvda,w", ",raw,hdc:cdrom,r"]\n'
        'vif = ["mac=00:16:3e:00:00:01"]\n'))
    plan = plan_source(source)
    records.write(DomainRecord(
        name="g", domid=1, uuid=UUID, platform="libvirt", memory_mib=192, vcpus=1,
        plan={**plan.to_json(), "libvirt_uri": URI},
        argv=[], on_poweroff="destroy", on_reboot="restart", on_crash="destroy",
        state="running"))
    lifecycle.write_source(records.paths("g").directory, source)
    yield platform
    shutil.rmtree(state, ignore_errors=True)


def record(lv: LibvirtPlatform) -> dict[str, Any]:
    found = lv.records.read("g")
    assert found is not None
    return found.to_json()


def test_block_attach_hands_libvirt_pvhvms_disk_and_records_it(
        fake: Any, lv: LibvirtPlatform, tmp_path: Path) -> None:
    done = lv.block_attach("g", f"{tmp_path / 'data.img'},raw,xvdb,w")
    (call, xml, flags), = fake.conn.domain.calls
    disk = ET.fromstring(xml)
    assert (call, flags) == ("attach", fake.VIR_DOMAIN_AFFECT_LIVE)
    assert disk.find("target").attrib == {"dev": "vdb", "bus": "virtio"}  # type: ignore[union-attr]
    assert disk.find("alias").get("name") == "ua-disk-xvdb"  # type: ignore[union-attr]
    assert disk.find("source").get("file") == str(tmp_path / "data.img")  # type: ignore[union-attr]
    assert "libvirt virtio vdb" in done.summary
    after = record(lv)
    assert [d["vdev"] for d in after["plan"]["disks"]] == ["xvda", "hdc", "xvdb"]
    assert after["hotplugged"][0]["vdev"] == "xvdb"


def test_refused_attaches_change_nothing(
        fake: Any, lv: LibvirtPlatform, tmp_path: Path) -> None:
    before = record(lv)
    with pytest.raises(HotplugError, match="IDE has no hotplug"):
        lv.block_attach("g", f"{tmp_path / 'data.img'},raw,hdb,w,type=ioemu")
    assert fake.conn.domain.calls == []  # refused before libvirt is asked
    fake.conn.domain.fail["attach"] = "internal error: No more available PCI slots"
    with pytest.raises(DomainError) as caught:
        lv.block_attach("g", f"{tmp_path / 'data.img'},raw,xvdb,w")
    assert "libvirt refused it: internal error: No more available PCI slots" in str(caught.value)
    assert "larger hotplug_slots" in str(caught.value)
    with pytest.raises(DomainError, match="libvirt refused it"):
        lv.network_attach("g", "mac=00:16:3e:00:00:09")
    assert record(lv) == before


def test_detach_waits_for_the_guest_and_force_forgets(
        fake: Any, lv: LibvirtPlatform, tmp_path: Path) -> None:
    lv.block_attach("g", f"{tmp_path / 'data.img'},raw,xvdb,w")
    lv.network_attach("g", "")
    with pytest.raises(HotplugError, match="given at create"):
        lv.block_detach("g", "xvda")
    dom = fake.conn.domain
    dom.releases = False
    attached = record(lv)
    with pytest.raises(DomainError, match=r"did not release it within 0\.2s"):
        lv.block_detach("g", "xvdb", timeout=0.2)
    assert record(lv) == attached
    forced = lv.block_detach("g", "51728", force=True, timeout=0.1)
    assert forced.warnings and "libvirt removes the device once" in forced.warnings[0]
    assert [d["vdev"] for d in record(lv)["plan"]["disks"]] == ["xvda", "hdc"]
    dom.releases = True
    assert lv.network_detach("g", "1").summary == "vif 1 detached"
    assert ("detach", "ua-vif-1", fake.VIR_DOMAIN_AFFECT_LIVE) in dom.calls
    assert [v["devid"] for v in record(lv)["plan"]["vifs"]] == [0]
    assert record(lv)["hotplugged"] == []


def test_cd_media_change_and_mem_set(fake: Any, lv: LibvirtPlatform, tmp_path: Path) -> None:
    iso = tmp_path / "m.iso"
    iso.write_bytes(bytes(2048))
    lv.cd_insert("g", "hdc", str(iso))
    lv.cd_eject("g", "hdc")
    (_, inserted, flags), (_, ejected, _) = fake.conn.domain.calls
    assert flags == fake.VIR_DOMAIN_AFFECT_LIVE | fake.VIR_DOMAIN_DEVICE_MODIFY_FORCE
    assert ET.fromstring(inserted).find("source").get("file") == str(iso)  # type: ignore[union-attr]
    assert ET.fromstring(ejected).find("source") is None
    assert ET.fromstring(ejected).find("target").get("dev") == "hdc"  # type: ignore[union-attr]
    with pytest.raises(HotplugError, match="not a cdrom"):
        lv.cd_insert("g", "xvda", str(iso))

    lv.mem_set("g", 160 * 1024)
    assert fake.conn.domain.calls[-1] == ("setmem", 160 * 1024, fake.VIR_DOMAIN_AFFECT_LIVE)
    assert record(lv)["memory_mib"] == 160
    with pytest.raises(ResizeError, match="maxmem = 320 MiB"):
        lv.mem_set("g", 321 * 1024)
    fake.conn.domain = FakeDomain(fake.conn, balloon=False)
    with pytest.raises(NotOnPlatformError, match="no memory balloon"):
        lv.mem_set("g", 128 * 1024)


def test_save_and_restore_leave_nothing_half_made(
        fake: Any, lv: LibvirtPlatform, tmp_path: Path) -> None:
    target = tmp_path / "g.save"
    with pytest.raises(NotOnPlatformError, match="save -c and -p are not on it"):
        lv.save("g", target, leave="running")
    fake.conn.domain.fail["save"] = "operation failed: migration failed"
    with pytest.raises(DomainError, match="migration failed"):
        lv.save("g", target)
    assert not list(tmp_path.glob("*.save*")) and not list(tmp_path.glob(".g.save*"))
    assert lv.holds("g")
    del fake.conn.domain.fail["save"]
    lv.block_attach("g", f"{tmp_path / 'data.img'},raw,xvdb,w")
    iso = tmp_path / "m.iso"
    iso.write_bytes(bytes(2048))
    lv.cd_insert("g", "hdc", str(iso))

    done = lv.save("g", target)
    assert done.domain == "destroyed" and target.exists() and not lv.holds("g")
    image = peek(target)
    assert image.platform == "libvirt" and "argv" not in image.to_json()
    assert image.extra == {"libvirt_uri": URI} and image.hotplugged[0].vdev == "xvdb"

    # the daemon is never taken from the file: the user names it (--connect)
    with pytest.raises(InputError, match=f"add --connect {re.escape(URI)}$"):
        lv.restore(target, image)
    fake.restore_fails = True
    with pytest.raises(DomainError, match="could not load the state"):
        lv.restore(target, image, connect=URI)
    assert not lv.holds("g")
    fake.restore_fails = False
    restored = lv.restore(target, image, connect=URI)
    assert restored.state == "running"
    assert restored.hotplugged[0]["vdev"] == "xvdb"
    assert [d["vdev"] for d in restored.plan["disks"]] == ["xvda", "hdc", "xvdb"]
    # planned again from the config: the medium cd-insert put in, the attach's spec
    assert restored.plan["disks"][1]["target"] == str(iso) and restored.media == {
        "hdc": str(iso)}
    assert restored.hotplugged[0]["spec"] == f"{tmp_path / 'data.img'},raw,xvdb,w"
    with pytest.raises(DomainError, match="already exists"):
        lv.restore(target, image, connect=URI)

    (tmp_path / "data.img").write_bytes(bytes(10))  # a disk that changed since the save
    lv.destroy("g")
    with pytest.raises(InputError, match="has changed size"):
        lv.restore(target, image, connect=URI)
    assert not lv.holds("g")


def test_save_through_a_remote_daemon_is_refused(fake: Any, lv: LibvirtPlatform,
                                                  tmp_path: Path) -> None:
    lv.records.modify("g", lambda rec: rec.plan.update(libvirt_uri="qemu+ssh://far/system"))
    with pytest.raises(NotOnPlatformError, match="daemon on this host only"):
        lv.save("g", tmp_path / "g.save")
    assert lv.holds("g") and fake.conn.domain.calls == []


def test_a_forged_libvirt_image_starts_nothing(fake: Any, lv: LibvirtPlatform,
                                               tmp_path: Path) -> None:
    """libvirt re-parses its own XML; pvhvm's record is planned again from the config its
    image carries, so an image whose config does not plan, or asks for more than the plan
    allows, gets one line and libvirt is never asked to restore it."""
    target = tmp_path / "g.save"
    lv.save("g", target)
    image = peek(target)
    for forged, words in [
        (dataclasses.replace(image, source=dataclasses.replace(
            image.source, text='name = __import__("os").system("id")\n')), "call"),
        (dataclasses.replace(image, vcpus=99), "99 vCPUs is outside"),
        (dataclasses.replace(image, hotplugged=(HotplugSpec(
            "disk", "/etc/shadow,raw,xvdb,w", None, 51728, vdev="xvdb"),)),
         "devices its config and hot-plugged specs plan"),
    ]:
        with pytest.raises(ReplanError, match=words) as caught:
            lv.restore(target, forged, connect=URI)
        assert "\n" not in str(caught.value)
        assert not lv.holds("g") and fake.conn.restored == []
