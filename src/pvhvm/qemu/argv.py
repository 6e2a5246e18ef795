"""The QEMU command line of a Plan: a pure function of the plan and the domain's run paths.

Facts it relies on (QEMU 7.2):

* machine ``pc`` (i440fx) always has piix3-ide at 00:01.1; ``q35,sata=off,smbus=off`` with
  ``-nodefaults`` has no IDE (class 0x0101) and no SATA (0x0106) function. So a plan that needs
  the IDE controller gets ``pc``, and a plan with no emulated disk gets that q35.
* ioemu disks are ``ide-hd``/``ide-cd`` on ``ide.<channel>`` unit ``<unit>`` (hda..hdd);
  xenbus disks are ``virtio-blk-pci``; NICs are ``rtl8139``/``e1000``/``ne2k_pci`` or
  ``virtio-net-pci``.
* firmware boot order is ``bootindex`` on the devices; direct boot uses ``-kernel``.
* memory is ``-m`` of the static maximum (maxmem) with a ``virtio-balloon-pci`` whose target
  is ``memory``; vCPUs are ``-smp VCPUS,maxcpus=MAXVCPUS`` (hot-pluggable CPU objects).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pvhvm.config.disk import network_url
from pvhvm.errors import PlanError
from pvhvm.plan.plan import OVMF_PATH, DiskPlan, Display, Plan, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.qemu.netdisk import available_drivers, drive_options, driver_of

#: ``format=`` names of xl → QEMU block drivers
QEMU_FORMATS = {"raw": "raw", "qcow": "qcow", "qcow2": "qcow2", "vhd": "vpc", "qed": "qed"}
NO_IDE_MACHINE = "q35,sata=off,smbus=off"
#: PCI devices pvhvm puts on the root bus before PV disks move behind PCI bridges (the
#: root bus has 32 slots; the host bridge, ISA bridge and IDE function take some)
ROOT_BUS_BUDGET = 24
#: on_reboot actions QEMU carries out itself by resetting the guest in place
RESET_IN_PLACE = ("restart", "rename-restart", "coredump-restart", "soft-reset")
#: PV disks per pci-bridge (a bridge has 32 slots)
BRIDGE_SLOTS = 31
IDE_MACHINE = "pc"
#: every domain's memory balloon (virtio, on the root bus): mem-set moves its target, as
#: xl's mem-set moves a Xen guest's balloon (runtime/resize.py)
BALLOON_DEVICE = "virtio-balloon-pci,id=balloon0"


class Accel(Enum):
    """The accelerator QEMU runs the guest with."""

    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class DiskTuning:
    """Block settings. PV disk defaults are the winners of ``pvhvm bench io`` on this host
    class (see benchmarks/README.md); emulated IDE disks keep QEMU's defaults."""

    cache: str = "none"
    aio: str = "native"
    #: virtio-blk queues; 0 means one per vCPU
    num_queues: int = 0
    queue_size: int = 256
    iothread: bool = False


#: cache=none, aio=native, one queue per vCPU and an iothread per disk: in `pvhvm bench io`
#: (benchmarks/README.md) the iothread setup beat the same without one by 2.2x and 2.7x on
#: 4 KiB QD32 random read/write (TCG, 2 cores), well outside the 0.96-1.26x of a rerun.
PV_DISK_TUNING = DiskTuning(iothread=True)
IDE_DISK_TUNING = DiskTuning(cache="writeback", aio="threads")


@dataclass(frozen=True)
class RunPaths:
    """Where a running domain's sockets and console log are (the argv's only other input)."""

    qmp_socket: Path
    control_socket: Path
    console_socket: Path
    console_log: Path
    #: a file (mode 0600) holding the vncpasswd, so the password is not on QEMU's command
    #: line; None: the password goes in the argv (callers that start no QEMU)
    vnc_secret: Path | None = None


