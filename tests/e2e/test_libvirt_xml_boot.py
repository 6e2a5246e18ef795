"""Real guests (QEMU, TCG) created from a libvirt domain XML: ``pvhvm create DOMAIN.xml``.

Each asserts from the guest's own device report: the XML's buses decide which disks the
guest sees emulated and which PV, as a config's types do. PCI class 0x0101 is IDE, 0x0106
SATA.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pvhvm.guest.report import DeviceReport
from tests.e2e.conftest import EXAMPLES, Pvhvm

pytestmark = pytest.mark.e2e

IDE, SATA = 0x0101, 0x0106


def drivers(report: DeviceReport) -> dict[str, str | None]:
    return {b.name: b.driver for b in report.blocks if not b.name.startswith("sr")}


def test_exported_pv_only_xml_boots_pv_only(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    """export-libvirt of the PV-only example, then create of that XML: no IDE, root on
    virtio_blk, as the config itself boots."""
    xml = tmp_path / "pv.xml"
    pvhvm.run("export-libvirt", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
              "name=xml-pv", "-o", str(xml))
    domain.append("xml-pv")
    created = pvhvm.run("create", str(xml), "--accel", "tcg")
    # its hotplug ports, root-bus addresses and balloon are what pvhvm realises itself
    assert "not realised" not in created.stderr, created.stderr
    report = pvhvm.wait_report("xml-pv")
    assert not report.has_class(IDE) and not report.has_class(SATA)
    assert report.root == "/dev/vda"
    assert drivers(report) == {"vda": "virtio_blk"}
    assert [n.driver for n in report.nets] == ["virtio_net"]


def test_virsh_style_xml_boots_each_disk_on_its_bus(
    pvhvm: Pvhvm, domain: list[str], imagedir: Path, tmp_path: Path
) -> None:
    """A domain XML written as a virsh user writes one (libvirt's own names, a user-networking
    interface, addresses, an emulator line): the ide disk is emulated, the virtio one PV, and
    what pvhvm does not realise is a warning, not an error. (network='default' would name
    virbr0, which a create refuses where that bridge does not exist.)"""
    xml = tmp_path / "virsh.xml"
    xml.write_text(f"""<domain type='qemu'>
  <name>xml-virsh</name>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>{imagedir}/vmlinuz</kernel>
    <initrd>{imagedir}/initramfs.cpio.gz</initrd>
    <cmdline>console=ttyS0 root=/dev/sda</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{imagedir}/rootfs.ext4'/>
      <target dev='hda' bus='ide'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{imagedir}/data.img'/>
      <target dev='vdb' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>
    </disk>
    <controller type='ide' index='0'/>
    <interface type='user'>
      <mac address='52:54:00:12:34:56'/>
      <model type='e1000'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='virtio'/>
  </devices>
</domain>
""")
    domain.append("xml-virsh")
    created = pvhvm.run("create", str(xml), "--accel", "tcg")
    assert "<devices>/<emulator> not realised" in created.stderr
    assert "<disk>/<address type='pci'> not realised" in created.stderr
    report = pvhvm.wait_report("xml-virsh")
    assert report.has_class(IDE)
    assert report.root == "/dev/sda"
    assert drivers(report) == {"sda": "ata_piix", "vda": "virtio_blk"}
    assert [n.driver for n in report.nets] == ["e1000"]
