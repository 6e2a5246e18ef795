"""list / block-list / network-list output: xl's formats, from records (no QEMU)."""

from __future__ import annotations

from pvhvm.runtime.listing import (
    LIST_HEADER,
    block_devices,
    format_block_list,
    format_list,
    format_network_list,
    list_rows,
    long_list,
    network_devices,
    state_flags,
)
from pvhvm.runtime.state import DomainRecord, DomainState


def record(name: str = "web", domid: int = 3, state: str = "running",
           qemu_pid: int | None = 4242) -> DomainRecord:
    return DomainRecord(
        name=name, domid=domid, uuid="u", platform="qemu", memory_mib=512, vcpus=2,
        plan={
            "disks": [
                {"vdev": "hda", "devid": 768, "type": "ioemu", "mode": "w", "target": "/i/a"},
                {"vdev": "hdc", "devid": 5632, "type": "ioemu", "mode": "r", "target": None},
                {"vdev": "xvdb", "devid": 51728, "type": "xenbus", "mode": "w",
                 "target": "/i/b"},
            ],
            "vifs": [
                {"devid": 0, "type": "ioemu", "mac": "00:16:3e:00:00:01", "bridge": "xenbr0"},
                {"devid": 1, "type": "xenbus", "mac": "00:16:3e:00:00:02", "bridge": "br1"},
            ],
        },
        argv=[
            "qemu-system-x86_64", "-name", "guest=web",
            "-drive", "id=disk-hda,if=none,file=/i/a",
            "-device", "ide-hd,drive=disk-hda,bus=ide.0,unit=0",
            "-drive", "id=disk-hdc,if=none,media=cdrom",
            "-device", "ide-cd,drive=disk-hdc,bus=ide.1,unit=0",
            "-drive", "id=disk-xvdb,if=none,file=/i/b",
            "-device", "virtio-blk-pci,drive=disk-xvdb,id=vbd-51728,num-queues=2",
            "-netdev", "user,id=net0",
            "-device", "rtl8139,netdev=net0,mac=00:16:3e:00:00:01,id=vif-0,romfile=",
            "-netdev", "bridge,id=net1,br=br1",
            "-device", "virtio-net-pci,netdev=net1,mac=00:16:3e:00:00:02,id=vif-1",
        ],
        on_poweroff="destroy", on_reboot="restart", on_crash="destroy", state=state,
        qemu_pid=qemu_pid,
    )


def test_state_flags_are_xl_six_letters() -> None:
    assert state_flags(DomainState.RUNNING) == "r-----"
    assert state_flags(DomainState.PAUSED) == "--p---"
    assert state_flags(DomainState.SHUTDOWN) == "---s--"
    assert state_flags(DomainState.CRASHED) == "---sc-"
    assert state_flags(DomainState.DYING) == "-----d"
    assert all(len(state_flags(s)) == 6 for s in DomainState)


def test_list_matches_xl_printf() -> None:
    rows = list_rows([record(), record("db", 12, "paused", None)],
                     lambda r: 12.34 if r.qemu_pid else 0.0)
    text = format_list(rows)
    # xl: printf("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f", ...)
    expected = [
        "Name                                        ID   Mem VCPUs\tState\tTime(s)",
        "web" + " " * 37 + "     3   512     2     r-----      12.3",
        "db" + " " * 38 + "    12   512     2     --p---       0.0",
    ]
    assert text == "\n".join(expected) + "\n"
    assert text.splitlines()[0] == LIST_HEADER
    # scripts split on whitespace: name id mem vcpus state time
    assert text.splitlines()[1].split() == ["web", "3", "512", "2", "r-----", "12.3"]


def test_list_empty_is_the_header() -> None:
    assert format_list([]) == LIST_HEADER + "\n"


def test_list_rows_json() -> None:
    (row,) = list_rows([record(state="crashed", qemu_pid=None)],
                       lambda r: 99.0 if r.qemu_pid else 0.0)
    assert row.to_json() == {
        "name": "web", "domid": 3, "memory_mib": 512, "vcpus": 2, "state": "crashed",
        "flags": "---sc-", "cpu_seconds": 0.0, "vnc": None,
    }


def test_long_list_is_domid_and_config_first() -> None:
    """As xl list -l: domid, then config in libxl_domain_config's shape (c_info, b_info,
    disks, nics); pvhvm's record after it, its plan under its own name."""
    (document,) = long_list([record()])
    assert list(document)[:2] == ["domid", "config"]
    config = document["config"]
    assert config["c_info"] == {"type": "hvm", "name": "web", "uuid": "u"}
    assert (config["b_info"]["max_memkb"], config["b_info"]["target_memkb"]) == (512 << 10,
                                                                                512 << 10)
    assert config["b_info"]["avail_vcpus"] == [0, 1]
    assert [(d["vdev"], d["pdev_path"], d["readwrite"], d["is_cdrom"])
            for d in config["disks"]] == [("hda", "/i/a", 1, 0), ("hdc", "", 0, 0),
                                          ("xvdb", "/i/b", 1, 0)]
    assert [(n["devid"], n["nictype"], n["bridge"]) for n in config["nics"]] == [
        (0, "vif_ioemu", "xenbr0"), (1, "vif", "br1")]
    assert document["name"] == "web" and document["plan"]["disks"][0]["vdev"] == "hda"


def test_block_devices_say_how_each_disk_is_realised() -> None:
    devices = block_devices(record())
    assert [(d.vdev, d.devid, d.type, d.driver) for d in devices] == [
        ("hda", 768, "ioemu", "ide-hd"),
        ("hdc", 5632, "ioemu", "ide-cd"),
        ("xvdb", 51728, "xenbus", "virtio-blk-pci"),
    ]
    assert devices[1].target == "(empty)"
    lines = format_block_list(devices).splitlines()
    assert lines[0].split() == ["Vdev", "Devid", "Type", "Driver", "Mode", "Target"]
    assert lines[3].split() == ["xvdb", "51728", "xenbus", "virtio-blk-pci", "w", "/i/b"]
    # columns line up
    assert len({line.index(line.split()[2]) for line in lines}) == 1


def test_network_devices() -> None:
    devices = network_devices(record())
    assert [(d.devid, d.type, d.driver) for d in devices] == [
        (0, "ioemu", "rtl8139"), (1, "xenbus", "virtio-net-pci"),
    ]
    lines = format_network_list(devices).splitlines()
    assert lines[0].split() == ["Idx", "Type", "Driver", "Mac", "Addr.", "Bridge"]
    assert lines[2].split() == ["1", "xenbus", "virtio-net-pci", "00:16:3e:00:00:02", "br1"]
    # vif 0's bridge (xenbr0) was missing at create, so QEMU put it on user networking: a
    # field of its own, said in the text's Bridge column
    assert (devices[0].bridge, devices[0].user_networking) == ("xenbr0", True)
    assert (devices[1].bridge, devices[1].user_networking) == ("br1", False)
    assert lines[1].endswith("xenbr0 (absent: user networking)")
