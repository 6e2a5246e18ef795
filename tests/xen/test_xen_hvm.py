"""What an HVM guest gets on a real Xen 4.17 host, seen from inside it (issue 19, item 3).

pvhvm's examples (pv-only, mixed, default, xl-hvm), with the rows of the README's defaults
table the examples lack added to pv-only (PV disks named hd and sd) and mixed (an emulated SCSI
disk, an emulated CD, an untyped NIC), are exported by ``pvhvm export-xl`` in dom0 and created
by the real ``xl create``: one at a time and paused (``xl create -p``: libxl's fixed 10 s QMP
and hotplug timeouts), then all four unpaused together (HVM boots are slow under TCG) with
``pci=noearly quiet`` (see FAST_BOOT) and a short vif hotplug script (see VIF_SCRIPT). Each
guest is pvhvm's guest kit, its kernel booted directly with its initramfs plus Xen's PV
frontends (xen-blkfront, xen-netfront: the kit has no use for them on QEMU); default and
xl-hvm keep their disk image (the kit's boot.img), but not SeaBIOS reading the kernel from
it (see Guest.boot_kit). The kit prints its device report (PCI functions; the driver owning each disk
and NIC) on ttyS0, which the export sends to a file in dom0 (``serial=file:``). Each export is
created with its disks on QEMU's qdisk backend (see qdisk()) and dom0 weighted above the guests.

Every device is asserted twice: inside the guest (its report) and from dom0 (the state of its
xenbus backend: Connected, 4, exactly when the guest's PV driver took it). The report names a
PCI driver for an emulated device; a PV one has no PCI or virtio parent, so its driver is ``-``:
a disk that blkfront provides is named xvd*, a NIC that netfront provides is the vif's MAC with
no PCI driver.

Each guest's ``xl create -p`` and the time from its unpause to its report are printed (``-s``
shows them).
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pvhvm.config.domain import config_from_text
from pvhvm.guest.initramfs import CpioEntry, cpio_newc
from pvhvm.guest.kit import Kit
from pvhvm.guest.report import BEGIN, END, DeviceReport, NetDevice, parse_report
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.plan.vdev import parse_vdev
from pvhvm.xen.xlcfg import export_xl, xl_vdevs
from tests.xen.host import XenHost

#: the Xen host tests share one boot (tests/xen/conftest.py); the export tests need no host
on_xen = pytest.mark.xdist_group("xenhost")
#: Opt-in, measured here (2026-12-07, 2 cores at load 8-13: three Xen hosts and several TCG
#: guests): the four guests do not fit the suite's 8 minutes. What costs (see FAST_BOOT and
#: VIF_SCRIPT for what was cut): the kit's upload 89-104 s; each xl create 41-75 s; libxl's
#: fixed 10 s QMP timeout failing xl create of the guests with the Xen platform device
#: (pv-only, mixed) in 14 of 19 tries one at a time (default and xl-hvm: 0 of 3; all four at
#: once: 4 of 4); and each guest's firmware reading its 10.5 MB kernel and initramfs through
#: fw_cfg's data port (QEMU's non-DMA linuxboot ROM), one device-model round trip at a time,
#: about 50 kB/s a guest with three booting. The skip says so in pytest's summary (-rs).
HVM_OPT_IN = (
    "opt-in (PVHVM_XEN_HVM=1, or =pv-only,mixed for some): measured beyond the suite's budget "
    "on 2 loaded cores (upload 89-104 s, xl create 41-75 s each, libxl's fixed 10 s QMP "
    "timeout failing pv-only's and mixed's create in 14 of 19 tries, the firmware reading "
    "10.5 MB of kernel and initramfs at ~50 kB/s a guest); see tests/xen/test_xen_hvm.py")
hvm_guests_asked = pytest.mark.skipif(not os.environ.get("PVHVM_XEN_HVM"), reason=HVM_OPT_IN)


def asked_for() -> tuple[Guest, ...]:
    """The guests PVHVM_XEN_HVM names (1: all)."""
    value = os.environ.get("PVHVM_XEN_HVM", "1")
    return GUESTS if value == "1" else tuple(g for g in GUESTS if g.name in value.split(","))

ROOT = Path(__file__).parents[2]
DOM0_DIR = "/srv/pvhvm-hvm"
#: each guest's memory: four of them fit beside dom0 in the Xen host's 1 GiB
MEMORY_MIB = 160
#: from xl create to the report: SPEC.md saw 70-390 s to init for one guest; four run at once
REPORT_TIMEOUT = 1500.0
#: Xen's PV frontends, added to the kit's initramfs for the direct-boot guests
XEN_FRONTENDS = ("kernel/drivers/block/xen-blkfront.ko", "kernel/drivers/net/xen-netfront.ko")
XENBUS_CONNECTED = "4"
#: what xl create prints when libxl's fixed QMP timeout (10 s) ran out on a starved dom0
LIBXL_QMP_TIMEOUT = "Post DM startup configs failed, rc=-9"
CREATE_ATTEMPTS = 4
#: credit2's default domain weight (xl sched-credit2)
DEFAULT_WEIGHT = 256

#: PCI ids (vendor, device) the guests may show
PIIX3_IDE = (0x8086, 0x7010)
XEN_PLATFORM = (0x5853, 0x0001)
LSI_SCSI = (0x1000, 0x0012)
E1000 = (0x8086, 0x100E)
RTL8139 = (0x10EC, 0x8139)

MIB_SECTORS = 2048
ROOTFS_SECTORS = 64 * MIB_SECTORS


@dataclass(frozen=True)
class Guest:
    """One HVM guest: the example it is made from, the rows added, the variables given."""

    name: str
    example: str
    #: (list key, entries) appended to the example's own disk/vif list
    rows: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: files the config names besides the kit's (name, MiB), made sparse in dom0
    blanks: tuple[tuple[str, int], ...] = ()
    kit_files: tuple[str, ...] = ()
    extra: str | None = None
    #: boot the kit's kernel directly instead of SeaBIOS from the disk: SeaBIOS reading the
    #: kernel through the emulated IDE disk took over ten minutes under nested TCG (seen
    #: here), and how the kernel is loaded changes nothing about the devices
    boot_kit: bool = False


#: Every port access of an HVM guest here is a round trip through Xen to the device model in
#: dom0, both under TCG: 5-10 ms each (measured). Linux's early PCI scans (the GART aperture
#: search reads config space on all 256 buses, twice: 55 s and 170 s of a boot, seen here) and
#: its boot messages on the 8250 serial port (two port accesses a character) cost minutes;
#: pci=noearly skips the first, quiet the second. A guest starved that long also prints soft
#: lockup and RCU stall warnings at emergency level, which quiet keeps, into the middle of its
#: report (seen here: "driver=ata_piix[  370.551461] watchdog: BUG: soft lockup"); nowatchdog
#: and rcupdate.rcu_cpu_stall_suppress=1 keep them out. None of these changes which devices
#: the guest has or which driver takes them.
FAST_BOOT = "pci=noearly quiet nowatchdog rcupdate.rcu_cpu_stall_suppress=1"

GUESTS = (
    Guest("pv-only", "pv-only.cfg",
          rows=(("disk", ('"file:%s/hdb.img,hdb,w,type=xenbus" % imagedir',
                          '"file:%s/sdc.img,sdc,w,type=xenbus" % imagedir')),),
          blanks=(("hdb.img", 8), ("sdc.img", 12)),
          kit_files=("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4"),
          extra=f"console=ttyS0 pvhvm.rootwait=1200 {FAST_BOOT}"),
    Guest("mixed", "mixed.cfg",
          rows=(("disk", ('"file:%s/sdc.img,sdc,w,type=ioemu" % imagedir',
                          '"file:%s/cd.iso,hdc:cdrom,r" % imagedir')),
                ("vif", ('""',))),
          blanks=(("data.img", 20), ("sdc.img", 24), ("cd.iso", 4)),
          kit_files=("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4"),
          extra=f"console=ttyS0 root=LABEL=pvhvm-root pvhvm.rootwait=1200 {FAST_BOOT}"),
    Guest("default", "default.cfg", boot_kit=True,
          kit_files=("vmlinuz", "initramfs.cpio.gz", "boot.img"),
          extra=f"console=ttyS0 root=LABEL=pvhvm-root pvhvm.rootwait=1200 {FAST_BOOT}"),
    Guest("xl-hvm", "xl-hvm.cfg", boot_kit=True,
          kit_files=("vmlinuz", "initramfs.cpio.gz", "boot.img"),
          extra=f"console=ttyS0 root=LABEL=pvhvm-root pvhvm.rootwait=1200 {FAST_BOOT}"),
)
#: default.cfg's firmware line, replaced by the kit's kernel (see Guest.boot_kit)
HVMLOADER = 'kernel = "/usr/lib/xen/boot/hvmloader"'
KIT_BOOT = 'kernel = imagedir + "/vmlinuz"\nramdisk = imagedir + "/initramfs.cpio.gz"'



def with_rows(text: str, key: str, entries: tuple[str, ...]) -> str:
    """The config ``text`` with ``entries`` appended to its ``key = [ ... ]`` list."""
    match = re.search(rf"^{key} = \[(?P<body>[^\]]*)\]", text, re.MULTILINE)
    assert match is not None, f"the example has no {key} list"
    body = match.group("body").rstrip().rstrip(",")
    body = body.split("#")[0].rstrip() if "\n" not in body else body
    joined = body + ",\n    " + ",\n    ".join(entries) + "\n"
    return text[:match.start("body")] + joined + text[match.end("body"):]


def guest_config(guest: Guest) -> str:
    text = (ROOT / "examples" / guest.example).read_text()
    if guest.boot_kit:
        text = text.replace(HVMLOADER, KIT_BOOT) if HVMLOADER in text else text + KIT_BOOT + "\n"
    for key, entries in guest.rows:
        text = with_rows(text, key, entries)
    return text


def cpio_member(archive: bytes, name: str) -> bytes:
    """The data of member ``name`` of a newc archive (a 110-byte header of 13 hex fields after
    the magic; name and data each padded to 4 bytes)."""
    at = 0
    while archive.startswith(b"070701", at):
        size, namesize = int(archive[at + 54:at + 62], 16), int(archive[at + 94:at + 102], 16)
        member = archive[at + 110:at + 110 + namesize - 1].decode()
        start = at + 110 + namesize
        start += -start % 4
        if member == name:
            return archive[start:start + size]
        if member == "TRAILER!!!":
            break
        at = start + size + (-(start + size) % 4)
    raise AssertionError(f"the kit's initramfs has no {name}")


def xen_initramfs(kit: Kit, workdir: Path) -> bytes:
    """The kit's initramfs followed by a second archive with Xen's PV frontends and a module
    list that loads them too (Linux unpacks concatenated archives in order, later files
    replacing earlier ones). The modules come from the kit's own kernel package."""
    release = kit.manifest()["kernel_release"]
    package = kit.manifest()["packages"][f"linux-image-{release}"]["file"]
    moddir = f"lib/modules/{release}"
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(kit.directory / "debs" / package)],
                             capture_output=True, check=True).stdout
        tar_path = Path(scratch) / "data.tar"
        tar_path.write_bytes(tar)
        with tarfile.open(tar_path) as archive:
            modules = {}
            for relpath in XEN_FRONTENDS:
                member = archive.extractfile(f"./{moddir}/{relpath}")
                assert member is not None, relpath
                modules[relpath] = member.read()
    with gzip.open(kit.initramfs) as stream:
        load = cpio_member(stream.read(), f"{moddir}/pvhvm-initramfs.load").decode()
    assert "ext4.ko" in load, load
    directories = sorted({str(Path(moddir) / Path(relpath).parent) for relpath in XEN_FRONTENDS})
    entries = [CpioEntry.directory(d) for d in ("lib", "lib/modules", moddir, f"{moddir}/kernel",
                                                 f"{moddir}/kernel/drivers", *directories)]
    entries += [CpioEntry.file(f"{moddir}/{relpath}", data) for relpath, data in modules.items()]
    entries.append(CpioEntry.file(f"{moddir}/pvhvm-initramfs.load",
                                  (load + "".join(f"{r}\n" for r in XEN_FRONTENDS)).encode()))
    return kit.initramfs.read_bytes() + gzip.compress(cpio_newc(entries), mtime=0)


