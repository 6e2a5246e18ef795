"""Golden QEMU argv for the example configs, and argv rules.

Regenerate the golden files with ``pytest tests/qemu --regen-golden`` and review the diff.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pvhvm.config.domain import config_from_text, load_config
from pvhvm.errors import ConfigError, PlanError
from pvhvm.plan.plan import make_plan
from pvhvm.qemu.accel import choose_accel
from pvhvm.qemu.argv import Accel, ArgvOptions, RunPaths, qemu_argv
from tests.identity import golden_uuid

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
IMAGES = "/images"
PATHS = RunPaths(
    qmp_socket=Path("/run/pvhvm/g/qmp.sock"), control_socket=Path("/run/pvhvm/g/ctl.sock"),
    console_socket=Path("/run/pvhvm/g/console.sock"),
    console_log=Path("/var/log/pvhvm/g.console.log"),
)


def argv_for(text_or_path: str | Path, **options: object) -> list[str]:
    if isinstance(text_or_path, Path):
        config = load_config(text_or_path, {"imagedir": IMAGES})
    else:
        config = config_from_text(text_or_path, "g.cfg")
    plan = make_plan(config, check_files=False, uuid=golden_uuid(config.name))
    return qemu_argv(plan, PATHS, ArgvOptions(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.cfg")))
def test_golden_argv(example: str, request: pytest.FixtureRequest) -> None:
    argv = argv_for(ROOT / "examples" / example)
    golden = GOLDEN / f"{example}.json"
    if request.config.getoption("--regen-golden"):
        golden.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(golden.read_text()), f"argv of {example} changed"


def _device(argv: list[str], prefix: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device" and
            argv[i + 1].startswith(prefix)]


def test_machine_follows_ide_need() -> None:
    pv = argv_for('name="g"; builder="hvm"\ndisk=["/x,raw,xvda,rw,type=xenbus"]')
    assert pv[pv.index("-machine") + 1] == "q35,sata=off,smbus=off"
    assert not _device(pv, "ide-")
    ide = argv_for('name="g"; builder="hvm"\ndisk=["/x,raw,hda,rw"]')
    assert ide[ide.index("-machine") + 1] == "pc"
    assert _device(ide, "ide-hd") == ["ide-hd,drive=disk-hda,bus=ide.0,unit=0,bootindex=0"]


def test_ide_places_and_cdroms() -> None:
    argv = argv_for('name="g"; builder="hvm"\ndisk=["/a,raw,hdb,rw", ",hdc:cdrom,r", "/iso,,hdd,cdrom"]')
    assert _device(argv, "ide-") == [
        "ide-hd,drive=disk-hdb,bus=ide.0,unit=1,bootindex=0",
        "ide-cd,drive=disk-hdc,bus=ide.1,unit=0",
        "ide-cd,drive=disk-hdd,bus=ide.1,unit=1,bootindex=1",
    ]
    assert "id=disk-hdc,if=none,media=cdrom" in argv
    drive = next(a for a in argv if a.startswith("id=disk-hdd"))
    assert "readonly=on" in drive and "media=cdrom" in drive


def test_pv_disk_tuning_and_fallback() -> None:
    argv = argv_for('name="g"; builder="hvm"\nvcpus=2\ndisk=["/a,raw,xvda,rw,type=xenbus", '
                    '"/b,qcow2,xvdb,ro,type=xenbus"]',
                    no_direct_io=frozenset({"/b"}))
    drives = [a for a in argv if a.startswith("id=disk-")]
    assert "cache=none,aio=native" in drives[0]
    assert "cache=writeback,aio=threads" in drives[1] and "format=qcow2" in drives[1]
    assert "readonly=on" in drives[1]
    assert _device(argv, "virtio-blk-pci")[0].startswith(
        "virtio-blk-pci,drive=disk-xvda,id=vbd-51712,num-queues=2,queue-size=256")


def test_nics_by_type_and_bridge() -> None:
    argv = argv_for('name="g"; builder="hvm"\nvif=["mac=00:16:3e:00:00:01,bridge=br0,type=vif",'
                    '"type=ioemu,model=e1000,mac=00:16:3e:00:00:02"]',
                    bridges=frozenset({"br0"}))
    assert "bridge,id=net0,br=br0" in argv and "user,id=net1" in argv
    assert _device(argv, "virtio-net-pci") == [
        "virtio-net-pci,netdev=net0,mac=00:16:3e:00:00:01,id=vif-0,romfile="]
    assert _device(argv, "e1000") == ["e1000,netdev=net1,mac=00:16:3e:00:00:02,id=vif-1,romfile="]


def test_direct_kernel_boot_and_options() -> None:
    argv = argv_for('name="g"; builder="hvm"\nkernel="/k"\nramdisk="/r"\nextra="console=ttyS0"\n'
                    'on_reboot="destroy"\nacpi=0\nlocaltime=1', accel=Accel.KVM, start_paused=True)
    for flag in (["-kernel", "/k"], ["-initrd", "/r"], ["-append", "console=ttyS0"],
                 ["-accel", "kvm"], ["-cpu", "host"], ["-rtc", "base=localtime"]):
        i = argv.index(flag[0])
        assert argv[i:i + 2] == flag
    assert "-no-reboot" in argv and "-S" in argv
    assert argv[argv.index("-machine") + 1].endswith("acpi=off")


@pytest.mark.parametrize(
    ("serial", "chardev"),
    [
        (None, "socket,id=serial0,path=/run/pvhvm/g/console.sock,server=on,wait=off"),
        ("'pty'", "pty,id=serial0"),
        ("'file:/tmp/c,x.log'", "file,id=serial0,path=/tmp/c,,x.log"),
        ("'unix:/tmp/s'", "socket,id=serial0,path=/tmp/s,server=on,wait=off"),
        ("'tcp::4555'", "socket,id=serial0,host=127.0.0.1,port=4555,server=on,wait=off"),
    ],
)
def test_serial(serial: str | None, chardev: str) -> None:
    text = 'name="g"; builder="hvm"' + (f"\nserial={serial}" if serial else "")
    argv = argv_for(text)
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    assert any(c.startswith(chardev) for c in chardevs), chardevs


@pytest.mark.parametrize(
    ("text", "words", "error"),
    [('serial="vc"', "not supported", ConfigError),
     ('serial="tcp:host:port"', "HOST:PORT", ConfigError),
     ('disk=["iscsi:iqn.x:y,xvda,w"]', "script-backed", PlanError)],
)
def test_unrealisable(text: str, words: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=words):
        argv_for('name="g"; builder="hvm"\n' + text)


def test_commas_in_paths_are_escaped() -> None:
    argv = argv_for('name="g"; builder="hvm"\ndisk=["vdev=xvda,target=/a,b.img"]')
    assert any("file=/a,,b.img," in a for a in argv)


def test_many_pv_disks_go_behind_pci_bridges() -> None:
    disks = ", ".join(f'"/d{i},raw,xvd{chr(97 + i // 26)}{chr(97 + i % 26)},rw"' for i in range(64))
    argv = argv_for(f'name="g"; builder="hvm"\ndisk=[{disks}]')
    assert _device(argv, "pci-bridge") == [
        "pci-bridge,id=pvbridge1,chassis_nr=1", "pci-bridge,id=pvbridge2,chassis_nr=2",
        "pci-bridge,id=pvbridge3,chassis_nr=3",
    ]
    buses = [d.rsplit("bus=", 1)[1].split(",")[0] for d in _device(argv, "virtio-blk-pci")]
    assert buses.count("pvbridge1") == 31 and buses.count("pvbridge3") == 2
    few = argv_for('name="g"; builder="hvm"\ndisk=["/a,raw,xvda,rw"]')
    assert not _device(few, "pci-bridge")


@pytest.mark.parametrize(("action", "no_reboot"), [("restart", False), ("rename-restart", False),
                                                   ("destroy", True), ("preserve", True)])
def test_no_reboot_unless_reboot_means_reset(action: str, no_reboot: bool) -> None:
    assert ("-no-reboot" in argv_for(f'name="g"; builder="hvm"\non_reboot="{action}"')) is no_reboot


def test_kvm_probe_says_what_it_does_once_per_host_boot(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: auto never probes")
    qemu = tmp_path / "qemu"  # a QEMU whose KVM never runs the probe sector
    qemu.write_text("#!/bin/sh\nexit 1\n")
    qemu.chmod(qemu.stat().st_mode | stat.S_IEXEC)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    said: list[str] = []
    first = choose_accel("auto", tmp_path, str(qemu), kernel, notify=said.append)
    assert first is Accel.TCG and len(said) == 1 and "once per host boot" in said[0]
    other_kernel = tmp_path / "vmlinuz-2"
    other_kernel.write_bytes(b"")
    again = choose_accel("auto", tmp_path, str(qemu), other_kernel, notify=said.append)
    assert again is Accel.TCG and len(said) == 1  # cached: no second probe for a new kernel


PV_DISK = 'name="g"; builder="hvm"\ndisk=["/i/a.img,xvda,w,type=xenbus"]\n'


def test_hotplug_slots_are_empty_root_ports_on_q35() -> None:
    ports = _device(argv_for(PV_DISK), "pcie-root-port,")
    assert ports == ["pcie-root-port,id=hotplug1,chassis=100,slot=0",
                     "pcie-root-port,id=hotplug2,chassis=101,slot=0"]  # the default: 2
    ports = _device(argv_for(PV_DISK + "hotplug_slots = 5\n"), "pcie-root-port,")
    assert [p.split(",")[1] for p in ports] == [f"id=hotplug{n}" for n in range(1, 6)]
    assert len({p.split(",")[2] for p in ports}) == 5  # one chassis each
    assert _device(argv_for(PV_DISK + "hotplug_slots = 0\n"), "pcie-root-port,") == []


def test_no_root_ports_on_pc_whose_root_bus_hotplugs() -> None:
    argv = argv_for('name="g"; builder="hvm"\ndisk=["/i/a.img,hda,w"]\nhotplug_slots = 3\n')
    assert "pc" in argv and _device(argv, "pcie-root-port,") == []


@pytest.mark.parametrize("value", ["17", "-1", '"two"'])
def test_hotplug_slots_out_of_range(value: str) -> None:
    with pytest.raises(ValueError, match=r"g.cfg:3:\d+: hotplug_slots"):
        argv_for(PV_DISK + f"hotplug_slots = {value}\n")
