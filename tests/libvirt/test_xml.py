"""libvirt domain XML from a Plan: golden files, mapping rules, and libvirt's own schema check.

Every export is validated with libvirt's ``virt-xml-validate`` (Debian libvirt-clients,
installed by dev/setup). Regenerate the golden files with
``pytest tests/libvirt --regen-golden`` and review the diff.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pvhvm.cli.main import main
from pvhvm.config.domain import Dialect, config_from_text, load_config
from pvhvm.errors import PlanError
from pvhvm.libvirt.read import config_from_xml
from pvhvm.libvirt.xml import domain_xml
from pvhvm.plan.plan import Plan, make_plan
from tests.identity import golden_uuid

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.cfg"))
GOLDEN = Path(__file__).parent / "golden"
IMAGES = "/images"
SATA_NOTE = "libvirt always adds q35's integrated SATA controller"


def validate(xml: str, tmp_path: Path) -> None:
    """libvirt's own schema check of a domain XML document (fails the test if invalid)."""
    tool = shutil.which("virt-xml-validate")
    assert tool is not None, "virt-xml-validate is missing: run dev/setup (libvirt-clients)"
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    done = subprocess.run([tool, str(path), "domain"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr + xml


def rfc_dialect(text: str) -> Dialect | None:
    """These configs are written with the RFC's defaults (untyped vifs and xvd disks PV):
    read as xend 3.0.2 unless they name xl's guest type (issue 20: xl and xm emulate them)."""
    return None if 'type="hvm"' in text else Dialect.XEND_302


def plan_of(text: str) -> Plan:
    """An HVM guest unless the text names a guest type (a file with none is PV)."""
    if "builder" not in text and "type=" not in text.split("\n", 1)[0]:
        text += '\nbuilder="hvm"'
    return make_plan(config_from_text(text, "g.cfg", None, rfc_dialect(text)),
                     check_files=False)


def devices(xml: str, tag: str) -> list[ET.Element]:
    return ET.fromstring(xml).findall(f"devices/{tag}")


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden_xml(example: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / example, {"imagedir": IMAGES})
    plan = make_plan(config, check_files=False, uuid=golden_uuid(config.name))
    exported = domain_xml(plan)
    golden = GOLDEN / f"{example}.xml"
    if request.config.getoption("--regen-golden"):
        golden.write_text(exported.xml)
    assert exported.xml == golden.read_text(), f"libvirt XML of {example} changed"
    validate(exported.xml, tmp_path)


@pytest.fixture
def imagedir(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img", "disk.img"):
        (images / name).write_bytes(b"\0" * 1024)
    return images


@pytest.mark.parametrize("example", EXAMPLES)
def test_cli_export_of_every_example_validates(
    example: str, imagedir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pvhvm export-libvirt`` writes the file; the q35 SATA difference is said on stderr."""
    out = tmp_path / f"{example}.xml"
    with pytest.raises(SystemExit) as info:
        main(["export-libvirt", str(ROOT / "examples" / example), f"imagedir={imagedir}",
              "-o", str(out), "--virt-type", "qemu"])
    _, err = capsys.readouterr()
    assert info.value.code == 0, err
    xml = out.read_text()
    validate(xml, tmp_path)
    machine = ET.fromstring(xml).find("os/type")
    assert machine is not None
    pv_only = "ide" not in {t.get("bus") for t in ET.fromstring(xml).iter("target")}
    assert machine.get("machine") == ("q35" if pv_only else "pc")
    assert (SATA_NOTE in " ".join(err.split())) == pv_only
    assert ET.fromstring(xml).get("type") == "qemu"


def test_stdout_and_bad_input(
    imagedir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export-libvirt", str(ROOT / "examples" / "mixed.cfg"), f"imagedir={imagedir}"])
    out, err = capsys.readouterr()
    assert info.value.code == 0 and err == ""
    assert ET.fromstring(out).findtext("name") == "mixed"
    bad = tmp_path / "bad.cfg"
    bad.write_text('name = "g"\nbuilder = "hvm"\ndisk = ["/x,raw,xvda,rw,type=floppy"]\n')
    with pytest.raises(SystemExit) as info:
        main(["export-libvirt", str(bad)])
    out, err = capsys.readouterr()
    assert info.value.code == 1 and out == ""
    assert err.startswith(f"pvhvm: error: {bad}:3:") and len(err.splitlines()) == 1


def test_machine_buses_and_places(tmp_path: Path) -> None:
    xml = domain_xml(plan_of(
        'name="g"\nbuilder="hvm"\ndisk=["/a,raw,hdb,rw", ",hdc:cdrom,r", "/iso,,hdd,cdrom", "/v,qcow2,xvda,ro",'
        ' "/dev/sdz,raw,xvdb,w!"]\nboot="dc"'
    )).xml
    validate(xml, tmp_path)
    assert ET.fromstring(xml).find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    disks = devices(xml, "disk")
    summary = [
        (d.get("device"), d.find("target").get("dev"), d.find("target").get("bus"),  # type: ignore[union-attr]
         d.find("address").attrib if d.find("address") is not None else None)
        for d in disks
    ]
    drive = {"type": "drive", "controller": "0", "target": "0"}
    assert summary == [
        ("disk", "hdb", "ide", {**drive, "bus": "0", "unit": "1"}),
        ("cdrom", "hdc", "ide", {**drive, "bus": "1", "unit": "0"}),
        ("cdrom", "hdd", "ide", {**drive, "bus": "1", "unit": "1"}),
        ("disk", "vda", "virtio", None),
        ("disk", "vdb", "virtio", None),
    ]
    assert disks[1].find("source") is None  # the empty drive
    assert disks[1].find("readonly") is not None
    assert disks[3].find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert disks[3].find("readonly") is not None
    assert disks[4].get("type") == "block" and disks[4].find("shareable") is not None
    assert disks[4].find("source").get("dev") == "/dev/sdz"  # type: ignore[union-attr]
    # boot="dc": the cdrom with media first, then the first hard disk (libvirt counts from 1)
    assert [(d.find("target").get("dev"), d.find("boot").get("order"))  # type: ignore[union-attr]
            for d in disks if d.find("boot") is not None] == [("hdb", "2"), ("hdd", "1")]
    assert [d.find("alias").get("name") for d in disks] == [  # type: ignore[union-attr]
        "ua-disk-hdb", "ua-disk-hdc", "ua-disk-hdd", "ua-disk-xvda", "ua-disk-xvdb"]


def test_pv_only_is_q35_with_free_hotplug_ports_and_a_balloon_and_says_so(
        tmp_path: Path) -> None:
    """q35 keeps ``hotplug_slots`` empty pcie-root-ports: every PCI device given at create
    sits on the root bus at an explicit slot (libvirt would fill the empty ports otherwise),
    and the virtio balloon mem-set moves is there."""
    exported = domain_xml(plan_of(
        'name="g"\nbuilder="hvm"\ndisk=["/a,raw,xvda,rw"]\nvif=["", "type=ioemu"]\n'
        'hotplug_slots=3'), "qemu")
    validate(exported.xml, tmp_path)
    assert exported.machine == "q35"
    assert [n for n in exported.notes if SATA_NOTE in n]
    assert "<!-- NOTE: no disk is emulated" in exported.xml
    controllers = devices(exported.xml, "controller")
    assert [c.attrib for c in controllers] == [
        {"type": "pci", "index": "0", "model": "pcie-root"},
        *({"type": "pci", "index": str(n), "model": "pcie-root-port"} for n in (1, 2, 3)),
        {"type": "usb", "model": "none"}]
    assert [c.find("alias").get("name") for c in controllers[1:4]] == [  # type: ignore[union-attr]
        "ua-hotplug1", "ua-hotplug2", "ua-hotplug3"]
    pci = [d for d in ET.fromstring(exported.xml).find("devices")  # type: ignore[union-attr]
           if (a := d.find("address")) is not None and a.get("type") == "pci"]
    assert [(d.tag, d.find("address").get("bus"), d.find("address").get("slot"))  # type: ignore[union-attr]
            for d in pci] == [("disk", "0x00", "0x02"), ("interface", "0x00", "0x03"),
                              ("interface", "0x00", "0x04"), ("memballoon", "0x00", "0x05")]
    assert [m.get("model") for m in devices(exported.xml, "memballoon")] == ["virtio"]
    # machine pc's root bus hotplugs: no ports, no addresses
    pc = domain_xml(plan_of('name="g"\nbuilder="hvm"\ndisk=["/a,raw,hda,rw"]\nvif=[""]'))
    assert [c.get("model") for c in devices(pc.xml, "controller")] == ["none"]
    assert "type=\"pci\"" not in pc.xml
    assert ET.fromstring(exported.xml).find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    assert not domain_xml(plan_of('name="g"\nbuilder="hvm"\ndisk=["/a,raw,hda,rw"]')).notes


def test_nics_keep_model_mac_bridge_and_boot(tmp_path: Path) -> None:
    plan = plan_of('name="g"\nbuilder="hvm"\nvif=["type=ioemu,model=ne2k_pci,bridge=br9", "type=ioemu",'
                   ' "mac=00:16:3e:01:02:03", "rate=10Mb/s,vifname=v0"]\nboot="n"')
    exported = domain_xml(plan)
    validate(exported.xml, tmp_path)
    nics = devices(exported.xml, "interface")
    assert [(n.find("model").get("type"), n.find("mac").get("address"),  # type: ignore[union-attr]
             n.find("source").get("bridge")) for n in nics] == [  # type: ignore[union-attr]
        ("ne2k_pci", plan.vifs[0].mac, "br9"), ("rtl8139", plan.vifs[1].mac, "xenbr0"),
        ("virtio", "00:16:3e:01:02:03", "xenbr0"), ("virtio", plan.vifs[3].mac, "xenbr0")]
    assert nics[0].find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert nics[0].find("rom") is None and nics[1].find("rom").get("enabled") == "no"  # type: ignore[union-attr]
    assert exported.notes[1:] == ("vif 3: vifname=v0, rate=10Mb/s not exported (xl settings "
                                  "with no counterpart here; libvirt's own bridge setup "
                                  "applies)",)


def test_direct_boot_actions_clock_and_features(tmp_path: Path) -> None:
    exported = domain_xml(plan_of(
        'name="g"\nbuilder="hvm"\nmemory=256\nvcpus=3\nuuid="12345678-1234-5678-1234-567812345678"\n'
        'kernel="/k"\nramdisk="/r"\nextra="console=ttyS0"\nroot="/dev/vda"\nacpi=0\n'
        'localtime=1\non_poweroff="preserve"\non_reboot="coredump-restart"\n'
        'on_crash="coredump-destroy"\ndisk=["/a,raw,xvda,rw"]'
    ))
    validate(exported.xml, tmp_path)
    root = ET.fromstring(exported.xml)
    assert root.findtext("os/kernel") == "/k" and root.findtext("os/initrd") == "/r"
    assert root.findtext("os/cmdline") == "root=/dev/vda console=ttyS0"
    assert root.findtext("uuid") == "12345678-1234-5678-1234-567812345678"
    assert (root.findtext("memory"), root.findtext("vcpu")) == ("256", "3")
    assert [f.tag for f in root.find("features")] == ["apic", "pae"]  # type: ignore[union-attr]
    assert root.find("clock").get("offset") == "localtime"  # type: ignore[union-attr]
    assert [root.findtext(k) for k in ("on_poweroff", "on_reboot", "on_crash")] == [
        "preserve", "restart", "coredump-destroy"]
    assert "on_reboot=coredump-restart: libvirt dumps core on a crash only; exported as " \
           "restart" in exported.notes
    assert root.find("devices/disk/boot") is None  # direct boot: no firmware boot order


@pytest.mark.parametrize(("serial", "kind", "source"), [
    (None, "pty", None),
    ("pty", "pty", None),
    ("file:/var/log/g.log", "file", {"path": "/var/log/g.log", "append": "on"}),
    ("unix:/run/g.sock", "unix", {"mode": "bind", "path": "/run/g.sock"}),
    ("tcp::4555", "tcp", {"mode": "bind", "host": "127.0.0.1", "service": "4555"}),
    ("telnet:127.0.0.2:4556", "tcp", {"mode": "bind", "host": "127.0.0.2", "service": "4556"}),
    ("null", "null", None),
])
def test_serial_and_console(
    serial: str | None, kind: str, source: dict[str, str] | None, tmp_path: Path
) -> None:
    line = "" if serial is None else f"\nserial={serial!r}"
    xml = domain_xml(plan_of(f'name="g"{line}')).xml
    validate(xml, tmp_path)
    (port,) = devices(xml, "serial")
    (console,) = devices(xml, "console")
    assert port.get("type") == kind and console.get("type") == kind
    got = port.find("source")
    assert (None if got is None else got.attrib) == source
    assert console.find("target").attrib == {"type": "serial", "port": "0"}  # type: ignore[union-attr]
    assert not devices(domain_xml(plan_of('name="g"\nbuilder="hvm"\nserial="none"')).xml, "serial")


def test_network_serial_ports_after_the_console(tmp_path: Path) -> None:
    """xl takes tcp:/telnet: on any port (QEMU's -serial): so do pvhvm and its export, and the
    reader takes the XML back."""
    plan = plan_of('name="g"\nbuilder="hvm"\nserial=["pty", "tcp::4556,server,nowait", '
                   '"telnet:127.0.0.2:4557", "udp:127.0.0.1:4558"]')
    with pytest.raises(PlanError, match=r"udp:127\.0\.0\.1:4558.* not supported on libvirt"):
        domain_xml(plan)
    plan = plan_of('name="g"\nbuilder="hvm"\nserial=["pty", "tcp::4556,server,nowait", '
                   '"telnet:127.0.0.2:4557"]')
    xml = domain_xml(plan).xml
    validate(xml, tmp_path)
    ports = devices(xml, "serial")
    assert [(p.get("type"), p.find("target").get("port"),  # type: ignore[union-attr]
             p.find("protocol").get("type") if p.find("protocol") is not None else None)
            for p in ports] == [("pty", "0", None), ("tcp", "1", "raw"), ("tcp", "2", "telnet")]
    back = config_from_xml(xml)
    assert back.more_serials == ("tcp:127.0.0.1:4556", "telnet:127.0.0.2:4557")


def test_what_libvirt_cannot_run_is_an_error() -> None:
    with pytest.raises(PlanError, match="script-backed"):
        domain_xml(plan_of('name="g"\nbuilder="hvm"\ndisk=["iscsi:iqn.x,xvda,w"]'))
    with pytest.raises(PlanError, match="virt type 'xen'"):
        domain_xml(plan_of('name="g"'), "xen")


def test_vnc_gets_graphics_and_video(tmp_path: Path) -> None:
    xml = domain_xml(plan_of('name="g"\nbuilder="hvm"\nvnc=1')).xml
    validate(xml, tmp_path)
    assert [g.get("type") for g in devices(xml, "graphics")] == ["vnc"]
    assert devices(xml, "video")


_DISK = st.sampled_from([
    "/a,raw,xvd{l},rw", "/b{l},qcow2,xvd{l},ro", "/dev/sd{l},raw,sd{l},w", ",hdc:cdrom,r",
    "/iso,,hdd,cdrom", "/c{l},raw,hda,w", "/d{l},raw,hdb,w!", "/e{l},vhd,xvd{l},w!",
])


@settings(max_examples=40)
@given(disks=st.lists(_DISK, max_size=6), nics=st.integers(0, 3),
       boot=st.sampled_from(["c", "d", "n", "dc", "cdn"]), kernel=st.booleans())
def test_any_plan_exports_valid_xml(
    disks: list[str], nics: int, boot: str, kernel: bool, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Whatever mix of disks, NICs and boot order a config has, libvirt's schema accepts it
    and every device is in it (none dropped)."""
    specs = [spec.format(l="abcdefgh"[i]) for i, spec in enumerate(disks)]
    text = f'name="g"\nbuilder="hvm"\ndisk={specs!r}\nvif={["type=ioemu"] * nics!r}\nboot={boot!r}'
    if kernel:
        text += '\nkernel="/k"'
    try:
        plan = plan_of(text)
    except ValueError:
        assume(False)  # an invalid mix (two disks at one place...), refused by the planner
        return
    xml = domain_xml(plan).xml
    validate(xml, tmp_path_factory.mktemp("xml"))
    assert len(devices(xml, "disk")) == len(plan.disks)
    assert len(devices(xml, "interface")) == len(plan.vifs)


def test_running_options_console_log_and_user_networking(tmp_path: Path) -> None:
    """What --platform libvirt adds for a local daemon: the console also logged to pvhvm's
    log (not for serial=file:, which is a log already), user networking for absent bridges."""
    plan = plan_of('name="g"\nbuilder="hvm"\nvif=["bridge=br0", "bridge=nosuch"]')
    xml = domain_xml(plan, "qemu", console_log="/logs/g.console.log",
                     user_networking=frozenset({1})).xml
    validate(xml, tmp_path)
    (port,) = devices(xml, "serial")
    assert port.find("log").attrib == {"file": "/logs/g.console.log", "append": "on"}  # type: ignore[union-attr]
    assert devices(xml, "console")[0].find("log") is None
    nics = devices(xml, "interface")
    assert [n.get("type") for n in nics] == ["bridge", "user"]
    assert nics[1].find("source") is None
    assert nics[1].find("mac").get("address") == plan.vifs[1].mac  # type: ignore[union-attr]
    filed = domain_xml(plan_of('name="g"\nbuilder="hvm"\nserial="file:/s.log"'), console_log="/l").xml
    assert devices(filed, "serial")[0].find("log") is None


def test_xl_keys_are_exported_and_validate(tmp_path: Path) -> None:
    """The xl.cfg keys the qemu platform realises have their libvirt form too."""
    plan = plan_of(
        'name="g"\ntype="hvm"\nmemory=512\nmaxmem=1024\nvcpus=2\nmaxvcpus=4\nvnc=1\n'
        'vnclisten="0.0.0.0"\nvncdisplay=3\nvncunused=0\nvncpasswd="s3cret"\nstdvga=1\nusb=1\n'
        'usbdevice=["tablet"]\nsoundhw="hda,ac97"\nhpet=0\nrtc_timeoffset=3600\nlocaltime=1\n'
        'parallel="pty"\nbios="ovmf"\nserial=["pty", "file:/tmp/s1.log"]\n'
        'disk=["/a,raw,xvdc,w"]\nvif=["type=xenbus,mtu=9000"]'
    )
    exported = domain_xml(plan, "qemu")
    validate(exported.xml, tmp_path)
    root = ET.fromstring(exported.xml)
    assert root.find("vcpu").get("current") == "2" and root.findtext("vcpu") == "4"
    assert root.find("os/loader").text == "/usr/share/ovmf/OVMF.fd"
    clock = root.find("clock")
    assert clock.attrib == {"offset": "variable", "adjustment": "3600", "basis": "localtime"}
    assert clock.find("timer").attrib == {"name": "hpet", "present": "no"}
    graphics = devices(exported.xml, "graphics")[0]
    assert (graphics.get("port"), graphics.get("listen"), graphics.get("passwd")) == (
        "5903", "0.0.0.0", "s3cret")
    assert devices(exported.xml, "video")[0].find("model").get("type") == "vga"
    assert [c.get("model") for c in devices(exported.xml, "controller")] == ["piix3-uhci"]
    assert devices(exported.xml, "input")[0].attrib == {"type": "tablet", "bus": "usb"}
    assert [s.get("model") for s in devices(exported.xml, "sound")] == ["ich6", "ac97"]
    assert [s.find("target").get("port") for s in devices(exported.xml, "serial")] == ["0", "1"]
    assert devices(exported.xml, "parallel")[0].get("type") == "pty"
    # xl emulates the untyped xvdc at the secondary master: libvirt's name for it is hdc
    assert devices(exported.xml, "disk")[0].find("target").attrib == {"dev": "hdc", "bus": "ide"}
    assert devices(exported.xml, "interface")[0].find("mtu").get("size") == "9000"
    # it boots with maxmem; the balloon holds it at memory (mem-set moves it, as on qemu)
    assert (root.findtext("memory"), root.findtext("currentMemory")) == ("1024", "512")
    assert not any("maxmem" in n for n in exported.notes)