@dataclass
class Booted:
    """One guest as it ran: its export, its report, its xenbus backends' states."""

    guest: Guest
    export: str = ""
    domid: int = -1
    #: from its unpause to its report, and its xl create -p
    seconds: float = 0.0
    create_seconds: float = 0.0
    console: str = ""
    report: DeviceReport | None = None
    #: (kind, devid) -> backend state, read once the report was there
    backends: dict[tuple[str, int], str] = field(default_factory=dict)

    def pci(self, ids: tuple[int, int]) -> list[str | None]:
        """The driver of each PCI function with these ids."""
        assert self.report is not None
        return [f.driver for f in self.report.pci if (f.vendor, f.device) == ids]

    def disk(self, sectors: int) -> list[tuple[str, str | None]]:
        """(name, driver) of every block device of this size."""
        assert self.report is not None
        return [(b.name, b.driver) for b in self.report.blocks if b.sectors == sectors]

    def nics(self, mac: str) -> list[NetDevice]:
        assert self.report is not None
        return [n for n in self.report.nets if n.mac.lower() == mac.lower()]

    def backend(self, kind: str, devid: int) -> str:
        return self.backends.get((kind, devid), "absent")


def qdisk(export: str) -> str:
    """The export with every disk served by QEMU's qdisk backend instead of blkback.

    Xen's block hotplug script (blkback's losetup and sharing checks) runs once per disk under
    one lock, and under TCG a guest with several disks has the later scripts killed by libxl's
    hotplug timeout ("killing execution of /etc/xen/scripts/block add because of timeout",
    seen here); qdisk needs no script. The guest sees the same xenbus vbd either way (the
    backend's directory is backend/qdisk instead of backend/vbd), and the device model decides
    what is emulated exactly as before."""
    return export.replace('    "format=', '    "backendtype=qdisk, format=')