@dataclass(frozen=True)
class ArgvOptions:
    """Choices made at realise time rather than in the plan."""

    accel: Accel = Accel.TCG
    qemu_binary: str = "qemu-system-x86_64"
    #: bridges that exist on this host; a NIC on any other bridge gets user networking
    bridges: frozenset[str] = frozenset()
    #: targets that cannot be opened with O_DIRECT (tmpfs): their PV disks use cache=writeback
    no_direct_io: frozenset[str] = frozenset()
    pv_tuning: DiskTuning = PV_DISK_TUNING
    ide_tuning: DiskTuning = IDE_DISK_TUNING
    #: a supervisor decides what guest poweroff and panic lead to (on_poweroff, on_crash)
    supervised: bool = True
    start_paused: bool = False
    extra: tuple[str, ...] = field(default_factory=tuple)
    #: seconds since the epoch that rtc_timeoffset counts from (None: now)
    now: float | None = None


def qemu_argv(plan: Plan, paths: RunPaths, options: ArgvOptions = ArgvOptions()) -> list[str]:
    """The full argv (a list, never a shell string) that realises ``plan`` on QEMU."""
    machine = IDE_MACHINE if plan.ide_controller else NO_IDE_MACHINE
    if not plan.acpi:
        machine += ",acpi=off"
    if not plan.hpet:
        machine += ",hpet=off"
    # the guest boots with its static maximum (maxmem) and the balloon gives back all but
    # ``memory`` once its driver loads, as xl's populate-on-demand does (runtime/resize.py)
    memory = f"{plan.boot_memory_mib}M"
    smp = str(plan.vcpus)
    if plan.maxvcpus is not None:
        smp += f",maxcpus={plan.maxvcpus}"
    argv = [
        options.qemu_binary,
        "-name", f"guest={plan.name},debug-threads=on",
        "-uuid", plan.uuid,
        "-nodefaults", "-no-user-config",
        "-machine", machine,
        "-accel", options.accel.value,
        "-cpu", "host" if options.accel is Accel.KVM else "max",
        "-m", memory,
        "-smp", smp,
        "-display", "none",
        "-chardev", f"socket,id=qmp,path={paths.qmp_socket},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=ctl,path={paths.control_socket},server=on,wait=off",
        "-mon", "chardev=ctl,mode=control",
        "-device", "pvpanic",
        "-device", BALLOON_DEVICE,
    ]
    if plan.bios == "ovmf":
        argv += ["-bios", OVMF_PATH]
    argv += _serial(plan, paths)
    for index, spec in enumerate(plan.more_serials, start=1):
        argv += _chardev_port(spec, f"serial{index}", "serial", "-serial")
    argv += _parallel(plan)
    argv += _rtc(plan, options)
    if plan.display is not None:
        argv += _display(plan.display, paths.vnc_secret)
    argv += _usb(plan)
    argv += _sound(plan)
    if plan.on_reboot not in RESET_IN_PLACE:
        # a guest reboot then stops QEMU (SHUTDOWN guest-reset) and the supervisor applies
        # on_reboot; otherwise QEMU resets the guest in place, which is what restart means
        argv += ["-no-reboot"]
    if plan.direct_kernel_boot:
        assert plan.kernel is not None
        argv += ["-kernel", plan.kernel]
        if plan.ramdisk:
            argv += ["-initrd", plan.ramdisk]
        if plan.cmdline:
            argv += ["-append", plan.cmdline]
    argv += _bridges(plan)
    argv += hotplug_ports(plan)
    iothreads = 0
    pv_index = 0
    for disk in plan.disks:
        bus = None
        if disk.kind is DeviceKind.XENBUS and _needs_bridges(plan):
            bus = f"pvbridge{pv_index // BRIDGE_SLOTS + 1}"
            pv_index += 1
        disk_argv, uses_iothread = _disk(disk, plan, options, iothreads, bus)
        argv += disk_argv
        iothreads += uses_iothread
    for vif in plan.vifs:
        argv += _nic(vif, options)
    if options.supervised:
        argv += ["-no-shutdown", "-action", "panic=pause"]
    if options.start_paused:
        argv += ["-S"]
    argv += list(options.extra)
    return argv


