"""The planner: defaults, validation, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.config.domain import Dialect, config_from_text
from pvhvm.errors import ConfigError, PvhvmError
from pvhvm.plan.plan import Plan, Platform, default_mac, make_plan
from pvhvm.plan.types import DeviceClass, DeviceKind, DeviceType, default_registry


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a.img", "b.img", "c.iso", "vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(b"\0" * 512)
    return tmp_path


def plan_of(text: str, images: Path, dialect: Dialect | None = None, **kw: object) -> Plan:
    config = config_from_text(text, "g.cfg", {"d": str(images)}, dialect)
    return make_plan(config, **kw)  # type: ignore[arg-type]


def test_defaults_from_xen_3_0_2(images: Path) -> None:
    plan = plan_of(
        'name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,hda,w", "file:"+d+"/b.img,xvdb,w",'
        '"phy:"+d+"/c.iso,sdc,r"]\nvif=["", "type=ioemu"]', images, Dialect.XEND_302,
    )
    assert [x.kind for x in plan.disks] == [DeviceKind.IOEMU, DeviceKind.XENBUS, DeviceKind.XENBUS]
    assert [x.kind for x in plan.vifs] == [DeviceKind.XENBUS, DeviceKind.IOEMU]
    assert plan.vifs[1].model == "rtl8139" and plan.vifs[0].model is None
    assert plan.ide_controller
    assert [x.devid for x in plan.disks] == [768, 51728, 2080]


def test_pv_only_has_no_ide_controller(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,hda,w,type=xenbus"]\nvif=[""]', images)
    assert not plan.ide_controller
    assert plan.disks[0].kind is DeviceKind.XENBUS and plan.disks[0].ide_place is None


def test_explicit_type_wins(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\ndisk=["%s/a.img,raw,hda,rw,type=xenbus" % d,'
                   '"%s/b.img,raw,hdb,rw,type=ioemu" % d]', images)
    assert [x.kind for x in plan.disks] == [DeviceKind.XENBUS, DeviceKind.IOEMU]
    assert [x.ide_place for x in plan.disks] == [None, (0, 1)]


def test_ioemu_disk_outside_ide_places(images: Path) -> None:
    with pytest.raises(ConfigError) as info:
        plan_of('name="g"; builder="hvm"\ndisk=["%s/a.img,raw,xvda,rw,type=ioemu" % d]', images,
                Dialect.XM)
    assert "four IDE places hda, hdb, hdc, hdd" in str(info.value)
    assert str(info.value).startswith("g.cfg:2:7:")
    with pytest.raises(ConfigError, match="hde is not one"):
        plan_of('name="g"; builder="hvm"\ndisk=["file:%s/a.img,hde,w" % d]', images, Dialect.XM)
    # xl: a disk past the first four is PV only (libxl_dm.c)
    plan = plan_of('name="g"; builder="hvm"\ndisk=["%s/a.img,raw,hde,rw" % d]', images)
    assert plan.disks[0].kind is DeviceKind.XENBUS


def test_cdrom_is_always_emulated(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\ndisk=[",hdc:cdrom,r", d+"/c.iso,,hdd,cdrom"]', images)
    assert all(x.kind is DeviceKind.IOEMU and x.cdrom for x in plan.disks)
    assert [x.ide_place for x in plan.disks] == [(1, 0), (1, 1)]
    with pytest.raises(ConfigError, match="a cdrom is always emulated"):
        plan_of('name="g"; builder="hvm"\ndisk=[d+"/c.iso,,hdc,cdrom,type=xenbus"]', images)


def test_unknown_type(images: Path) -> None:
    known = r"type='blktap' is not a disk type \(known: ioemu, xenbus"
    with pytest.raises(ConfigError, match=known):
        plan_of('name="g"; builder="hvm"\ndisk=[d+"/a.img,,xvda,rw,type=blktap"]', images)
    with pytest.raises(ConfigError, match="type='vif' is not a disk type"):
        plan_of('name="g"; builder="hvm"\ndisk=[d+"/a.img,,xvda,rw,type=vif"]', images)
    with pytest.raises(ConfigError, match="type='bogus' is not a nic type"):
        plan_of('name="g"; builder="hvm"\nvif=["type=bogus"]', images, Dialect.XM)
    # xl: "Invalid parameter `type'." and its default, type=ioemu
    plan = plan_of('name="g"; builder="hvm"\nvif=["type=bogus"]', images)
    assert plan.vifs[0].kind is DeviceKind.IOEMU
    assert any("Invalid parameter `type'" in w and "g.cfg:2:" in w for w in plan.warnings)


def test_type_and_prefix_disagree(images: Path) -> None:
    with pytest.raises(ConfigError, match="disagrees with the ioemu: prefix"):
        plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,ioemu:hda,w,type=xenbus"]', images)


def test_two_disks_on_one_vdev(images: Path) -> None:
    with pytest.raises(ConfigError, match=r"already used by disk 'xvda' at g\.cfg:2:7"):
        plan_of('name="g"; builder="hvm"\ndisk=[d+"/a.img,,xvda,rw", d+"/b.img,,xvda,rw"]', images)


def test_writable_image_twice(images: Path) -> None:
    with pytest.raises(ConfigError, match="use mode w! on both"):
        plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,xvda,w", "file:"+d+"/a.img,xvdb,r"]', images,
                Dialect.XM)
    plan = plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,xvda,w!", "file:"+d+"/a.img,xvdb,w!"]',
                   images)
    assert len(plan.disks) == 2
    plan = plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,xvda,r", "file:"+d+"/a.img,xvdb,r"]', images,
                   Dialect.XM)
    assert len(plan.disks) == 2


@pytest.mark.parametrize(
    "spec",
    ['"file:"+d+"/missing.img,xvda,w"', '"phy:/dev/pvhvm-no-such-device,xvda,w"',
     'd+"/missing.iso,,hdc,cdrom"'],
)
def test_missing_files(images: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        plan_of(f'name="g"; builder="hvm"\ndisk=[{spec}]', images)


def test_script_backed_targets_are_not_files(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\ndisk=["iscsi:iqn.2001-04.com.example:x,xvda,w",'
                   '"drbd:r0,xvdb,w", "/no/file,raw,xvdc,rw,script=block-nbd"]', images)
    assert [x.script for x in plan.disks] == ["block-iscsi", "block-drbd", "block-nbd"]


def test_bad_mode_and_vif_errors(images: Path) -> None:
    with pytest.raises(ConfigError, match="access mode 'rx'"):
        plan_of('name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,xvda,rx"]', images)
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        plan_of('name="g"; builder="hvm"\nvif=["colour=red"]', images)
    with pytest.raises(ConfigError, match="multicast"):
        plan_of('name="g"; builder="hvm"\nvif=["mac=ff:16:3e:00:00:01"]', images)
    with pytest.raises(ConfigError, match="already used"):
        plan_of('name="g"; builder="hvm"\nvif=["mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:01"]', images)
    with pytest.raises(ConfigError, match="is the PV NIC"):
        plan_of('name="g"; builder="hvm"\nvif=["type=ioemu,model=virtio"]', images)
    with pytest.raises(ConfigError, match="not an emulated NIC model QEMU has"):
        plan_of('name="g"; builder="hvm"\nvif=["type=ioemu,model=3c509"]', images)
    with pytest.raises(ConfigError, match="applies only to emulated NICs"):
        plan_of('name="g"; builder="hvm"\nvif=["type=xenbus,model=e1000"]', images)


def test_model_without_type_warns(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\nvif=["model=e1000"]', images, Dialect.XEND_302)
    assert plan.vifs[0].kind is DeviceKind.XENBUS and plan.vifs[0].model is None
    assert any("model=e1000 ignored" in w for w in plan.warnings)


def test_macs_follow_the_uuid_and_xen_oui(images: Path) -> None:
    """Default MACs derive from the domain's uuid: the same uuid (a defined domain's, kept by
    the toolstack) gives the same MACs; with none kept, each plan gets a fresh uuid, as xl
    makes one at every create, so two hosts' domains of one name differ (issue 21 item 6)."""
    text = 'name="g"; builder="hvm"\nvif=["", "", "type=ioemu"]'
    kept = "0b8c2f6e-50c4-4d8e-9a9e-0d6c1b7f2a31"
    first, second = plan_of(text, images, uuid=kept), plan_of(text, images, uuid=kept)
    assert first.uuid == second.uuid == kept
    macs = [v.mac for v in first.vifs]
    assert macs == [v.mac for v in second.vifs]
    assert len(set(macs)) == 3 and all(m.startswith("00:16:3e:") for m in macs)
    assert int(macs[0].split(":")[3], 16) < 0x80
    assert default_mac(first.uuid, 0) == macs[0]
    fresh, again = plan_of(text, images), plan_of(text, images)
    assert len({fresh.uuid, again.uuid, kept}) == 3
    assert fresh.vifs[0].mac != again.vifs[0].mac != macs[0]
    fixed = plan_of('name="g"; builder="hvm"\nuuid="12345678-1234-1234-1234-123456789abc"\nvif=[""]', images)
    assert fixed.uuid == "12345678-1234-1234-1234-123456789abc"
    given = plan_of('name="g"; builder="hvm"\nuuid="12345678-1234-1234-1234-123456789abc"', images,
                    uuid="0b8c2f6e-50c4-4d8e-9a9e-0d6c1b7f2a31")
    assert given.uuid == "12345678-1234-1234-1234-123456789abc"  # the config's uuid= wins