#: Xen's vif-bridge does three things for a vif (put it on its bridge, bring it up, and for a
#: netback vif write hotplug-status, which netback waits for); it is a bash script of many
#: commands under a lock, and under dom0's TCG at load 6-13 libxl killed it at its 10 s
#: hotplug timeout ("killing execution of /etc/xen/scripts/vif-bridge online because of
#: timeout", seen here), failing the create. This does the same three things in a few
#: commands. libxl (libxl_linux.c) passes the action and type_if ("online type_if=vif" for
#: netback's vif, "add type_if=tap" for the device model's tap), XENBUS_PATH, and the device's
#: name in ``vif`` (netback's) or ``INTERFACE`` (the tap's).
VIF_SCRIPT = f"{DOM0_DIR}/vif-quick"
VIF_SCRIPT_TEXT = """#!/bin/sh
set -e
case "$1 $2" in
    "online type_if=vif") dev="$vif" ;;
    "add type_if=tap") dev="$INTERFACE" ;;
    *) exit 0 ;;
esac
ip link set dev "$dev" master xenbr0
ip link set dev "$dev" up
[ "$2" = type_if=tap ] || xenstore-write "$XENBUS_PATH/hotplug-status" connected
"""


def quick_vifs(export: str) -> str:
    """The export with every vif's hotplug script VIF_SCRIPT (what the guest gets is the
    same: the script only joins dom0's side of the vif to the bridge)."""
    return export.replace('    "mac=', f'    "script={VIF_SCRIPT},mac=')


