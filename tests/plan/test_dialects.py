"""Configs read as Xen reads them: dialect (xm/xl), guest type (HVM/PV), every key.

Fixtures are written here in the shapes real files use (xmexample.hvm, xlexample.hvm,
xlexample.pvlinux, libvirt's xm/xl converter data); none is copied.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvhvm.config.domain import Dialect, GuestType, config_from_text
from pvhvm.errors import ConfigError
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.plan.types import DeviceKind
from pvhvm.qemu.argv import ArgvOptions, RunPaths, qemu_argv
from pvhvm.xen.xlcfg import export_xl
from tests.identity import golden_uuid

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
IO, PV = DeviceKind.IOEMU, DeviceKind.XENBUS
PATHS = RunPaths(
    qmp_socket=Path("/run/g/qmp.sock"), control_socket=Path("/run/g/ctl.sock"),
    console_socket=Path("/run/g/console.sock"), console_log=Path("/log/g.console.log"),
)


def plan_of(text: str, dialect: Dialect | None = None, **kw: object) -> Plan:
    config = config_from_text(text, "g.cfg", None, dialect)
    return make_plan(config, check_files=False, **kw)  # type: ignore[arg-type]


def argv_of(text: str, **kw: object) -> list[str]:
    return qemu_argv(plan_of(text), PATHS, ArgvOptions(now=0.0))


def kinds(plan: Plan) -> list[tuple[str, DeviceKind, tuple[int, int] | None]]:
    return [(d.vdev, d.kind, d.ide_place) for d in plan.disks]


# --- guest type -------------------------------------------------------------------------

PV_LINUX = 'name="pv"\nkernel="/k"\nramdisk="/r"\nextra="root=/dev/xvda1 ro"\n'


@pytest.mark.parametrize(
    ("head", "guest_type", "reason"),
    [
        ('type="hvm"', GuestType.HVM, "type = 'hvm'"),
        ('type="pv"', GuestType.PV, "type = 'pv'"),
        ('builder="hvm"', GuestType.HVM, "builder = 'hvm'"),
        ('builder="generic"', GuestType.PV, "builder = 'generic'"),
        ('builder="linux"', GuestType.PV, "builder = 'linux'"),
        ("", GuestType.PV, "no type= or builder="),
    ],
)
def test_guest_type_as_xl_and_xm_read_it(head: str, guest_type: GuestType, reason: str) -> None:
    plan = plan_of(PV_LINUX + head)
    assert plan.guest_type is guest_type
    assert reason in plan.guest_type_reason
    assert plan.to_json()["guest_type"] == guest_type.value


def test_pv_guest_runs_every_device_pv_with_no_ide() -> None:
    plan = plan_of(PV_LINUX + 'disk=["phy:/dev/vg/root,hda1,w", "file:/s.img,sda2,w"]\n'
                   'vif=["mac=00:16:3e:00:00:01,bridge=xenbr0"]')
    assert [d.kind for d in plan.disks] == [PV, PV]
    assert [v.kind for v in plan.vifs] == [PV]
    assert not plan.ide_controller and plan.direct_kernel_boot
    argv = qemu_argv(plan, PATHS)
    assert argv[argv.index("-machine") + 1].startswith("q35,sata=off")
    assert not any(a.startswith("ide-") for a in argv)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('disk=["file:/a.img,hda,w,type=ioemu"]', "type=ioemu is emulated"),
        ('disk=["file:/a.img,ioemu:hda,w"]', "type=ioemu is emulated"),
        ('disk=["file:/c.iso,hdc:cdrom,r"]', "a cdrom is emulated"),
        ('vif=["type=ioemu"]', "type=ioemu is emulated"),
    ],
)
def test_emulated_device_in_pv_guest_says_add_type_hvm(line: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_of(PV_LINUX + line)
    message = str(info.value)
    assert words in message and 'add type = "hvm"' in message and "g.cfg:5:" in message


def test_pv_guest_needs_a_kernel_and_pygrub_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r'needs kernel=.*add type = "hvm"'):
        plan_of('name="g"\ndisk=["file:/a.img,xvda,w"]')
    with pytest.raises(ConfigError, match=r"bootloader = 'pygrub'.*set kernel=, ramdisk="):
        plan_of('name="g"\nbootloader="pygrub"\ndisk=["file:/a.img,xvda,w"]')
    with pytest.raises(ConfigError, match="PVH guest needs the Xen hypervisor"):
        plan_of('name="g"\ntype="pvh"\nkernel="/k"')


def test_pv_console_on_qemu_is_said() -> None:
    plan = plan_of('name="g"\nkernel="/k"\nextra="console=hvc0 root=/dev/xvda"')
    assert any("hvc0" in w and "ttyS0" in w for w in plan.warnings)


def test_model_on_pv_guest_nic_is_ignored_with_reason() -> None:
    plan = plan_of(PV_LINUX + 'vif=["model=e1000"]')
    assert plan.vifs[0].kind is PV and plan.vifs[0].model is None
    assert any("a PV guest's NICs are PV" in w for w in plan.warnings)


# --- dialects ---------------------------------------------------------------------------

HVM_DISKS = 'disk=["file:/a.img,xvda,w", "file:/b.img,hda,w", "file:/c.img,sdc,w"]\n'


def test_dialect_is_said_and_why() -> None:
    assert plan_of('name="g"\ntype="hvm"').dialect is Dialect.XL
    # builder= alone tells nothing (libvirt's xl writer emits it): xl
    alone = plan_of('name="g"\nbuilder="hvm"')
    assert alone.dialect is Dialect.XL and "nothing in the file" in alone.dialect_reason
    forced = plan_of('name="g"\nbuilder="hvm"', Dialect.XM)
    assert forced.dialect is Dialect.XM and forced.dialect_reason == "--dialect xm"
    document = plan_of('name="g"\ntype="hvm"').to_json()
    assert document["dialect"] == "xl" and "type=" in document["dialect_reason"]
    # xl's grammar has no signed numbers (the real xl refuses the file): only xm read one
    signed = plan_of('name="g"\nbuilder="hvm"\nrtc_timeoffset = -3600')
    assert signed.dialect is Dialect.XM
    assert signed.dialect_reason.endswith(":3:18: rtc_timeoffset = ... uses a signed number, a "
                                          "Python expression only xm evaluated"), signed.dialect_reason


def test_xl_hvm_emulates_first_four_disks_at_their_index() -> None:
    text = ('name="g"\ntype="hvm"\ndisk=["file:/a.img,xvda,w", "file:/b.img,xvdb,w", '
            '"file:/c.iso,xvdc:cdrom,r", "file:/d.img,hdd,w", "file:/e.img,xvde,w", '
            '"file:/f.img,sdf,w"]')
    plan = plan_of(text)
    assert kinds(plan) == [("xvda", IO, (0, 0)), ("xvdb", IO, (0, 1)), ("xvdc", IO, (1, 0)),
                           ("hdd", IO, (1, 1)), ("xvde", PV, None), ("sdf", IO, None)]
    # libxl_dm.c: sd* disks are SCSI, at the unit their index gives, whatever their index
    assert [d.scsi_unit for d in plan.disks] == [None, None, None, None, None, 5]
    assert plan.ide_controller and plan.scsi_controller
    assert any("xvda, xvdb, hdd, sdf" in n and "type=xenbus" in n for n in plan.notes)


def test_xend_3_0_2_keeps_the_rfc_defaults() -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\n' + HVM_DISKS + 'vif=["", "type=ioemu"]',
                   Dialect.XEND_302)
    assert kinds(plan) == [("xvda", PV, None), ("hda", IO, (0, 0)), ("sdc", PV, None)]
    assert [v.kind for v in plan.vifs] == [PV, IO] and not plan.notes
    assert plan.dialect_reason == "--dialect xend-3.0.2"


def test_xm_is_xend_3_0_4_to_4_4() -> None:
    """xend's image.py: an untyped HVM vif is emulated (and PV); qemu-dm's xenstore.c: hd*
    IDE, sd* SCSI, xvd* PV only."""
    plan = plan_of('name="g"\nbuilder="hvm"\ncdrom="/x.iso"\n' + HVM_DISKS
                   + 'vif=["", "model=e1000", "type=netfront"]')
    assert plan.dialect is Dialect.XM and "cdrom= is xm-only" in plan.dialect_reason
    assert plan.dialect_reason.startswith("g.cfg:3:1:")
    assert [(d.vdev, d.kind, d.emulated_as, d.scsi_unit) for d in plan.disks] == [
        ("xvda", PV, None, None), ("hda", IO, "IDE", None), ("sdc", IO, "SCSI", 2),
        ("hdc", IO, "IDE", None)]
    assert [(v.kind, v.model) for v in plan.vifs] == [(IO, "rtl8139"), (IO, "e1000"), (PV, None)]
    assert not any("ignored" in w for w in plan.warnings)
    said = " ".join(plan.notes)
    assert "xend (3.0.4-4.4)" in said and "hda, sdc" in said and "vif(s) 0, 1" in said


def test_xl_two_disks_at_one_ide_place_is_an_error() -> None:
    with pytest.raises(ConfigError, match="IDE place hda is already taken by disk 'xvda'"):
        plan_of('name="g"\ntype="hvm"\n' + HVM_DISKS)


def test_explicit_type_wins_in_both_dialects() -> None:
    text = 'disk=["file:/a.img,xvda,w,type=xenbus", "file:/b.img,hda,w,type=xenbus"]\n'
    for head in ('type="hvm"', 'builder="hvm"'):
        plan = plan_of(f'name="g"\n{head}\n{text}vif=["type=xenbus"]')
        assert [d.kind for d in plan.disks] == [PV, PV] and not plan.ide_controller
        assert plan.vifs[0].kind is PV


def test_xl_untyped_vif_is_emulated_with_its_model() -> None:
    plan = plan_of('name="win"\ntype="hvm"\nvif=["bridge=xenbr0", "model=e1000", '
                   '"type=vif", "model=pcnet,type=ioemu", "type=netfront"]')
    assert [(v.kind, v.model) for v in plan.vifs] == [
        (IO, "rtl8139"), (IO, "e1000"), (PV, None), (IO, "pcnet"), (PV, None)]
    assert any("vif(s) 0, 1 have no type=" in n for n in plan.notes)


def test_cdrom_named_xvd_sits_at_its_index_in_xm_too() -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\ndisk=["file:/c.iso,xvdc:cdrom,r"]')
    assert kinds(plan) == [("xvdc", IO, (1, 0))]


# --- keys -------------------------------------------------------------------------------


def test_xen_only_keys_warn_exactly_and_guest_keys_refuse() -> None:
    plan = plan_of('name="g"\ntype="hvm"\nhap=1\nshadow_memory=8\nviridian=1\ncpus="0-1"')
    said = "\n".join(plan.warnings)
    for key in ("hap", "shadow_memory", "viridian", "cpus"):
        assert f"{key} is a setting of the Xen hypervisor" in said
    assert "unknown key" not in said
    with pytest.raises(ConfigError) as info:
        plan_of('name="g"\ntype="hvm"\npci=["0000:01:00.0"]')
    assert "g.cfg:3:" in str(info.value) and "--skip-unsupported" in str(info.value)
    skipped = plan_of('name="g"\ntype="hvm"\npci=["0000:01:00.0"]', skip_unsupported=True)
    assert any("pci changes what the guest gets" in w for w in skipped.warnings)


def test_unknown_key_still_names_the_nearest() -> None:
    plan = plan_of('name="g"\ntype="hvm"\nvncpaswd="x"')
    assert any("unknown key 'vncpaswd'" in w and "vncpasswd" in w for w in plan.warnings)


def test_honoured_keys_reach_qemu() -> None:
    argv = argv_of(
        'name="g"\ntype="hvm"\nmemory=512\nmaxmem=1024\nvcpus=2\nmaxvcpus=4\nvnc=1\n'
        'vnclisten="0.0.0.0"\nvncdisplay=3\nvncpasswd="s3cret"\nstdvga=1\nusb=1\n'
        'usbdevice=["tablet"]\nsoundhw="hda,ac97"\nhpet=0\nrtc_timeoffset=3600\n'
        'parallel="pty"\nbios="ovmf"\nserial="none"'
    )
    joined = " ".join(argv)
    # booted with maxmem; the balloon holds back all but memory (runtime/resize.py)
    assert argv[argv.index("-m") + 1] == "1024M"
    assert "virtio-balloon-pci,id=balloon0" in argv
    assert argv[argv.index("-smp") + 1] == "2,maxcpus=4"
    assert "-device VGA" in joined and "-vnc 0.0.0.0:3,to=102,password-secret=vncpass0" in joined
    assert "-usb" in argv and "-device usb-tablet" in joined
    assert "-device intel-hda -device hda-duplex,audiodev=audio0" in joined
    assert "-device AC97,audiodev=audio0" in joined
    assert argv[argv.index("-machine") + 1].endswith(",hpet=off")
    assert argv[argv.index("-rtc") + 1] == "base=1970-01-01T01:00:00"
    assert "-parallel chardev:parallel0" in joined and "-bios /usr/share/ovmf/OVMF.fd" in joined
    assert "-serial" not in argv


def test_xm_cdrom_key_is_the_hdc_drive() -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\ncdrom="/iso/install.iso"\nboot="dc"')
    disk = plan.disks[0]
    assert (disk.vdev, disk.cdrom, disk.kind, disk.ide_place) == ("hdc", True, IO, (1, 0))
    assert disk.bootindex == 0 and not disk.access.writable


def test_vfb_vnc_settings_count_as_vnc() -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\nvfb=["type=vnc,vnclisten=0.0.0.0,vncdisplay=2"]')
    assert plan.display is not None and plan.display.vnc
    assert (plan.display.listen, plan.display.display) == ("0.0.0.0", 2)


def test_names_xl_accepts() -> None:
    assert plan_of('name="XenGuest2&test"\nbuilder="hvm"').name == "XenGuest2&test"
    with pytest.raises(ConfigError, match="not a domain name"):
        plan_of('name="a/b"\nbuilder="hvm"')


def test_parallel_and_vga_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"g\.cfg:3:1: parallel = 'lpt9'"):
        argv_of('name="g"\nbuilder="hvm"\nparallel="lpt9"')
    with pytest.raises(ConfigError, match="stdvga and vga disagree"):
        plan_of('name="g"\nbuilder="hvm"\nvga="cirrus"\nstdvga=1')


# --- export-xl ----------------------------------------------------------------------------


def test_export_keeps_xen_keys_and_device_model_version() -> None:
    plan = make_plan(config_from_text(
        'name="g"\ntype="hvm"\nviridian=1\nhap=1\npci=["01:00.0"]\n'
        'device_model_version="qemu-xen-traditional"\nmaxmem=2048\nmemory=1024\nusb=1',
        "g.cfg"), Platform.XEN, check_files=False, skip_unsupported=True)
    text = export_xl(plan).text
    for line in ('viridian = 1', 'hap = 1', 'pci = [ "01:00.0" ]', "maxmem = 2048",
                 'device_model_version = "qemu-xen-traditional"', "usb = 1"):
        assert line in text


def test_export_of_a_pv_guest_is_a_pv_xl_cfg() -> None:
    plan = make_plan(config_from_text(PV_LINUX + 'disk=["file:/a.img,xvda,w"]\nvif=[""]',
                                      "g.cfg"), Platform.XEN, check_files=False)
    exported = export_xl(plan)
    assert 'type = "pv"' in exported.text
    assert "xen_platform_pci" not in exported.text and "device_model" not in exported.text
    assert not exported.notes


def test_export_emulated_disk_with_pv_nic_says_how_to_keep_the_disk() -> None:
    plan = make_plan(config_from_text(
        'name="g"\nbuilder="hvm"\nkernel="/k"\ndisk=["file:/a.img,hda,w"]\nvif=["type=xenbus"]',
        "g.cfg"),
        Platform.XEN, check_files=False)
    exported = export_xl(plan)
    assert "xen_emul_unplug=unnecessary" in exported.text  # blkfront leaves the hda vbd alone
    assert not any("while other disks are PV" in n for n in exported.notes)


# --- golden plans of the examples ------------------------------------------------------


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.cfg")))
def test_golden_dry_run_plan(example: str, request: pytest.FixtureRequest) -> None:
    config = config_from_text((ROOT / "examples" / example).read_text(), f"examples/{example}",
                              {"imagedir": "/images"})
    document = make_plan(config, check_files=False, uuid=golden_uuid(config.name)).to_json()
    golden = GOLDEN / f"{example}.plan.json"
    if request.config.getoption("--regen-golden"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(document, indent=1) + "\n")
    assert document == json.loads(golden.read_text()), f"plan of {example} changed"


def test_xl_serial_list_gives_more_ports() -> None:
    argv = argv_of('name="g"\ntype="hvm"\nserial=["pty", "file:/tmp/s1.log", "none"]')
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == ["chardev:serial0", "chardev:serial1"]
    assert "file,id=serial1,path=/tmp/s1.log,append=on" in argv
    # a network port on any of them, as xl passes it to QEMU (listening, local by default)
    argv = argv_of('name="g"\ntype="hvm"\nserial=["pty", "tcp::4556,server,nowait", '
                   '"telnet:127.0.0.2:4557"]')
    assert "socket,id=serial1,host=127.0.0.1,port=4556,server=on,wait=off" in argv
    assert "socket,id=serial2,host=127.0.0.2,port=4557,server=on,wait=off,telnet=on" in argv


def test_vif_devid_and_mtu_are_planned_and_realised() -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\nvif=["devid=3,mtu=9000,type=vif", '
                   '"gatewaydev=eth1,type=vif"]')
    assert [(v.devid, v.mtu) for v in plan.vifs] == [(3, 9000), (1, None)]
    argv = qemu_argv(plan, PATHS)
    assert any("id=vif-3" in a and "host_mtu=9000" in a for a in argv)
    with pytest.raises(ConfigError, match="devid 1 is already used"):
        plan_of('name="g"\nbuilder="hvm"\nvif=["devid=1", ""]')


@pytest.mark.parametrize(
    ("line", "key"),
    [('kernel="/boot/vm\\x00linuz"', "kernel"), ('serial="unix:/tmp/a\\x00b"', "serial"),
     ('disk=["/a\\x01b.img,raw,xvda,w"]', "target"), ('ramdisk="/x\\ny"', "ramdisk")],
)
def test_impossible_path_characters_are_refused_naming_the_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_of('name="g"\nbuilder="hvm"\n' + line)
    assert f"{key}: a path cannot contain" in str(info.value) and "g.cfg:3:" in str(info.value)
