"""A libvirt domain XML read back (pvhvm.libvirt.read): round trips, each mapping, bad XML.

The round trips: ``export-libvirt`` of every example and every golden file, read back with
``pvhvm create DOMAIN.xml --dry-run --json``, gives the plan (and on the qemu platform the
QEMU argv) of the original config. What may differ is how the input was read: the dialect
and the reasons (an XML has no untyped device, so no dialect note), and the guest type of a
PV guest, which export-libvirt writes as ``<type>hvm</type>`` (the qemu platform realises
both alike).
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvhvm.cli.main import main
from pvhvm.config.domain import Dialect, GuestType, config_from_text, load_config
from pvhvm.config.lang import MAX_DEPTH, MAX_FILE_BYTES, MAX_TOKENS
from pvhvm.errors import ConfigError, PvhvmError
from pvhvm.libvirt.read import config_from_xml, is_domain_xml
from pvhvm.libvirt.xml import domain_xml
from pvhvm.plan.plan import Plan, make_plan
from pvhvm.platforms import PLATFORM_NAMES
from tests import jsonout
from tests.identity import golden_uuid

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.cfg"))
GOLDEN = Path(__file__).parent / "golden"
#: how the input was read, not what the plan realises
READ_FIELDS = ("dialect", "dialect_reason", "guest_type", "guest_type_reason", "notes",
               "warnings")


@pytest.fixture
def imagedir(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img",
                 "disk.img"):
        (images / name).write_bytes(b"\0" * 1024)
    return images


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def realised(document: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key not in READ_FIELDS}


def boot_letters(plan: Plan) -> str:
    """The boot= letters that choose a device: a letter with no device of its kind (boot
    "cd" without a cdrom) boots nothing, and no XML can say it."""
    kinds = {"c": any(not d.cdrom for d in plan.disks),
             "d": any(d.cdrom and not d.is_empty for d in plan.disks), "n": bool(plan.vifs)}
    return "".join(letter for letter in plan.boot if kinds.get(letter))


def same_plan(original: Plan, read: Plan) -> None:
    a, b = realised(original.to_json()), realised(read.to_json())
    if not original.direct_kernel_boot:
        assert boot_letters(original) == boot_letters(read)
        a.pop("boot"), b.pop("boot")
    assert a == b
    assert read.guest_type is (GuestType.HVM if original.guest_type is GuestType.PV
                               else original.guest_type)
    not_realised = [w for w in read.warnings if "not realised" in w]
    assert not_realised == []


@pytest.mark.parametrize("platform", PLATFORM_NAMES)
@pytest.mark.parametrize("example", EXAMPLES)
def test_cli_round_trip_of_every_example(
    example: str, platform: str, imagedir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """export-libvirt → create --dry-run --json of the XML: the original config's plan, and
    (qemu) the same QEMU argv, on every platform."""
    config = str(ROOT / "examples" / example)
    xml = tmp_path / f"{example}.xml"
    # one uuid for both: without uuid= each plan gets a fresh one (and MACs from it), as xl
    uuid = "uuid=4f0b6f33-8a7d-4c4e-9b55-31c1d9a1e7a2"
    code, _, err = run(["export-libvirt", config, f"imagedir={imagedir}", uuid, "-o", str(xml)],
                       capsys)
    assert code == 0, err
    code, out, err = run(["create", config, f"imagedir={imagedir}", uuid, "-n", "--json",
                          "--platform", platform], capsys)
    assert code == 0, err
    original = jsonout.result(out)
    code, out, err = run(["create", str(xml), "-n", "--json", "--platform", platform], capsys)
    assert code == 0, err
    read = jsonout.result(out)
    expected = realised(original)
    if original["guest_type"] == "pv" and "xenstore" in expected:
        # the XML makes a PV guest HVM, and a vbd's ring protocol is written for PV guests only
        expected["xenstore"] = {path: value for path, value in expected["xenstore"].items()
                                if not path.endswith("/protocol")}
    assert realised(read) == expected
    assert read["dialect"] == "xl" and read["notes"] == []
    assert read["guest_type"] == "hvm"
    # the XML adds no warning of its own: each is one the config's plan has too
    assert [w for w in read["warnings"] if w not in original["warnings"]] == []


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_golden_reads_back_as_its_config(example: str) -> None:
    config = load_config(ROOT / "examples" / example, {"imagedir": "/images"})
    original = make_plan(config, check_files=False, uuid=golden_uuid(config.name))
    golden = GOLDEN / f"{example}.xml"
    read = make_plan(config_from_xml(golden.read_text(), str(golden)), check_files=False)
    same_plan(original, read)


def rfc_dialect(text: str) -> Dialect | None:
    """These configs are written with the RFC's defaults (untyped vifs and xvd disks PV):
    read as xend 3.0.2 unless they name xl's guest type (issue 20: xl and xm emulate them)."""
    return None if 'type="hvm"' in text else Dialect.XEND_302