def test_boot_order(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\nboot="dc"\ndisk=["file:"+d+"/a.img,xvda,w", d+"/c.iso,,hdc,cdrom"]'
                   '\nvif=[""]', images)
    assert [x.bootindex for x in plan.disks] == [1, 0]
    kernel = plan_of('name="g"; builder="hvm"\nkernel=d+"/vmlinuz"\nramdisk=d+"/initrd"\nextra="quiet"\n'
                     'root="/dev/vda"\ndisk=["file:"+d+"/a.img,xvda,w"]', images)
    assert kernel.direct_kernel_boot and kernel.disks[0].bootindex is None
    assert kernel.cmdline == "root=/dev/vda quiet"


def test_kernel_checks(images: Path) -> None:
    with pytest.raises(ConfigError, match="kernel '/nonexistent/vmlinuz' does not exist"):
        plan_of('name="g"; builder="hvm"\nkernel="/nonexistent/vmlinuz"', images)
    with pytest.raises(ConfigError, match="ramdisk is set but kernel is not"):
        plan_of('name="g"; builder="hvm"\nramdisk=d+"/initrd"', images)
    plan = plan_of('name="g"; builder="hvm"\nkernel="/usr/lib/xen/boot/hvmloader"', images)
    assert not plan.direct_kernel_boot


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("memory=0", "out of range"),
        ("memory=8", "needs at least 16 MiB"),
        ("memory='lots'", "whole number"),
        ("vcpus=0", "out of range"),
        ("acpi=2", "must be 0 or 1"),
        ("on_crash='explode'", "not one of"),
        ("builder='linux'", "a PV guest needs kernel="),
        ("type='pv'", "a PV guest needs kernel="),
        ("type='pvh'", "PVH guest needs the Xen hypervisor"),
        ("builder='sun'", "is not one of: hvm, generic, linux"),
        ("type='hvm'\nvga='virtio'", "is not one of: stdvga, cirrus, qxl, none"),
        ("soundhw='gus'", "not one of: hda"),
        ("usbdevice='host:1234:5678'", "passthrough"),
        ("maxvcpus=1\nvcpus=2", "below vcpus"),
        ("boot='z'", "boot = 'z'"),
        ("disk='x'", "no virtual device"),
        ("disk=3", "list of strings"),
        ("disk=[3]", "not a string"),
        ("uuid='nope'", "not a UUID"),
        ("extra='a'\ncmdline='b'", "not both"),
        ("serial=['pty','pty','pty','pty','pty']", "a PC has four"),
    ],
)
def test_config_errors(images: Path, text: str, words: str) -> None:
    with pytest.raises(PvhvmError) as info:
        plan_of('name="g"; builder="hvm"\n' + text, images)
    assert words in str(info.value)
    assert "g.cfg" in str(info.value)