def exported_devices(export: str, key: str) -> list[dict[str, str]]:
    """The entries of the export's ``disk``/``vif`` list as dicts (the export writes
    key=value items only), with the pvhvm type from each line's comment."""
    block = export.split(f"{key} = [\n", 1)[1].split("\n]", 1)[0]
    devices = []
    for line in block.splitlines():
        spec, _, comment = line.strip().partition("#")
        items = dict(item.strip().split("=", 1) for item in
                     spec.strip().rstrip(",").strip('"').split(","))
        items["pvhvm"] = comment.strip()
        devices.append(items)
    return devices


def _run_guests(host: XenHost, kit: Kit, workdir: Path,
                guests: tuple[Guest, ...]) -> dict[str, Booted]:
    host.ssh(f"rm -rf {DOM0_DIR} && mkdir -p {DOM0_DIR}/kit")
    started = time.monotonic()
    names = {f for g in guests for f in g.kit_files} - {"initramfs.cpio.gz"}
    # GNU tar's sparse archive (-S): the images' holes are neither sent nor unpacked, which
    # under dom0's TCG is most of the upload (rootfs.ext4 and boot.img are mostly holes)
    stage = workdir / "kit"
    stage.mkdir()
    for name in sorted(names):
        (stage / name).symlink_to(kit.directory / name)
    (stage / "initramfs.cpio.gz").write_bytes(xen_initramfs(kit, workdir))
    upload = workdir / "kit.tar.gz"
    subprocess.run(["tar", "-C", str(stage), "-chSzf", str(upload), *sorted(names),
                    "initramfs.cpio.gz"], check=True, capture_output=True)
    with open(upload, "rb") as stream:
        subprocess.run([*host.ssh_argv(), f"tar -C {DOM0_DIR}/kit -xSzf -"], stdin=stream,
                       check=True, capture_output=True, timeout=900)
    print(f"kit uploaded to dom0 in {time.monotonic() - started:.0f} s")
    booted: dict[str, Booted] = {}
    host.put(VIF_SCRIPT_TEXT, VIF_SCRIPT, mode="0755")
    script = [f"set -e; cd {DOM0_DIR}",
              "ip link show xenbr0 >/dev/null 2>&1 || "
              "{ ip link add xenbr0 type bridge; ip link set xenbr0 up; }"]
    for guest in guests:
        imagedir = f"{DOM0_DIR}/{guest.name}"
        host.put(guest_config(guest), f"{DOM0_DIR}/{guest.name}.cfg")
        script.append(f"mkdir -p {imagedir}")
        script += [f"cp --sparse=always kit/{f} {imagedir}/{f}" for f in guest.kit_files]
        script += [f"truncate -s {mib}M {imagedir}/{f}" for f, mib in guest.blanks]
        variables = [f"imagedir={imagedir}", f"memory={MEMORY_MIB}",
                     f"serial=file:{imagedir}/console.log", "tsc_mode=native",
                     *([f"extra={guest.extra}"] if guest.extra else [])]
        script.append(shlex.join(["pvhvm", "export-xl", f"{guest.name}.cfg", *variables,
                                  "-o", f"{guest.name}.xl.cfg"]))
    host.ssh("; ".join(script), timeout=900)
    for guest in guests:
        export = host.ssh(f"cat {DOM0_DIR}/{guest.name}.xl.cfg").stdout
        booted[guest.name] = Booted(guest, export=export)
        host.put(quick_vifs(qdisk(export)), f"{DOM0_DIR}/{guest.name}.xl.cfg")
    # dom0 runs every guest's device model and backends: with dom0 at the guests' weight,
    # four TCG guests starved it until ssh to it timed out (seen here); give it 4x theirs.
    host.ssh(f"xl sched-credit2 -d Domain-0 -w {4 * DEFAULT_WEIGHT} || "
             f"xl sched-credit -d Domain-0 -w {4 * DEFAULT_WEIGHT}")
    # The device model's binary and libraries read once before the first create: libxl gives
    # QEMU 60 s to start and each QMP command 10 s, fixed (libxl_internal.h).
    host.ssh("/usr/libexec/xen-qemu-system-i386 -version >/dev/null")
    # One create at a time, each paused (xl create -p) until all are made, so that each
    # create has dom0 and the Xen host to itself: libxl gives each QMP command 10 s, fixed,
    # and four creates at once, or one beside a booting guest, had it time out ("Post DM
    # startup configs failed, rc=-9", seen here at load 9-13). A create that fails on that
    # timeout is tried again, CREATE_ATTEMPTS in all (each said in the output); any other
    # failure fails the test.
    for guest in guests:
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            host.ssh(f"cd {DOM0_DIR}; s=$(date +%s.%N); xl create -p {guest.name}.xl.cfg "
                     f"> {guest.name}.create 2>&1; echo $? $s $(date +%s.%N) "
                     f"> {guest.name}.created", timeout=900)
            status = host.ssh(f"cat {DOM0_DIR}/{guest.name}.created").stdout.split()
            if status[0] == "0":
                break
            out = host.ssh(f"cat {DOM0_DIR}/{guest.name}.create").stdout
            if attempt == CREATE_ATTEMPTS or LIBXL_QMP_TIMEOUT not in out:
                raise AssertionError(f"xl create {guest.name} failed: {out}")
            print(f"{guest.name}: xl create {attempt} hit libxl's QMP timeout; again:\n{out}")
        booted[guest.name].create_seconds = float(status[2]) - float(status[1])
        booted[guest.name].domid = int(host.ssh(f"xl domid {guest.name}").stdout)
    for guest in guests:
        host.ssh(f"xl unpause {guest.name}; date +%s.%N > {DOM0_DIR}/{guest.name}.unpaused")
        run = booted[guest.name]
        run.seconds = float(host.ssh(f"cat {DOM0_DIR}/{guest.name}.unpaused").stdout)
    deadline = time.monotonic() + REPORT_TIMEOUT
    waiting = {g.name for g in guests}
    while waiting and time.monotonic() < deadline:
        # one ssh command a round for all the guests: each costs dom0 TCG time
        try:
            found = host.ssh(f"cd {DOM0_DIR}; for g in {' '.join(sorted(waiting))}; do "
                             f"grep -q {END} $g/console.log && echo $g $(date +%s.%N); done",
                             check=False, timeout=120)
        except subprocess.TimeoutExpired:  # dom0 starved for a while: the deadline decides
            continue
        for line in found.stdout.splitlines():
            name, when = line.split()
            run = booted[name]
            run.seconds = float(when) - run.seconds
            run.console = host.ssh(f"cat {DOM0_DIR}/{name}/console.log").stdout
            waiting.discard(name)
        if waiting:
            time.sleep(10)
    for name, run in booted.items():
        if name in waiting:
            try:
                tail = host.ssh(f"tail -n 30 {DOM0_DIR}/{name}/console.log; xl list; "
                                "xl dmesg | tail -n 20", check=False, timeout=120).stdout
            except subprocess.TimeoutExpired:
                tail = "(dom0 did not answer ssh within 120 s)"
            # a Xen panic (the host runs with noreboot) shows on the host's serial console only
            raise AssertionError(f"{name}: no device report after {REPORT_TIMEOUT:.0f} s; "
                                 f"its console ends (then xl list, xl dmesg):\n{tail}\n"
                                 f"the Xen host's serial console ends:\n{host.tail()}")
        run.report = parse_report(run.console[run.console.rindex(BEGIN):])
        # a guest that triple-faulted under TCG was restarted (on_reboot) with a new domid
        run.domid = int(host.ssh(f"xl domid {name}").stdout)
        listing = host.ssh(
            f"for kind in vbd qdisk vif; do for devid in $(xenstore-list "
            f"/local/domain/0/backend/$kind/{run.domid} 2>/dev/null); do echo $kind $devid "
            f"$(xenstore-read /local/domain/0/backend/$kind/{run.domid}/$devid/state); "
            "done; done").stdout
        for line in listing.splitlines():
            kind, devid, state = line.split()
            run.backends[("vbd" if kind == "qdisk" else kind, int(devid))] = state
        print(f"{name}: xl create -p {run.create_seconds:.0f} s, unpause to device report "
              f"{run.seconds:.0f} s")
    return booted