def ignored_settings(plan: Plan) -> list[str]:
    """Config settings the qemu platform does not realise (said, never silently dropped)."""
    out = []
    if plan.sdl:
        out.append("sdl ignored: the qemu platform opens no window on the host; use vnc=1 "
                   "for a graphical console, pvhvm console for the serial one")
    if not plan.apic or not plan.pae:
        out.append("apic=0/pae=0 ignored: the qemu platform always gives the guest a local "
                   "APIC and PAE")
    if plan.device_model is not None:
        out.append(f"device_model={plan.device_model!r} ignored: the qemu platform runs "
                   "qemu-system-x86_64")
    return out


def _rtc(plan: Plan, options: ArgvOptions) -> list[str]:
    """localtime and rtc_timeoffset (seconds): QEMU takes the clock's start, not an offset."""
    if not plan.rtc_timeoffset:
        return ["-rtc", "base=localtime"] if plan.localtime else []
    start = (time.time() if options.now is None else options.now) + plan.rtc_timeoffset
    clock = time.localtime(start) if plan.localtime else time.gmtime(start)
    return ["-rtc", "base=" + time.strftime("%Y-%m-%dT%H:%M:%S", clock)]


_VGA_DEVICES = {"std": "VGA", "cirrus": "cirrus-vga"}


def _display(display: Display, secret: Path | None) -> list[str]:
    """The graphics card and the VNC server (vnc, vnclisten, vncdisplay, vncunused,
    vncpasswd, keymap of xl.cfg(5))."""
    argv = ["-device", _VGA_DEVICES[display.vga]]
    if not display.vnc:
        return argv
    listen = display.listen
    if ":" in listen and not listen.startswith("["):
        listen = f"[{listen}]"  # an IPv6 address
    vnc = f"{listen}:{display.display}"
    if display.unused:
        vnc += ",to=99"  # xl's vncunused: the first free display from vncdisplay on
    if display.password:
        source = (f"data={_escape(display.password)}" if secret is None
                  else f"file={_escape(str(secret))}")
        argv += ["-object", f"secret,id=vncpass0,{source}"]
        vnc += ",password-secret=vncpass0"
    argv += ["-vnc", vnc]
    if display.keymap:
        argv += ["-k", display.keymap]
    return argv


def _usb(plan: Plan) -> list[str]:
    """usb=1 and usbdevice= (tablet, mouse, keyboard): an emulated USB controller."""
    if not plan.usb and not plan.usbdevices:
        return []
    argv = ["-usb"]
    for device in plan.usbdevices:
        argv += ["-device", f"usb-{'kbd' if device == 'keyboard' else device}"]
    return argv


_SOUND_DEVICES = {"hda": ["intel-hda", "hda-duplex"], "ac97": ["AC97"], "sb16": ["sb16"],
                  "es1370": ["ES1370"]}


def _sound(plan: Plan) -> list[str]:
    """soundhw=: the cards, with no host audio behind them (the guest sees the card)."""
    if not plan.soundhw:
        return []
    argv = ["-audiodev", "none,id=audio0"]
    for card in plan.soundhw:
        *controllers, codec = _SOUND_DEVICES[card]
        for controller in controllers:
            argv += ["-device", controller]
        argv += ["-device", f"{codec},audiodev=audio0"]
    return argv


def _parallel(plan: Plan) -> list[str]:
    """parallel= as xl.cfg(5) (xl passes it to QEMU): pty, file:PATH, unix:PATH."""
    if plan.parallel is None:
        return []
    return _chardev_port(plan.parallel, "parallel0", "parallel", "-parallel")


def _chardev_port(spec: str, chardev_id: str, key: str, option: str) -> list[str]:
    """A port other than the console: ``pty``, ``file:PATH``, ``unix:PATH`` or ``none``."""
    if spec == "none":
        return []
    if spec == "pty":
        chardev = f"pty,id={chardev_id}"
    elif spec.startswith("file:") and spec[5:]:
        chardev = f"file,id={chardev_id},path={_escape(spec[5:])}"
    elif spec.startswith("unix:") and spec[5:]:
        chardev = f"socket,id={chardev_id},path={_escape(spec[5:])},server=on,wait=off"
    else:
        raise PlanError(f"{key} = {spec!r} is not supported (use pty, file:PATH, "
                        "unix:PATH or none)")
    return ["-chardev", chardev, option, f"chardev:{chardev_id}"]