def test_missing_name(images: Path) -> None:
    with pytest.raises(ConfigError, match="no name"):
        plan_of("memory=128", images)


def test_unknown_key_warns_with_nearest(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\nmemroy=128\nbase="/x"\npath=base+"/y"', images)
    assert any("unknown key 'memroy'" in w and "'memory'" in w for w in plan.warnings)
    assert not any("'base'" in w for w in plan.warnings)  # used as a variable


def test_registry_extension_keeps_old_meanings(images: Path) -> None:
    registry = default_registry()
    text = 'name="g"; builder="hvm"\ndisk=["file:"+d+"/a.img,hda,w", "file:"+d+"/b.img,xvdb,w"]'
    kept = "0b8c2f6e-50c4-4d8e-9a9e-0d6c1b7f2a31"
    before = plan_of(text, images, registry=registry, uuid=kept)
    registry.register(DeviceType("vhost", DeviceKind.XENBUS, frozenset({DeviceClass.DISK}), "x"))
    after = plan_of(text, images, registry=registry, uuid=kept)
    assert before == after
    assert plan_of('name="g"; builder="hvm"\ndisk=[d+"/a.img,,xvda,rw,type=vhost"]', images,
                   registry=registry).disks[0].kind is DeviceKind.XENBUS
    with pytest.raises(ValueError, match="already registered"):
        registry.register(DeviceType("ioemu", DeviceKind.XENBUS, frozenset(), "x"))


def test_virtio_alias_and_platform(images: Path) -> None:
    plan = plan_of('name="g"; builder="hvm"\ndisk=[d+"/a.img,,xvda,rw,type=virtio"]\nvif=["type=vif"]', images,
                   platform=Platform.XEN)
    assert plan.disks[0].kind is DeviceKind.XENBUS and plan.vifs[0].kind is DeviceKind.XENBUS
    assert plan.to_json()["platform"] == "xen"


def test_serial_unix_path_that_qemu_would_replace(images: Path) -> None:
    """QEMU unlinks whatever is at a listening socket's path: a file there, or a socket that
    something listens on (another guest's console), is refused on the qemu platform and kept;
    a stale socket may be replaced. On the xen platform the path is the Xen host's business."""
    import socket

    victim = images / "notes.txt"
    victim.write_text("keep me")
    with pytest.raises(ConfigError) as info:
        plan_of(f'name = "g"; builder = "hvm"\nserial = "unix:{victim}"\n', images)
    assert str(info.value) == (
        f"g.cfg:2:1: serial = 'unix:{victim}': {victim} exists and is not a socket, and QEMU "
        "would replace it")
    assert victim.read_text() == "keep me"
    assert plan_of(f'name = "g"; builder = "hvm"\nserial = "unix:{victim}"\n', images,
                   platform=Platform.XEN).serial == f"unix:{victim}"

    live = images / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(live))
        server.listen(1)
        with pytest.raises(ConfigError, match="is a socket something is listening on"):
            plan_of(f'name = "g"; builder = "hvm"\nserial = "unix:{live},server"\n', images)
    assert plan_of(f'name = "g"; builder = "hvm"\nserial = "unix:{live}"\n', images).serial == f"unix:{live}"