@pytest.fixture(scope="module")
def guests(xen_host: XenHost, kit: Kit) -> Iterator[dict[str, Booted]]:
    """The four guests, booted at once; destroyed (and checked gone) at the end."""
    with tempfile.TemporaryDirectory(prefix="pvhvm-xenhvm-") as workdir:
        try:
            yield _run_guests(xen_host, kit, Path(workdir), asked_for())
        finally:
            names = " ".join(g.name for g in GUESTS)
            xen_host.ssh(f"for g in {names}; do xl destroy $g 2>/dev/null; done; "
                         f"rm -rf {DOM0_DIR}; xl sched-credit2 -d Domain-0 -w {DEFAULT_WEIGHT} "
                         f"|| xl sched-credit -d Domain-0 -w {DEFAULT_WEIGHT}",
                         check=False, timeout=600)
    listed = xen_host.ssh("xl list").stdout
    assert not any(g.name in listed for g in GUESTS), listed


#: the driver Linux binds to each emulated NIC model the guests use
NIC_DRIVERS = {"e1000": "e1000", "rtl8139": "8139cp"}
#: the size of each kit file a guest's disk may be, in 512-byte sectors
KIT_SECTORS = {"rootfs.ext4": ROOTFS_SECTORS, "boot.img": None}


def disk_sectors(run: Booted, target: str) -> int:
    name = Path(target).name
    for blank, mib in run.guest.blanks:
        if blank == name:
            return mib * MIB_SECTORS
    if name == "boot.img":
        assert run.report is not None
        root = run.report.root_disk()
        assert root is not None, run.console
        return root.sectors
    return ROOTFS_SECTORS