def _serial(plan: Plan, paths: RunPaths) -> list[str]:
    """``serial=`` as xl knows it: ``pty``, ``file:PATH``, ``unix:PATH``, ``tcp:HOST:PORT``.

    Without a serial= line the console is a Unix socket (for ``pvhvm console``); every form
    also logs to the domain's console.log.
    """
    log = f"logfile={paths.console_log},logappend=off"
    spec = plan.serial
    if spec == "none":
        return []  # xl: no serial port at all
    if spec is None or spec == "":
        chardev = f"socket,id=serial0,path={paths.console_socket},server=on,wait=off,{log}"
    elif spec == "pty":
        chardev = f"pty,id=serial0,{log}"
    elif spec.startswith("file:") and spec[5:]:
        chardev = f"file,id=serial0,path={_escape(spec[5:])}"
    elif spec.startswith("unix:") and spec[5:]:
        path = _escape(spec[5:].split(",")[0])
        chardev = f"socket,id=serial0,path={path},server=on,wait=off,{log}"
    elif spec.startswith("tcp:"):
        host, _, port = spec[4:].split(",")[0].rpartition(":")
        if not port.isdigit():
            raise PlanError(f"serial = {spec!r}: tcp needs HOST:PORT")
        host = host or "127.0.0.1"
        chardev = f"socket,id=serial0,host={host},port={port},server=on,wait=off,{log}"
    else:
        raise PlanError(
            f"serial = {spec!r} is not supported (use pty, file:PATH, unix:PATH or tcp:HOST:PORT)"
        )
    return ["-chardev", chardev, "-serial", "chardev:serial0"]


def _pv_disk_count(plan: Plan) -> int:
    return sum(1 for d in plan.disks if d.kind is DeviceKind.XENBUS)


def _needs_bridges(plan: Plan) -> bool:
    """Whether the PV disks must go behind PCI bridges (more PCI devices than root slots)."""
    return _pv_disk_count(plan) + len(plan.vifs) > ROOT_BUS_BUDGET


