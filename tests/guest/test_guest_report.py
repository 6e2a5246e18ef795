"""The device report parser (pvhvm.guest.report)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvhvm.errors import GuestImageError
from pvhvm.guest.report import (
    IDE_CLASS,
    BlockDevice,
    DeviceReport,
    NetDevice,
    PciFunction,
    parse_report,
)

CONSOLE = """\
SeaBIOS (version 1.16.2-debian-1.16.2-1)\r
[    3.466582] ACPI: button: Power Button [PWRF]\r
PVHVM-REPORT-BEGIN\r
pci 0000:00:00.0 class=0x0600 vendor=0x8086 device=0x1237 driver=-\r
pci 0000:00:01.1 class=0x0101 vendor=0x8086 device=0x7010 driver=ata_piix\r
pci 0000:00:02.0 class=0x0200 vendor=0x10EC device=0x8139 driver=8139cp\r
pci 0000:00:03.0 class=0x0100 vendor=0x1af4 device=0x1001 driver=virtio-pci\r
blk sda driver=ata_piix size=131072\r
blk sr0 driver=ata_piix size=2097151\r
blk vda driver=virtio_blk size=198656\r
net eth0 driver=8139cp mac=52:54:00:12:34:56\r
root /dev/vda2 fstype=ext4\r
PVHVM-REPORT-END\r
[    4.668090] sd 0:0:0:0: [sda] Synchronizing SCSI cache\r
"""


def test_parse_console_log() -> None:
    report = parse_report(CONSOLE)
    assert report.pci[1] == PciFunction("0000:00:01.1", 0x0101, 0x8086, 0x7010, "ata_piix")
    assert report.pci[0].driver is None
    assert report.pci[2].vendor == 0x10EC
    assert report.has_class(IDE_CLASS)
    assert report.blocks == [
        BlockDevice("sda", "ata_piix", 131072),
        BlockDevice("sr0", "ata_piix", 2097151),
        BlockDevice("vda", "virtio_blk", 198656),
    ]
    assert report.nets == [NetDevice("eth0", "8139cp", "52:54:00:12:34:56")]
    assert (report.root, report.rootfstype) == ("/dev/vda2", "ext4")
    assert report.root_disk() == BlockDevice("vda", "virtio_blk", 198656)
    assert report.block("sr0") is not None and report.block("hda") is None
    assert report.net("eth0") is not None and report.net("eth1") is None


def test_kernel_message_inside_the_block_is_ignored() -> None:
    text = CONSOLE.replace(
        "blk sda", "[    4.1] e1000 0000:00:02.0 eth0: Intel(R) PRO/1000\r\nblk sda",
    )
    assert parse_report(text) == parse_report(CONSOLE)


def test_last_complete_report_wins() -> None:
    second = CONSOLE.replace("root /dev/vda2", "root /dev/sda")
    assert parse_report(CONSOLE + second).root == "/dev/sda"
    # A report cut off by the end of the log: the complete one before it counts.
    truncated = CONSOLE + CONSOLE[: CONSOLE.index("root ")]
    assert parse_report(truncated).root == "/dev/vda2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no device report"),
        ("[ 1.0] Linux\nPVHVM-REPORT-BEGIN\npci 0000:00:00.0", "never ended"),
        ("PVHVM-REPORT-BEGIN\nblk vda driver=- size=1\nPVHVM-REPORT-END\n", "no root line"),
        ("PVHVM-ERROR root filesystem LABEL=pvhvm-root not found after 30s\n", "not found"),
    ],
)
def test_incomplete_reports_raise(text: str, message: str) -> None:
    with pytest.raises(GuestImageError, match=message):
        parse_report(text)


def test_root_disk_of_partitions() -> None:
    nvme = BlockDevice("nvme0n1", None, 10)
    sda = BlockDevice("sda", "ata_piix", 10)
    report = DeviceReport(blocks=[sda, nvme], root="/dev/nvme0n1p2", rootfstype="ext4")
    assert report.root_disk() == nvme
    assert DeviceReport(blocks=[sda], root="/dev/sda1").root_disk() == sda
    assert DeviceReport(blocks=[sda], root="/dev/sdb").root_disk() is None


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
drivers = st.one_of(st.none(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-",
                                       min_size=1, max_size=16).filter(lambda s: s != "-"))
pci_functions = st.builds(
    PciFunction,
    slot=st.tuples(
        st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7),
    ).map(lambda t: f"{t[0]:04x}:{t[1]:02x}:{t[2]:02x}.{t[3]}"),
    pci_class=st.integers(0, 0xFFFF),
    vendor=st.integers(0, 0xFFFF),
    device=st.integers(0, 0xFFFF),
    driver=drivers,
)
blocks = st.builds(BlockDevice, name=names, driver=drivers, sectors=st.integers(0, 2**48))
nets = st.builds(
    NetDevice, ifname=names, driver=drivers,
    mac=st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
)
reports = st.builds(
    DeviceReport,
    pci=st.lists(pci_functions, max_size=8),
    blocks=st.lists(blocks, max_size=6),
    nets=st.lists(nets, max_size=4),
    root=names.map(lambda n: f"/dev/{n}"),
    rootfstype=st.sampled_from(["ext4", "ext2", "xfs"]),
)


@settings(deadline=None)
@given(report=reports, crlf=st.booleans(), noise=st.lists(st.sampled_from([
    "[    0.000000] Linux version 6.1.0-56-amd64",
    "SeaBIOS (version 1.16.2)",
    "Booting from Hard Disk...",
    "",
]), max_size=4))
def test_round_trip(report: DeviceReport, crlf: bool, noise: list[str]) -> None:
    text = "\n".join(noise) + "\n" + report.format() + "\n".join(noise)
    if crlf:
        text = text.replace("\n", "\r\n")
    assert parse_report(text) == report