def devid(vdev: str) -> int:
    return parse_vdev(vdev).devid


def check_disks(run: Booted) -> list[str]:
    """Each exported disk as the guest and dom0 see it; a list of what is wrong."""
    wrong = []
    for disk in exported_devices(run.export, "disk"):
        vdev, kind = disk["vdev"], disk["pvhvm"].split()[1].removeprefix("type=")
        seen = run.disk(disk_sectors(run, disk["target"]))
        state = run.backend("vbd", devid(vdev))
        row = f"{run.guest.name} {disk['pvhvm']} exported as {vdev}"
        if kind == "xenbus":
            if seen != [(vdev, None)] or state != XENBUS_CONNECTED:
                wrong.append(f"{row}: want blkfront only ({vdev}, backend Connected), "
                             f"got {seen}, backend state {state}")
            continue
        want = "ata_piix" if vdev.startswith("hd") else "sym53c8xx"
        emulated = [name for name, driver in seen if driver == want]
        if disk.get("devtype") == "cdrom":
            emulated = [name for name in emulated if name.startswith("sr")]
        if len(emulated) != 1 or len(seen) != 1 or state == XENBUS_CONNECTED:
            wrong.append(f"{row}: want one disk on {want} and its PV path unused, got {seen}, "
                         f"backend state {state}")
    return wrong