def _bridges(plan: Plan) -> list[str]:
    """``pci-bridge`` devices for PV disks when the root bus cannot hold them all."""
    if not _needs_bridges(plan):
        return []
    count = -(-_pv_disk_count(plan) // BRIDGE_SLOTS)
    argv: list[str] = []
    for n in range(1, count + 1):
        argv += ["-device", f"pci-bridge,id=pvbridge{n},chassis_nr={n}"]
    return argv


#: ids of the empty hot-pluggable slots: ``hotplug1``..``hotplugN``
HOTPLUG_PORT = "hotplug"
#: chassis numbers of those root ports start here (each port needs a unique chassis/slot)
HOTPLUG_CHASSIS = 100


def hotplug_port_ids(plan: Plan) -> list[str]:
    """The pcie-root-ports reserved for hotplug on q35; none on pc, whose root bus is
    hot-pluggable itself (QEMU docs/pcie.txt: pcie.0 is not)."""
    if plan.ide_controller:
        return []
    return [f"{HOTPLUG_PORT}{n}" for n in range(1, plan.hotplug_slots + 1)]


def hotplug_ports(plan: Plan) -> list[str]:
    argv: list[str] = []
    for n, port in enumerate(hotplug_port_ids(plan)):
        argv += ["-device", f"pcie-root-port,id={port},chassis={HOTPLUG_CHASSIS + n},slot=0"]
    return argv


def drive_value(disk: DiskPlan, options: ArgvOptions = ArgvOptions()) -> str:
    """The ``-drive`` value of ``disk`` (its block backend is ``disk-<vdev>``)."""
    drive_id = f"disk-{disk.vdev}"
    tuning = options.ide_tuning if disk.kind is DeviceKind.IOEMU else options.pv_tuning
    url = network_url(disk.target, disk.script)
    if disk.script is not None and url is None:
        raise PlanError(
            f"disk {disk.vdev!r}: script-backed targets ({disk.script}) need Xen's hotplug "
            "scripts; the qemu platform can use files, block devices and the network targets "
            "QEMU has drivers for (nbd://, rbd:, iscsi://, http(s)://, ...)"
        )
    drive = [f"id={drive_id}", "if=none"]
    if disk.is_empty:
        drive.append("media=cdrom")
    elif url is not None:  # served over the network by QEMU's own block driver
        drive += drive_options(url, format=disk.format, drivers=available_drivers(
            [driver_of(url)]), read_only=disk.cdrom or not disk.access.writable)
        if disk.cdrom:
            drive.append("media=cdrom")
    else:
        cache, aio = tuning.cache, tuning.aio
        if disk.target in options.no_direct_io and cache in ("none", "directsync"):
            cache, aio = "writeback", "threads"
        if aio == "native" and cache not in ("none", "directsync"):
            aio = "threads"  # QEMU refuses aio=native without O_DIRECT
        drive += [
            f"file={_escape(disk.target)}",
            f"format={QEMU_FORMATS[disk.format]}",
            f"cache={cache}",
            f"aio={aio}",
        ]
        if disk.cdrom:
            drive.append("media=cdrom")
        if not disk.access.writable or disk.cdrom:
            drive.append("readonly=on")
        if disk.access.value == "w!":
            drive.append("file.locking=off")
    return ",".join(drive)


def _disk(
    disk: DiskPlan, plan: Plan, options: ArgvOptions, iothread_index: int, bus: str | None
) -> tuple[list[str], int]:
    drive_id = f"disk-{disk.vdev}"
    emulated = disk.kind is DeviceKind.IOEMU
    tuning = options.ide_tuning if emulated else options.pv_tuning
    argv = ["-drive", drive_value(disk, options)]
    boot = "" if disk.bootindex is None else f",bootindex={disk.bootindex}"
    if emulated:
        assert disk.ide_place is not None
        channel, unit = disk.ide_place
        kind = "ide-cd" if disk.cdrom else "ide-hd"
        argv += ["-device", f"{kind},drive={drive_id},bus=ide.{channel},unit={unit}{boot}"]
        return argv, 0
    queues = tuning.num_queues or plan.vcpus
    device = (
        f"virtio-blk-pci,drive={drive_id},id=vbd-{disk.devid},num-queues={queues},"
        f"queue-size={tuning.queue_size}"
    )
    if bus is not None:
        device += f",bus={bus}"
    if tuning.iothread:
        argv = ["-object", f"iothread,id=iothread{iothread_index}", *argv]
        device += f",iothread=iothread{iothread_index}"
    argv += ["-device", device + boot]
    return argv, 1 if tuning.iothread else 0


def _nic(vif: VifPlan, options: ArgvOptions) -> list[str]:
    netdev_id = f"net{vif.devid}"
    if vif.bridge in options.bridges:
        netdev = f"bridge,id={netdev_id},br={vif.bridge}"
    else:
        netdev = f"user,id={netdev_id}"
    model = "virtio-net-pci" if vif.kind is DeviceKind.XENBUS else vif.model
    boot = "" if vif.bootindex is None else f",bootindex={vif.bootindex}"
    device = f"{model},netdev={netdev_id},mac={vif.mac},id=vif-{vif.devid}{boot}"
    if vif.mtu is not None and vif.kind is DeviceKind.XENBUS:
        device += f",host_mtu={vif.mtu}"  # virtio-net tells the guest the MTU
    if vif.bootindex is None:
        device += ",romfile="  # no iPXE option ROM unless the firmware boots from this NIC
    return ["-netdev", netdev, "-device", device]


def _escape(value: str) -> str:
    """QEMU option values double a comma to mean a literal comma."""
    return value.replace(",", ",,")