def plan_of(text: str) -> Plan:
    return make_plan(config_from_text('name="g"\nbuilder="hvm"\n' + text, "g.cfg", None,
                                      rfc_dialect(text)), check_files=False)


def read_back(plan: Plan) -> Plan:
    return make_plan(config_from_xml(domain_xml(plan).xml, "g.xml"), check_files=False)


#: configs over the mapping: each goes config → Plan → export-libvirt → read → Plan
ROUND_TRIPS = {
    "ide places, cdroms, formats, access": (
        'disk=["/a,raw,hdb,rw", ",hdc:cdrom,r", "/iso,,hdd,cdrom", "/v,qcow2,xvda,ro",'
        ' "/dev/sdz,raw,xvdb,w!", "/w,vhd,xvdc,w!"]\nboot="dc"'),
    "xl places by index": 'type="hvm"\ndisk=["/a,raw,xvda,rw", "/b,raw,xvdb,rw", "/c,raw,xvde,rw"]',
    "nics": ('vif=["type=ioemu,model=ne2k_pci,bridge=br9", "type=ioemu", '
             '"mac=00:16:3e:01:02:03,mtu=9000", "type=ioemu,model=e1000"]\nboot="n"'),
    "nic devid": 'vif=["devid=3", "devid=1,type=ioemu"]',
    "direct boot and actions": (
        'memory=256\nvcpus=3\nmaxvcpus=5\nuuid="12345678-1234-5678-1234-567812345678"\n'
        'kernel="/k"\nramdisk="/r"\nextra="console=ttyS0"\nroot="/dev/vda"\nacpi=0\n'
        'on_poweroff="preserve"\non_reboot="destroy"\non_crash="coredump-destroy"\n'
        'disk=["/a,raw,xvda,rw"]'),
    "clock": 'localtime=1\nrtc_timeoffset=-3600\nhpet=0\ndisk=["/a,raw,hda,rw"]',
    "utc offset": 'rtc_timeoffset=120',
    "serial ports and parallel": (
        'serial=["file:/tmp/s0", "pty", "unix:/tmp/s2"]\nparallel="file:/tmp/p"'),
    "tcp serial": 'serial="tcp:127.0.0.1:4555"',
    "no serial": 'serial="none"',
    "vnc": 'vnc=1\nvnclisten="0.0.0.0"\nvncunused=0\nvncdisplay=3\nvncpasswd="pw"\nkeymap="de"\n'
           'vga="stdvga"',
    "vnc autoport": 'vnc=1',
    # (sdl=1 alone: export-libvirt adds the VGA card libvirt's SDL needs, and reading that
    # XML gives the guest that card, which pvhvm's own QEMU, ignoring sdl, does not add)
    "sdl": 'sdl=1\nvga="stdvga"',
    "usb, sound": 'usb=1\nusbdevice=["tablet", "keyboard"]\nsoundhw="hda,ac97"',
    "ovmf": 'bios="ovmf"\ndisk=["/a,raw,xvda,rw"]\nboot="c"',
    "cdrom first": 'disk=["/a,raw,hda,rw", "/iso,raw,hdc:cdrom,r"]\nboot="d"',
    "pv guest": 'kernel="/k"\ndisk=["/a,raw,xvda,rw"]\nvif=[""]',
    # the export boots with maxmem and reserves hotplug_slots empty pcie-root-ports (q35)
    "maxmem and hotplug slots": (
        'memory=256\nmaxmem=768\nhotplug_slots=5\ndisk=["/a,raw,xvda,rw", "/b,raw,xvdb,rw"]'
        '\nvif=["", "type=ioemu,model=e1000"]\nusb=1\nsoundhw="hda,sb16,ac97"'),
    "no hotplug slots": 'hotplug_slots=0\ndisk=["/a,raw,xvda,rw"]',
    # emulated sd* disks: SCSI on one lsilogic controller (q35 when no disk is IDE)
    "scsi disks": 'type="hvm"\ndisk=["/a,raw,sda,rw", "/b,raw,sdc,rw", "/c,raw,xvdb,rw"]',
    "scsi and ide": 'type="hvm"\ndisk=["/a,raw,sdb,rw", "/b,raw,hda,rw", ",,hdc,cdrom"]',
    "most hotplug slots": 'hotplug_slots=16\nvif=[""]',
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_of_each_mapping(name: str) -> None:
    text = ROUND_TRIPS[name]
    if name == "pv guest":
        original = make_plan(config_from_text('name="g"\n' + text, "g.cfg", None,
                                              rfc_dialect(text)), check_files=False)
    else:
        original = plan_of(text)
    same_plan(original, read_back(original))


def domain(devices: str = "", extra: str = "", os_: str = "") -> str:
    return (f"<domain type='kvm'><name>g</name><memory unit='MiB'>512</memory>"
            f"<os><type arch='x86_64'>hvm</type>{os_}</os>{extra}"
            f"<devices>{devices}</devices></domain>")


def plan_xml(text: str, skip: bool = False) -> Plan:
    return make_plan(config_from_xml(text, "d.xml"), check_files=False, skip_unsupported=skip)


def test_memory_units_and_current_memory() -> None:
    plan = plan_xml("<domain type='kvm'><name>g</name><memory>2097152</memory>"
                    "<currentMemory unit='G'>1</currentMemory><vcpu current='2'>4</vcpu>"
                    "<os><type>hvm</type></os></domain>")
    assert (plan.memory_mib, plan.maxmem_mib, plan.vcpus, plan.maxvcpus) == (1024, 2048, 2, 4)
    plan = plan_xml(domain().replace("unit='MiB'>512", "unit='bytes'>536870913"))
    assert plan.memory_mib == 513 and "rounded up to 513 MiB" in plan.warnings[0]
    assert plan_xml(domain().replace("'MiB'>512", "'GB'>1")).memory_mib == 954
    with pytest.raises(ConfigError, match=r"d.xml:1:\d+: <currentMemory> \(1024 MiB\) is above"):
        plan_xml(domain(extra="<currentMemory unit='GiB'>1</currentMemory>"))
    with pytest.raises(ConfigError, match="unit is not one of"):
        plan_xml(domain().replace("MiB", "parsecs"))
    with pytest.raises(ConfigError, match=r"<memory> = 1 MiB is out of range"):
        plan_xml(domain().replace("'MiB'>512", "'MiB'>1"))


def test_disk_buses_names_and_flags() -> None:
    plan = plan_xml(domain(
        "<disk type='file' device='disk'><source file='/a'/><target dev='hdb' bus='ide'/></disk>"
        "<disk type='file'><source file='/b'/><target dev='vdc'/><shareable/></disk>"
        "<disk type='block'><source dev='/dev/x'/><target dev='xvdd' bus='xen'/><readonly/>"
        "</disk>"
        "<disk type='file' device='cdrom'><target dev='sdc' bus='sata'/></disk>"))
    assert [(d.vdev, d.kind.value, d.ide_place, d.access.value, d.cdrom, d.target)
            for d in plan.disks] == [
        ("hdb", "ioemu", (0, 1), "w", False, "/a"), ("xvdc", "xenbus", None, "w!", False, "/b"),
        ("xvdd", "xenbus", None, "r", False, "/dev/x"), ("sdc", "ioemu", (1, 0), "r", True, "")]
    assert plan.disks[3].format == "empty"
    assert any("bus='sata': pvhvm emulates its disks as IDE" in w for w in plan.warnings)
    # sdb sits at hdb's place (its index), so two disks there are one place taken twice
    with pytest.raises(ConfigError, match="IDE place hdb is already taken"):
        plan_xml(domain(
            "<disk><source file='/a'/><target dev='hdb' bus='ide'/></disk>"
            "<disk device='cdrom'><target dev='sdb' bus='sata'/></disk>"))


def test_a_sata_hard_disk_named_sda_stays_ide() -> None:
    """libvirt names q35's SATA disks sdX; pvhvm's own sdX is emulated SCSI (issue 20), so a
    SATA or IDE hard disk named sdX is read as the IDE disk at its place."""
    plan = plan_xml(domain("<disk type='file' device='disk'><source file='/a'/>"
                           "<target dev='sda' bus='sata'/></disk>"))
    assert [(d.vdev, d.emulated_as, d.ide_place) for d in plan.disks] == [("hda", "IDE", (0, 0))]
    assert not plan.scsi_controller


def test_scsi_disks_on_the_lsilogic_controller() -> None:
    """bus='scsi' (or an sdX target with no bus) is pvhvm's emulated SCSI disk, on libvirt's
    default lsilogic controller; units are the disks' SCSI ids; q35 when no disk is IDE."""
    plan = plan_xml(domain("<controller type='scsi' index='0' model='lsilogic'/>"
                           "<disk><source file='/a'/><target dev='sdb' bus='scsi'/>"
                           "<address type='drive' controller='0' bus='0' target='0' unit='1'/>"
                           "</disk><disk><source file='/b'/><target dev='sdc'/></disk>"))
    assert [(d.vdev, d.emulated_as, d.scsi_unit) for d in plan.disks] == [
        ("sdb", "SCSI", 1), ("sdc", "SCSI", 2)]
    assert plan.scsi_controller and not plan.ide_controller
    assert not any("machine" in w for w in plan.warnings)
    assert not any("address" in w and "sdb" in w for w in plan.warnings)
    with pytest.raises(ConfigError, match="CD drives are emulated IDE"):
        plan_xml(domain("<disk device='cdrom'><target dev='sda' bus='scsi'/></disk>"))
    with pytest.raises(ConfigError, match=r"are sda\.\.sdg \(the lsilogic controller's ids"):
        plan_xml(domain("<disk><source file='/a'/><target dev='sdh' bus='scsi'/></disk>"))
    with pytest.raises(ConfigError, match=r"are sda\.\.sdg"):
        plan_xml(domain("<disk><source file='/a'/><target dev='hdb' bus='scsi'/></disk>"))


def test_alias_gives_the_vdev_back_only_where_it_fits() -> None:
    disk = ("<disk><source file='/a'/><target dev='{dev}' bus='{bus}'/>"
            "<alias name='ua-disk-{alias}'/></disk>")
    assert plan_xml(domain(disk.format(dev="vda", bus="virtio", alias="hda"))).disks[0].vdev == "hda"
    assert plan_xml(domain(disk.format(dev="hda", bus="ide", alias="xvda"))).disks[0].vdev == "xvda"
    # xvdc would be emulated at hdc, not at hda where the XML puts the disk
    assert plan_xml(domain(disk.format(dev="hda", bus="ide", alias="xvdc"))).disks[0].vdev == "hda"
    assert plan_xml(domain(disk.format(dev="vdb", bus="virtio", alias="zz"))).disks[0].vdev == "xvdb"


@pytest.mark.parametrize(("disk", "what"), [
    ("<controller type='scsi' model='virtio-scsi'/>", "<controller type='scsi' model="
                                                       "'virtio-scsi' index='0'>"),
    ("<disk><source file='/a'/><target dev='sda' bus='usb'/></disk>", "on bus='usb'"),
    ("<disk type='network'><source protocol='nbd'/><target dev='vda'/></disk>",
     "<disk type='network'>"),
    ("<disk device='floppy'><source file='/a'/><target dev='fda'/></disk>",
     "<disk device='floppy'>"),
    ("<hostdev mode='subsystem' type='pci'/>", "<hostdev>"),
    ("<interface type='direct'><source dev='eth0'/></interface>", "<interface type='direct'>"),
    ("<serial type='dev'><source path='/dev/ttyS0'/></serial>", "<serial type='dev'>"),
    ("<tpm model='tpm-tis'/>", "<tpm>"),
])
def test_what_changes_the_guest_is_refused_unless_skipped(disk: str, what: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_xml(domain(disk))
    message = str(info.value)
    assert message.startswith("d.xml:1:") and what in message
    assert "give --skip-unsupported" in message
    plan = plan_xml(domain(disk), skip=True)
    assert not plan.disks and not plan.vifs
    assert any("created without it (--skip-unsupported)" in w for w in plan.warnings)


def test_qemu_commandline_is_refused() -> None:
    text = domain().replace(
        "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        "<qemu:arg value='-machine'/></qemu:commandline></domain>")
    with pytest.raises(ConfigError, match="<qemu:commandline> changes what the guest gets"):
        plan_xml(text)


def test_interfaces() -> None:
    plan = plan_xml(domain(
        "<interface type='bridge'><source bridge='br0'/><mac address='52:54:00:AA:BB:CC'/>"
        "<model type='virtio'/><target dev='web-nic'/></interface>"
        "<interface type='network'><source network='default'/><model type='e1000'/>"
        "<target dev='vnet7'/></interface>"
        "<interface type='network'><source network='lan'/></interface>"
        "<interface type='user'/>"))
    assert [(v.kind.value, v.model, v.bridge, v.vifname) for v in plan.vifs] == [
        ("xenbus", None, "br0", "web-nic"), ("ioemu", "e1000", "virbr0", None),
        ("ioemu", "rtl8139", "xenbr0", None), ("ioemu", "rtl8139", "xenbr0", None)]
    assert plan.vifs[0].mac == "52:54:00:aa:bb:cc"
    assert any("<source network='lan'> not realised" in w for w in plan.warnings)
    with pytest.raises(ConfigError, match=r"d.xml:1:\d+: .*MAC address '01:00:00:00:00:01' is "
                                          "a multicast"):
        plan_xml(domain("<interface type='user'><mac address='01:00:00:00:00:01'/></interface>"))
    with pytest.raises(ConfigError, match="model='pcnet2' is not an emulated NIC model"):
        plan_xml(domain("<interface type='user'><model type='pcnet2'/></interface>"))


def test_os_boot_and_firmware() -> None:
    disks = ("<disk><source file='/a'/><target dev='hda' bus='ide'/>{0}</disk>"
             "<disk><source file='/b'/><target dev='hdb' bus='ide'/>{1}</disk>"
             "<disk device='cdrom'><source file='/iso'/><target dev='hdc'/>{2}</disk>")
    plan = plan_xml(domain(disks.format("", "", ""),
                           os_="<boot dev='cdrom'/><boot dev='hd'/><boot dev='network'/>"))
    assert plan.boot == "dcn"
    plan = plan_xml(domain(disks.format("<boot order='2'/>", "", "<boot order='1'/>")))
    assert plan.boot == "dc" and [d.bootindex for d in plan.disks] == [1, None, 0]
    with pytest.raises(ConfigError, match="pvhvm's firmware boot order boots the first hard disk"):
        plan_xml(domain(disks.format("", "<boot order='1'/>", "")))
    with pytest.raises(ConfigError, match="exclude each other"):
        plan_xml(domain(disks.format("<boot order='1'/>", "", ""), os_="<boot dev='hd'/>"))
    with pytest.raises(ConfigError, match=r"is also on the device at d\.xml:1:"):
        plan_xml(domain(disks.format("<boot order='1'/>", "", "<boot order='1'/>")))
    assert plan_xml(domain().replace("<os>", "<os firmware='efi'>")).bios == "ovmf"
    loader = plan_xml(domain(os_="<loader readonly='yes' type='pflash'>/x/OVMF_CODE.fd</loader>"))
    assert loader.bios == "ovmf" and "pvhvm boots OVMF from" in loader.warnings[0]
    pv = make_plan(config_from_xml(domain().replace(">hvm<", ">linux<").replace(
        "</os>", "<kernel>/k</kernel><cmdline>console=ttyS0</cmdline></os>"), "d.xml"),
        check_files=False)
    assert pv.guest_type is GuestType.PV and pv.kernel == "/k" and pv.cmdline == "console=ttyS0"
    with pytest.raises(ConfigError, match="pvhvm runs x86 guests"):
        plan_xml(domain().replace("x86_64", "aarch64"))


def test_machine_is_pvhvm_s_choice_and_says_so() -> None:
    pv = "<disk><source file='/a'/><target dev='vda' bus='virtio'/></disk>"
    assert not [w for w in plan_xml(domain(pv).replace("arch=", "machine='q35' arch="))
                .warnings if "machine=" in w]
    warned = plan_xml(domain(pv).replace("arch=", "machine='pc-i440fx-7.2' arch=")).warnings
    assert any("machine='pc-i440fx-7.2' not realised" in w and "gets q35" in w for w in warned)


def test_features_clock_and_consoles() -> None:
    plan = plan_xml(domain())
    assert (plan.acpi, plan.apic, plan.pae) == (False, True, True)  # libvirt's QEMU driver
    xen = plan_xml(domain().replace("type='kvm'", "type='xen'").replace(
        "<devices>", "<features><acpi/><pae/></features><devices>"))
    assert (xen.acpi, xen.apic, xen.pae) == (True, False, True)
    clock = plan_xml(domain(extra="<clock offset='variable' adjustment='30' basis='localtime'>"
                                  "<timer name='hpet' present='no'/></clock>"))
    assert (clock.localtime, clock.rtc_timeoffset, clock.hpet) == (True, 30, False)
    assert plan_xml(domain()).serial == "none"  # no <serial>: no port, as libvirt
    console = plan_xml(domain("<console type='pty'><target type='serial'/></console>"))
    assert console.serial is None  # pvhvm's console socket, which pvhvm console attaches to
    assert plan_xml(domain("<serial type='file'><source path='/tmp/log'/></serial>"
                           "<console type='file'><source path='/tmp/log'/>"
                           "<target type='serial' port='0'/></console>")).serial == "file:/tmp/log"
    with pytest.raises(ConfigError, match="serial port 4: a PC has four"):
        plan_xml(domain("<serial type='pty'><target port='4'/></serial>"))


def test_what_is_not_read_is_one_warning_per_element() -> None:
    plan = plan_xml(domain(
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<controller type='pci' model='pci-bridge'/><controller type='pci'/>"
        "<disk><driver name='qemu' type='raw' cache='none' io='native'/><source file='/a'/>"
        "<target dev='vda' bus='virtio'/><address type='pci' slot='0x04'/></disk>"
        "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
        "<channel type='unix'/><alias name='ua-x'/>",
        extra="<description>web</description>"))
    warned = [w.split(": ", 1)[1] for w in plan.warnings]
    assert warned == [
        "<description> not realised",
        "<devices>/<emulator> not realised (pvhvm runs qemu-system-x86_64 itself)",
        "<devices>/<controller type='pci'> not realised (pvhvm adds the controllers its "
        "devices need) (2 of them)",
        "<disk>/<driver> attributes cache='none', io='native' not realised",
        "<disk>/<address type='pci'> not realised (pvhvm places the devices itself)",
        "<devices>/<rng model='virtio'> not realised",
        "<devices>/<channel type='unix'> not realised",
    ]
    assert all(w.startswith("d.xml:1:") for w in plan.warnings)


def test_pci_addresses_are_silent_only_where_pvhvm_puts_the_device() -> None:
    """q35: an address equal to the slot export-libvirt gives (PV disks, USB, NICs, PCI
    sound, balloon from slot 2) is realised; any other is one warning, as on pc."""
    def address(slot: str, **more: str) -> str:
        extra = "".join(f" {k}='{v}'" for k, v in more.items())
        return f"<address type='pci' domain='0x0000' bus='0x00' slot='{slot}'{extra}/>"

    def devices(disk_slot: str, nic: str = address("0x03"), **more: str) -> str:
        return (f"<disk><source file='/a'/><target dev='vda' bus='virtio'/>"
                f"{address(disk_slot, **more)}</disk>"
                "<controller type='usb' model='none'/>"
                f"<interface type='bridge'><source bridge='br0'/><model type='virtio'/>{nic}"
                f"</interface><memballoon model='virtio'>{address('0x04')}</memballoon>")

    def warned(text: str) -> list[str]:
        return [w.split(": ", 1)[1] for w in plan_xml(text).warnings]

    assert warned(domain(devices("0x02"))) == []
    assert warned(domain(devices("2", function="0"))) == []  # decimal, libvirt's defaults
    moved = "<disk>/<address type='pci'> not realised (pvhvm places the devices itself)"
    assert warned(domain(devices("0x05"))) == [moved]
    assert warned(domain(devices("0x02", bus="0x01").replace("bus='0x00' ", "", 1))) == [moved]
    assert warned(domain(devices("0x02", multifunction="on"))) == [moved]
    # the NIC's slot depends on the disks before it: a NIC in the disk's slot is moved
    assert warned(domain(devices("0x02", nic=address("0x02")))) == [
        "<interface>/<address type='pci'> not realised (pvhvm places the devices itself)"]
    # no USB controller given: libvirt adds one, and so does the export, in slot 3
    assert warned(domain(devices("0x02").replace("<controller type='usb' model='none'/>", "")
                         .replace("'0x04'", "'0x05'").replace("'0x03'", "'0x04'"))) == []
    # machine pc (an emulated disk): the export writes no PCI address, so each is moved
    pc = domain(devices("0x02").replace("dev='vda' bus='virtio'", "dev='hda' bus='ide'"))
    assert warned(pc) == [moved, moved.replace("<disk>", "<interface>"),
                          moved.replace("<disk>", "<memballoon>")]


def test_hotplug_slots_are_the_empty_pcie_root_ports() -> None:
    def ports(*indexes: int) -> str:
        return "<controller type='pci' index='0' model='pcie-root'/>" + "".join(
            f"<controller type='pci' index='{n}' model='pcie-root-port'/>" for n in indexes)

    behind = ("<disk><source file='/a'/><target dev='vda' bus='virtio'/><address type='pci' "
              "domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></disk>")
    assert plan_xml(domain()).hotplug_slots == 2  # no PCI controller given: pvhvm's default
    assert plan_xml(domain(ports())).hotplug_slots == 0  # as libvirt: no port, no hotplug
    plan = plan_xml(domain(ports(1, 2, 3) + behind))
    assert plan.hotplug_slots == 2 and plan.disks[0].vdev == "xvda"
    assert [w.split(": ", 1)[1] for w in plan.warnings] == [
        "<devices>/<controller type='pci'> not realised (pvhvm adds the controllers its "
        "devices need)",
        "<disk>/<address type='pci'> not realised (pvhvm places the devices itself)"]
    # export-libvirt's own port keeps counting when a device was hot-plugged behind it
    hotplugged = domain(ports(1, 2).replace("index='2' model='pcie-root-port'/>",
                                            "index='2' model='pcie-root-port'>"
                                            "<alias name='ua-hotplug2'/></controller>") + behind)
    assert plan_xml(hotplugged).hotplug_slots == 2
    many = plan_xml(domain(ports(*range(1, 21))))
    assert many.hotplug_slots == 16
    assert [w.split(": ", 1)[1] for w in many.warnings] == [
        "20 empty pcie-root-ports: pvhvm reserves at most 16 hotplug slots (hotplug_slots); "
        "this domain gets 16"]
    # machine pc hot-plugs on its root bus: pci-root is its own, a pcie-root-port is not
    ide = "<disk><source file='/a'/><target dev='hda' bus='ide'/></disk>"
    pc = plan_xml(domain(ide + "<controller type='pci' index='0' model='pci-root'/>"
                         "<controller type='pci' index='1' model='pcie-root-port'/>"))
    assert pc.hotplug_slots == 2 and [w.split(": ", 1)[1] for w in pc.warnings] == [
        "<devices>/<controller type='pci'> not realised (pvhvm adds the controllers its "
        "devices need)"]


def test_detection_by_suffix_or_content(tmp_path: Path) -> None:
    assert is_domain_xml("x.XML", "name = 'g'")
    assert is_domain_xml("x", "\ufeff\n  <domain/>")
    assert not is_domain_xml("x.cfg", "# <domain>\nname = 'g'")


BAD = {
    "not well-formed": ("<domain type='kvm'>\n  <name>g</name>\n  <os>\n</domain>\n",
                        r"4:3: not well-formed XML: mismatched tag"),
    "doctype": ("<?xml version='1.0'?>\n<!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;'>]>"
                "\n<domain/>", r"2:\d+: a DOCTYPE is not allowed"),
    "external entity": ("<!DOCTYPE d SYSTEM 'file:///etc/passwd'><domain/>",
                        r"1:\d+: a DOCTYPE is not allowed"),
    "undefined entity": ("<domain type='kvm'><name>&x;</name></domain>",
                         r"1:26: not well-formed XML: undefined entity"),
    "root": ("<network><name>n</name></network>",
             r"1:1: the root element is <network>, not <domain>"),
    "no name": ("<domain type='kvm'><os><type>hvm</type></os></domain>",
                r"1:1: the domain has no <name>"),
    "bad name": ("<domain type='kvm'>\n<name>a/b</name></domain>",
                 r"2:1: 'a/b' is not a domain name"),
    "domain type": ("<domain type='lxc'><name>g</name></domain>",
                    r"1:1: <domain type='lxc'>: pvhvm runs kvm, qemu and xen"),
    "memory": ("<domain type='kvm'><name>g</name><memory>lots</memory></domain>",
               r"1:34: <memory> must be a whole number, not 'lots'"),
    "uuid": ("<domain type='kvm'><name>g</name><uuid>nope</uuid></domain>",
             r"1:34: <uuid> 'nope' is not a UUID"),
    "action": (domain(extra="<on_crash>explode</on_crash>"),
               r"1:\d+: <on_crash> 'explode' is not one of"),
    "disk target": (domain("<disk><source file='/a'/></disk>"),
                    r"1:\d+: <disk> has no <target dev=...>"),
    "disk source": (domain("<disk><target dev='vda'/></disk>"),
                    r"1:\d+: <disk> 'vda' has no <source file=...>"),
    "disk format": (domain("<disk><driver type='vmdk'/><source file='/a'/>"
                           "<target dev='vda'/></disk>"),
                    r"1:\d+: <driver type='vmdk'> is not a format"),
    "control character": (domain("<disk><source file='/a&#10;b'/><target dev='vda'/></disk>"),
                          r"1:\d+: <source>: a path cannot contain the control character"),
    "depth": ("<domain>" + "<x>" * MAX_DEPTH + "</x>" * MAX_DEPTH + "</domain>",
              r"1:\d+: elements are nested too deeply"),
    "tokens": ("<domain>" + "<x/>" * MAX_TOKENS + "</domain>",
               r"1:\d+: the document has too many elements and attributes"),
    "empty": ("", r"1:1: not well-formed XML: no element found"),
    "nul": ("<domain>\0</domain>", r"1:9: not well-formed XML"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_xml_is_one_line_through_the_cli(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.xml"
    path.write_text(text)
    code, out, err = run(["create", str(path), "--dry-run"], capsys)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"pvhvm: error: {path}:"), err
    assert re.match(expected, err[len(f"pvhvm: error: {path}:"):]), err


def test_budgets_files_and_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.xml"
    big.write_text("<domain>" + " " * MAX_FILE_BYTES + "</domain>")
    latin = tmp_path / "latin.xml"
    latin.write_bytes(b"<?xml version='1.0' encoding='ISO-8859-1'?><domain><name>\xe9</name>"
                      b"</domain>")
    good = tmp_path / "g.xml"
    good.write_text(domain())
    for argv, message in [
        ([str(big)], "file is too large"),
        ([str(latin)], "the file is not UTF-8 text"),
        ([str(tmp_path / "missing.xml")], "config file not found"),
        ([str(good), "memory=1024"], "VAR=VALUE arguments are for xm/xl config files"),
        ([str(good), "--dialect", "xl"], "--dialect is for xm/xl config files"),
    ]:
        code, out, err = run(["create", *argv, "--dry-run"], capsys)
        assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    code, out, err = run(["create", str(good), "--dry-run", "--json"], capsys)
    assert code == 0 and jsonout.result(out)["name"] == "g"


@given(st.text(max_size=400))
def test_arbitrary_text_raises_only_config_errors(text: str) -> None:
    try:
        config_from_xml(text, "f.xml")
    except ConfigError as err:
        assert "\n" not in str(err)


_TAGS = ("domain", "name", "memory", "currentMemory", "vcpu", "os", "type", "boot", "loader",
         "kernel", "devices", "disk", "source", "target", "driver", "readonly", "interface",
         "mac", "model", "serial", "console", "graphics", "video", "input", "controller",
         "clock", "timer", "features", "acpi", "alias", "address", "on_crash", "hostdev")
_ATTRS = ("type", "dev", "bus", "file", "device", "order", "unit", "current", "port",
          "address", "model", "name", "bridge", "network", "path", "mode", "service",
          "present", "offset", "adjustment", "autoport", "listen", "machine", "arch")
_VALUES = st.sampled_from(["kvm", "hvm", "file", "block", "cdrom", "disk", "ide", "sata",
                           "virtio", "hda", "vda", "xvdb", "sdc", "1", "0", "-1", "5901", "pty",
                           "unix", "tcp", "vnc", "none", "usb", "ua-disk-hdc", "ua-vif-2",
                           "52:54:00:12:34:56", "/tmp/x", "", "utc", "variable", "q35"]) | \
    st.text(string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=8)


def _device(kind: str, *inner: str) -> st.SearchStrategy[str]:
    """A device shaped as libvirt writes it, with values drawn from the vocabulary."""
    return st.builds(
        lambda attrs, values: f"<{kind} {attrs}>" + "".join(
            part.format(_quote(value)) for part, value in zip(inner, values, strict=True)) + f"</{kind}>",
        st.sampled_from(["type='file'", "type='block' device='cdrom'", "type='bridge'",
                         "type='network'", "type='user'", "type='pty'", "type='unix'"]),
        st.lists(_VALUES, min_size=len(inner), max_size=len(inner)))


_DEVICES = st.one_of(
    _device("disk", "<source file={0}/>", "<target dev={0}", " bus={0}/>", "<boot order={0}/>",
            "<alias name={0}/>", "<driver type={0}/>"),
    _device("interface", "<source bridge={0}/>", "<model type={0}/>", "<mac address={0}/>",
            "<boot order={0}/>", "<alias name={0}/>"),
    _device("serial", "<source path={0}", " mode={0}/>", "<target port={0}/>"),
)


def _element(depth: int) -> st.SearchStrategy[str]:
    attrs = st.dictionaries(st.sampled_from(_ATTRS), _VALUES, max_size=3)
    children = st.lists(_element(depth - 1), max_size=3) if depth else st.just([])
    text = st.one_of(st.just(""), _VALUES)
    return st.builds(
        lambda tag, a, kids, body: "<{0}{1}>{2}{3}</{0}>".format(
            tag, "".join(f" {k}={_quote(v)}" for k, v in a.items()), _escape(body),
            "".join(kids)),
        st.sampled_from(_TAGS), attrs, children, text)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _quote(value: str) -> str:
    return '"' + _escape(value).replace('"', "&quot;") + '"'


@given(st.lists(_element(2), max_size=3), st.lists(_element(2), max_size=3),
       st.lists(_element(3) | _DEVICES, max_size=6))
def test_structured_xml_raises_only_pvhvm_errors(
    in_os: list[str], top: list[str], in_devices: list[str]
) -> None:
    """Documents built from libvirt's own vocabulary, in a domain that has its name and os
    type, reach every branch of the reader and the planner; each ends in a plan or in one
    of pvhvm's errors (one line)."""
    text = ("<domain type='kvm'><name>g</name><os><type>hvm</type>" + "".join(in_os) +
            "</os>" + "".join(top) + "<devices>" + "".join(in_devices) + "</devices></domain>")
    for skip in (False, True):
        try:
            make_plan(config_from_xml(text, "f.xml"), check_files=False, skip_unsupported=skip)
        except PvhvmError as err:
            assert "\n" not in str(err)


def test_a_cdrom_is_emulated() -> None:
    with pytest.raises(ConfigError, match=r"d\.xml:1:\d+: <disk device='cdrom'> 'vdb' on "
                                          "bus='virtio': pvhvm's CD drives are emulated"):
        plan_xml(domain("<disk device='cdrom'><target dev='vdb'/></disk>"))


def test_messages_stay_short_whatever_the_document_holds() -> None:
    huge = "x" * (MAX_FILE_BYTES // 2)
    many = " ".join(f"a{i}='{i}'" for i in range(5000))
    plan = plan_xml(domain(f"<{huge[:5000]} type='{huge}'/>"
                           f"<memballoon model='none' {many}/>"
                           f"<panic model='isa' {huge[:3000]}='1'/>"))
    assert len(plan.warnings) == 3 and all(len(w) < 300 for w in plan.warnings), plan.warnings
    assert "<xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... type='xxx" in plan.warnings[0]
    assert "attributes a0='0', a1='1', a10='10', a100='100', a1000='1000' and 4995 more" \
        in plan.warnings[1]
    assert "<panic> attribute xxxxxxxx" in plan.warnings[2] and "...=" in plan.warnings[2]
    with pytest.raises(ConfigError) as info:
        plan_xml(domain().replace(">512<", f">{huge}<"))
    assert len(str(info.value)) < 300


def test_a_xen_domain_xml() -> None:
    """libvirt's Xen drivers' spelling: type='xen', hvmloader, tap:aio, bus='xen', netfront."""
    plan = plan_xml(
        "<domain type='xen'><name>x</name><os><type machine='xenfv'>hvm</type>"
        "<loader type='rom'>/usr/lib/xen/boot/hvmloader</loader></os>"
        "<features><acpi/><apic/></features><devices>"
        "<disk><driver name='tap' type='aio'/><source file='/a'/><target dev='hda'/></disk>"
        "<disk><source file='/b'/><target dev='xvdb'/></disk>"
        "<interface type='bridge'><source bridge='xenbr0'/><model type='netfront'/></interface>"
        "</devices></domain>")
    assert [(d.vdev, d.kind.value, d.format) for d in plan.disks] == [
        ("hda", "ioemu", "raw"), ("xvdb", "xenbus", "raw")]
    assert [v.kind.value for v in plan.vifs] == ["xenbus"]
    assert (plan.bios, plan.acpi, plan.apic, plan.pae) == ("seabios", True, True, False)
    assert [w.split(": ", 1)[1] for w in plan.warnings] == [
        "<disk>/<driver> attribute name='tap' not realised"]