def check_nics(run: Booted, platform_pci: bool) -> list[str]:
    """Each exported NIC as the guest and dom0 see it; a list of what is wrong."""
    wrong = []
    for index, vif in enumerate(exported_devices(run.export, "vif")):
        seen = sorted((n.driver or "-") for n in run.nics(vif["mac"]))
        state = run.backend("vif", index)
        row = f"{run.guest.name} vif {index} ({vif['pvhvm']}, type={vif['type']})"
        if vif["type"] == "vif":
            want = ["-"]
        else:
            want = sorted([NIC_DRIVERS[vif["model"]], *(["-"] if platform_pci else [])])
        if seen != want or (state == XENBUS_CONNECTED) != ("-" in want):
            wrong.append(f"{row}: want drivers {want}, got {seen}, backend state {state}")
    return wrong


def check_pci(run: Booted) -> list[str]:
    platform_pci = "xen_platform_pci = 1" in run.export
    scsi = any(d["vdev"].startswith("sd") for d in exported_devices(run.export, "disk")
               if "type=ioemu" in d["pvhvm"])
    wrong = []
    if run.pci(PIIX3_IDE) != ["ata_piix"]:
        wrong.append(f"{run.guest.name}: PIIX3 IDE {run.pci(PIIX3_IDE)}, want it on ata_piix")
    if run.pci(XEN_PLATFORM) != (["xen-platform-pci"] if platform_pci else []):
        wrong.append(f"{run.guest.name}: Xen platform device {run.pci(XEN_PLATFORM)} with "
                     f"xen_platform_pci={int(platform_pci)}")
    if run.pci(LSI_SCSI) != (["sym53c8xx"] if scsi else []):
        wrong.append(f"{run.guest.name}: SCSI controller {run.pci(LSI_SCSI)}, emulated sd* "
                     f"disks: {scsi}")
    return wrong


@pytest.mark.e2e
@on_xen
@hvm_guests_asked
@pytest.mark.timeout(REPORT_TIMEOUT + 2400)
@pytest.mark.parametrize("name", [g.name for g in GUESTS])
def test_each_device_is_what_its_type_says(guests: dict[str, Booted], name: str) -> None:
    if name not in guests:
        pytest.skip(f"{name} is not in PVHVM_XEN_HVM")
    run = guests[name]
    platform_pci = "xen_platform_pci = 1" in run.export
    wrong = check_pci(run) + check_disks(run) + check_nics(run, platform_pci)
    assert not wrong, "\n".join(wrong) + "\n" + run.console[run.console.rindex(BEGIN):]


@pytest.mark.e2e
@on_xen
@hvm_guests_asked
@pytest.mark.timeout(REPORT_TIMEOUT + 2400)
def test_the_pv_only_guest_roots_on_blkfront(guests: dict[str, Booted]) -> None:
    if "pv-only" not in guests:
        pytest.skip("pv-only is not in PVHVM_XEN_HVM")
    run = guests["pv-only"]
    assert run.report is not None
    root = run.report.root_disk()
    assert root is not None and root.name == "xvde" and root.driver is None, run.console
    assert not [b for b in run.report.blocks if not b.name.startswith("xvd")], run.console
    assert "xen_emul_unplug" not in run.export


@pytest.mark.e2e
@on_xen
@hvm_guests_asked
@pytest.mark.timeout(REPORT_TIMEOUT + 2400)
def test_the_mixed_guest_roots_on_its_emulated_disk(guests: dict[str, Booted]) -> None:
    if "mixed" not in guests:
        pytest.skip("mixed is not in PVHVM_XEN_HVM")
    run = guests["mixed"]
    assert run.report is not None
    root = run.report.root_disk()
    assert root is not None and root.driver == "ata_piix", run.console
    assert "xen_emul_unplug=unnecessary" in run.export


# -- the export's device layout, without a host ---------------------------------------------


def plan_of(text: str) -> Plan:
    return make_plan(config_from_text('name="g"\ntype="hvm"\n' + text, "g.cfg"), Platform.XEN,
                     check_files=False)


def test_pv_disks_move_where_xl_does_not_emulate() -> None:
    plan = plan_of('kernel="/k"\ndisk=["/a,raw,xvda,rw,type=xenbus", "/b,raw,hdb,rw,type=xenbus",'
                   ' "/c,raw,sdc,rw,type=xenbus", "/e,raw,xvde,rw,type=xenbus",'
                   ' "/n,raw,51728,rw"]')
    # xvda would be xvde, which the config uses itself; a device number is never emulated
    assert xl_vdevs(plan) == {"xvda": "xvdf", "hdb": "xvdg", "sdc": "xvdh"}
    exported = export_xl(plan)
    assert '"format=raw, vdev=xvdf, access=w, target=/a",  # pvhvm type=xenbus vdev=xvda' \
        in exported.text
    assert "vdev=51728" in exported.text and "vdev=xvde, access=w, target=/e" in exported.text
    assert any("xvda as xvdf, hdb as xvdg, sdc as xvdh" in n for n in exported.notes)
    assert any("PIIX3" in n for n in exported.notes)
    assert "xen_emul_unplug" not in exported.text  # nothing emulated: nothing to keep


def test_the_disk_seabios_boots_stays_emulated_until_unplugged() -> None:
    firmware = plan_of('boot="c"\ndisk=["/a,raw,xvda,rw,type=xenbus", "/b,raw,xvdb,rw,type=xenbus"]')
    assert xl_vdevs(firmware) == {"xvdb": "xvdf"}
    assert any("xvda: SeaBIOS boots from it" in n for n in export_xl(firmware).notes)
    ovmf = plan_of('bios="ovmf"\ndisk=["/a,raw,xvda,rw,type=xenbus"]')
    assert xl_vdevs(ovmf) == {"xvda": "xvde"}  # OVMF has a PV block driver


def test_emulated_disks_get_their_ide_names_beside_pv_devices() -> None:
    plan = plan_of('kernel="/k"\nextra="quiet"\ndisk=["/a,raw,xvda,rw", "/b,raw,sdb,rw",'
                   ' "/c,raw,xvdc,rw,type=xenbus"]\nvif=["", "type=vif"]')
    assert xl_vdevs(plan) == {"xvda": "hda", "xvdc": "xvdg"}
    exported = export_xl(plan)
    assert 'cmdline = "quiet xen_emul_unplug=unnecessary"' in exported.text
    assert "vdev=sdb" in exported.text  # emulated SCSI keeps its name: blkfront leaves sd alone
    assert any("vif(s) 0" in n and "twice" in n for n in exported.notes)


def test_firmware_booted_mixed_guest_is_told_what_to_add() -> None:
    exported = export_xl(plan_of('disk=["/a,raw,hda,rw"]\nvif=["type=vif"]'))
    assert "xen_emul_unplug" not in exported.text.split("# NOTE")[0]
    assert any("needs xen_emul_unplug=unnecessary" in n for n in exported.notes)


def test_all_emulated_and_pv_guests_keep_their_vdevs() -> None:
    emulated = plan_of('disk=["/a,raw,hda,rw"]\nvif=["type=ioemu"]')
    assert xl_vdevs(emulated) == {} and "xen_platform_pci = 0" in export_xl(emulated).text
    pv = make_plan(config_from_text('name="g"\nkernel="/k"\ndisk=["/a,raw,xvda,rw"]', "g.cfg"),
                   Platform.XEN, check_files=False)
    assert xl_vdevs(pv) == {}
