"""The QEMU command line of a Plan: a pure function of the plan and the domain's run paths.

Facts it relies on (QEMU 7.2):

* machine ``pc`` (i440fx) always has piix3-ide at 00:01.1; ``q35,sata=off,smbus=off`` with
  ``-nodefaults`` has no IDE (class 0x0101) and no SATA (0x0106) function. So a plan that needs
  the IDE controller gets ``pc``, and a plan with no emulated disk gets that q35.
* ioemu disks are ``ide-hd``/``ide-cd`` on ``ide.<channel>`` unit ``<unit>`` (hda..hdd);
  emulated sd* disks are ``scsi-hd`` on an ``lsi53c895a`` (``scsi0``, the controller
  ``if=scsi`` makes, as libxl_dm.c asks for it) at ``scsi-id`` = the disk's index;
  xenbus disks are ``virtio-blk-pci``; NICs are ``rtl8139``/``e1000``/``ne2k_pci`` or
  ``virtio-net-pci``.
* firmware boot order is ``bootindex`` on the devices; direct boot uses ``-kernel``.
* memory is ``-m`` of the static maximum (maxmem) with a ``virtio-balloon-pci`` whose target
  is ``memory``; vCPUs are ``-smp VCPUS,maxcpus=MAXVCPUS`` (hot-pluggable CPU objects).
* a NIC on a bridge this host has is ``-netdev bridge`` (QEMU's bridge helper), else
  ``-netdev user`` with the vif's ``hostfwd=`` forwards, each rebuilt from its typed fields;
  a forward on a bridge is refused (:func:`hostfwd_problems`);
* every option string is made by qemu.opts.option_string (QemuOpts: ``,,`` in a value), and
  every value in it comes from the typed plan (issue 18);
* a ``file`` chardev truncates what is there unless ``append=on`` (seen with QEMU 7.2), so
  file ports append; a listening socket's path is unlinked first, so the planner refuses a
  ``unix:`` port at anything but a dead socket (plan._check_port_path).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pvhvm.config.disk import network_url
from pvhvm.config.values import (
    MAX_VNC_DISPLAY,
    Chardev,
    ChardevKind,
    parse_chardev,
    parse_vnc_listen,
)
from pvhvm.errors import PlanError, SpecError
from pvhvm.plan.plan import OVMF_PATH, SCSI_CONTROLLER, DiskPlan, Display, Plan, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.qemu.netdisk import available_drivers, drive_options, driver_of
from pvhvm.qemu.opts import OptionPair, initrd_value, option_string

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
BALLOON_DEVICE = option_string([("id", "balloon0")], head="virtio-balloon-pci")
#: the emulated SCSI controller's id; its bus is ``scsi0.0``
SCSI_ID = "scsi0"


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
    machine_options: list[OptionPair] = []
    if not plan.acpi:
        machine_options.append(("acpi", False))
    if not plan.hpet:
        machine_options.append(("hpet", False))
    machine = IDE_MACHINE if plan.ide_controller else NO_IDE_MACHINE
    if machine_options:
        machine += "," + option_string(machine_options)
    # the guest boots with its static maximum (maxmem) and the balloon gives back all but
    # ``memory`` once its driver loads, as xl's populate-on-demand does (runtime/resize.py)
    memory = f"{plan.boot_memory_mib}M"
    smp_options: list[OptionPair] = []
    if plan.maxvcpus is not None:
        smp_options.append(("maxcpus", plan.maxvcpus))
    argv = [
        options.qemu_binary,
        "-name", option_string([("guest", plan.name), ("debug-threads", True)]),
        "-uuid", plan.uuid,
        "-nodefaults", "-no-user-config",
        "-machine", machine,
        "-accel", options.accel.value,
        "-cpu", "host" if options.accel is Accel.KVM else "max",
        "-m", memory,
        "-smp", option_string(smp_options, head=str(plan.vcpus)),
        "-display", "none",
        "-chardev", _listening_socket("qmp", str(paths.qmp_socket)),
        "-mon", option_string([("chardev", "qmp"), ("mode", "control")]),
        "-chardev", _listening_socket("ctl", str(paths.control_socket)),
        "-mon", option_string([("chardev", "ctl"), ("mode", "control")]),
        "-device", option_string([], head="pvpanic"),
        "-device", BALLOON_DEVICE,
    ]
    if plan.bios == "ovmf":
        argv += ["-bios", OVMF_PATH]
    argv += _serial(plan, paths)
    for index, spec in enumerate(plan.more_serials, start=1):
        argv += _chardev_port(_chardev(spec, "serial"), f"serial{index}", "-serial")
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
            argv += ["-initrd", initrd_value(plan.ramdisk)]
        if plan.cmdline:
            argv += ["-append", plan.cmdline]
    argv += _bridges(plan)
    argv += hotplug_ports(plan)
    if plan.scsi_controller:
        argv += ["-device", option_string([("id", SCSI_ID)], head=SCSI_CONTROLLER)]
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
        return ["-rtc", option_string([("base", "localtime")])] if plan.localtime else []
    start = (time.time() if options.now is None else options.now) + plan.rtc_timeoffset
    clock = time.localtime(start) if plan.localtime else time.gmtime(start)
    return ["-rtc", option_string([("base", time.strftime("%Y-%m-%dT%H:%M:%S", clock))])]


#: xl.cfg(5)'s vga= cards as QEMU devices (qxl: the primary, VGA-compatible QXL, as libxl's
#: ``-vga qxl``; shown by VNC or SPICE alike)
_VGA_DEVICES = {"std": "VGA", "cirrus": "cirrus-vga", "qxl": "qxl-vga"}
#: the id of the display's password secret (vncpasswd/spicepasswd, from a 0600 file)
DISPLAY_SECRET = "vncpass0"
#: vncunused tries this many displays after vncdisplay
VNC_UNUSED_RANGE = 99


def _display(display: Display, secret: Path | None) -> list[str]:
    """The graphics card and the VNC server (vnc, vnclisten, vncdisplay, vncunused,
    vncpasswd, keymap of xl.cfg(5))."""
    argv = ["-device", option_string([], head=_VGA_DEVICES[display.vga])]
    if display.password and (display.vnc or display.spice is not None):
        source: OptionPair = (("data", display.password) if secret is None
                              else ("file", str(secret)))
        argv += ["-object", option_string([("id", DISPLAY_SECRET), source], head="secret")]
    if display.spice is not None:
        argv += _spice(display)
    if not display.vnc:
        return argv
    # the plan's listen is a checked host (config.values.parse_vnc_listen); checked again
    # here, as it is the head of -vnc
    listen, given_display = _vnc_listen(display.listen)
    if given_display is not None:
        raise PlanError(f"vnc listen address {display.listen!r} holds a display number")
    if ":" in listen:
        listen = f"[{listen}]"  # an IPv6 address
    vnc_options: list[OptionPair] = []
    if display.unused:
        # xl's vncunused: the first free display of the hundred from vncdisplay on (QEMU
        # fails outright when to= is below the display)
        vnc_options.append(("to", min(display.display + VNC_UNUSED_RANGE, MAX_VNC_DISPLAY)))
    if display.password:
        vnc_options.append(("password-secret", DISPLAY_SECRET))
    argv += ["-vnc", option_string(vnc_options, head=f"{listen}:{display.display}")]
    if display.keymap:
        argv += ["-k", display.keymap]
    return argv


def _spice(display: Display) -> list[str]:
    """spice = 1 (xl.cfg(5): spicehost, spiceport, spicedisable_ticketing,
    spiceagent_mouse): QEMU's SPICE server for the guest's card."""
    spice = display.spice
    assert spice is not None and spice.port is not None
    options: list[OptionPair] = [("port", spice.port), ("addr", spice.host)]
    if display.password:
        options.append(("password-secret", DISPLAY_SECRET))
    else:
        options.append(("disable-ticketing", spice.disable_ticketing))
    options.append(("agent-mouse", spice.agent_mouse))
    return ["-spice", option_string(options)]


def _vnc_listen(listen: str) -> tuple[str, int | None]:
    try:
        return parse_vnc_listen(listen)
    except SpecError as err:
        raise PlanError(str(err)) from err


def _usb(plan: Plan) -> list[str]:
    """usb=1 and usbdevice= (tablet, mouse, keyboard): an emulated USB controller."""
    if not plan.usb and not plan.usbdevices:
        return []
    argv = ["-usb"]
    for device in plan.usbdevices:
        argv += ["-device", option_string([], head=_USB_DEVICES[device])]
    return argv


_USB_DEVICES = {"keyboard": "usb-kbd", "mouse": "usb-mouse", "tablet": "usb-tablet"}


_SOUND_DEVICES = {"hda": ["intel-hda", "hda-duplex"], "ac97": ["AC97"], "sb16": ["sb16"],
                  "es1370": ["ES1370"]}


def _sound(plan: Plan) -> list[str]:
    """soundhw=: the cards, with no host audio behind them (the guest sees the card)."""
    if not plan.soundhw:
        return []
    argv = ["-audiodev", option_string([("id", "audio0")], head="none")]
    for card in plan.soundhw:
        *controllers, codec = _SOUND_DEVICES[card]
        for controller in controllers:
            argv += ["-device", option_string([], head=controller)]
        argv += ["-device", option_string([("audiodev", "audio0")], head=codec)]
    return argv


def _parallel(plan: Plan) -> list[str]:
    """parallel= as xl.cfg(5) (xl passes it to QEMU): pty, null, file:PATH, unix:PATH."""
    if plan.parallel is None:
        return []
    return _chardev_port(_chardev(plan.parallel, "parallel"), "parallel0", "-parallel")


def _chardev(spec: str, key: str) -> Chardev:
    """The plan's port ``spec`` in its typed form (config.values.parse_chardev)."""
    try:
        return parse_chardev(spec, key)
    except SpecError as err:
        raise PlanError(str(err)) from err


def _listening_socket(chardev_id: str, path: str, *more: OptionPair) -> str:
    """A ``-chardev socket`` QEMU listens on at ``path`` without waiting for a client."""
    return option_string([("id", chardev_id), ("path", path), ("server", True),
                          ("wait", False), *more], head="socket")


def _chardev_value(chardev: Chardev, chardev_id: str, *log: OptionPair) -> str | None:
    """The ``-chardev`` value of ``chardev`` (None for ``none``). A ``file:`` is opened
    with ``append=on``: QEMU would otherwise truncate a file that is already there."""
    if chardev.kind is ChardevKind.NONE:
        return None
    if chardev.kind in (ChardevKind.PTY, ChardevKind.NULL):
        return option_string([("id", chardev_id), *log], head=chardev.kind.value)
    if chardev.kind is ChardevKind.FILE:
        assert chardev.path is not None
        return option_string([("id", chardev_id), ("path", chardev.path), ("append", True)],
                             head="file")
    if chardev.kind is ChardevKind.UNIX:
        assert chardev.path is not None
        return _listening_socket(chardev_id, chardev.path, *log)
    assert chardev.host is not None and chardev.port is not None
    if chardev.kind is ChardevKind.UDP:
        local: list[OptionPair] = []
        if chardev.local_host:
            local.append(("localaddr", chardev.local_host))
        if chardev.local_port is not None:
            local.append(("localport", chardev.local_port))
        return option_string([("id", chardev_id), ("host", chardev.host),
                              ("port", chardev.port), *local, *log], head="udp")
    telnet: list[OptionPair] = [("telnet", True)] if chardev.kind is ChardevKind.TELNET else []
    return option_string([("id", chardev_id), ("host", chardev.host), ("port", chardev.port),
                          ("server", True), ("wait", False), *telnet, *log], head="socket")


def _chardev_port(chardev: Chardev, chardev_id: str, option: str,
                  *log: OptionPair) -> list[str]:
    """A serial or parallel port on ``chardev``: ``-chardev`` and ``-serial``/``-parallel``."""
    value = _chardev_value(chardev, chardev_id, *log)
    if value is None:
        return []
    return ["-chardev", value, option, f"chardev:{chardev_id}"]


def _serial(plan: Plan, paths: RunPaths) -> list[str]:
    """``serial=`` as xl knows it: ``pty``, ``null``, ``file:PATH``, ``unix:PATH``,
    ``tcp:HOST:PORT``, ``telnet:HOST:PORT``, ``udp:HOST:PORT[@LOCAL:PORT]``.

    Without a serial= line the console is a Unix socket (for ``pvhvm console``); every form
    but ``file:`` also logs to the domain's console.log.
    """
    log: tuple[OptionPair, ...] = (("logfile", str(paths.console_log)), ("logappend", True))
    if plan.serial is None or plan.serial == "":
        return _chardev_port(Chardev(ChardevKind.UNIX, path=str(paths.console_socket)),
                             "serial0", "-serial", *log)
    chardev = _chardev(plan.serial, "serial")
    return _chardev_port(chardev, "serial0", "-serial",
                         *(() if chardev.kind is ChardevKind.FILE else log))


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
        argv += ["-device", option_string([("id", f"pvbridge{n}"), ("chassis_nr", n)],
                                          head="pci-bridge")]
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
        argv += ["-device", option_string([("id", port), ("chassis", HOTPLUG_CHASSIS + n),
                                           ("slot", 0)], head="pcie-root-port")]
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
    drive: list[OptionPair] = [("id", drive_id), ("if", "none")]
    if disk.is_empty:
        drive.append(("media", "cdrom"))
    elif url is not None:  # served over the network by QEMU's own block driver
        drive += drive_options(url, format=disk.format, drivers=available_drivers(
            [driver_of(url)]), read_only=disk.cdrom or not disk.access.writable)
        if disk.cdrom:
            drive.append(("media", "cdrom"))
    else:
        cache, aio = tuning.cache, tuning.aio
        if disk.target in options.no_direct_io and cache in ("none", "directsync"):
            cache, aio = "writeback", "threads"
        if aio == "native" and cache not in ("none", "directsync"):
            aio = "threads"  # QEMU refuses aio=native without O_DIRECT
        drive += [
            ("file", disk.target),
            ("format", QEMU_FORMATS[disk.format]),
            ("cache", cache),
            ("aio", aio),
        ]
        if disk.cdrom:
            drive.append(("media", "cdrom"))
        if not disk.access.writable or disk.cdrom:
            drive.append(("readonly", True))
        if disk.access.value == "w!":
            drive.append(("file.locking", False))
    return option_string(drive)


def _disk(
    disk: DiskPlan, plan: Plan, options: ArgvOptions, iothread_index: int, bus: str | None
) -> tuple[list[str], int]:
    drive_id = f"disk-{disk.vdev}"
    emulated = disk.kind is DeviceKind.IOEMU
    tuning = options.ide_tuning if emulated else options.pv_tuning
    argv = ["-drive", drive_value(disk, options)]
    boot: list[OptionPair] = [] if disk.bootindex is None else [("bootindex", disk.bootindex)]
    if emulated and disk.scsi_unit is not None:
        argv += ["-device", option_string([("drive", drive_id), ("bus", f"{SCSI_ID}.0"),
                                           ("scsi-id", disk.scsi_unit), ("lun", 0), *boot],
                                          head="scsi-hd")]
        return argv, 0
    if emulated:
        assert disk.ide_place is not None
        channel, unit = disk.ide_place
        kind = "ide-cd" if disk.cdrom else "ide-hd"
        argv += ["-device", option_string([("drive", drive_id), ("bus", f"ide.{channel}"),
                                           ("unit", unit), *boot], head=kind)]
        return argv, 0
    queues = tuning.num_queues or plan.vcpus
    device: list[OptionPair] = [
        ("drive", drive_id), ("id", f"vbd-{disk.devid}"), ("num-queues", queues),
        ("queue-size", tuning.queue_size),
    ]
    if bus is not None:
        device.append(("bus", bus))
    if tuning.iothread:
        iothread = f"iothread{iothread_index}"
        argv = ["-object", option_string([("id", iothread)], head="iothread"), *argv]
        device.append(("iothread", iothread))
    argv += ["-device", option_string([*device, *boot], head="virtio-blk-pci")]
    return argv, 1 if tuning.iothread else 0


def hostfwd_problems(vifs: Iterable[VifPlan], bridges: frozenset[str]) -> list[str]:
    """One line per vif whose hostfwd= cannot be realised here: it names no bridge, so it is
    on Xen's default one, and that bridge exists on this host (no user networking)."""
    return [
        f"vif {v.devid}: hostfwd= forwards ports of QEMU user networking, but this vif names "
        f"no bridge and so is on {v.bridge!r} (Xen's default), which this host has; give the "
        "vif bridge= of its own and reach the guest at its address, or drop hostfwd="
        for v in vifs if v.hostfwd and v.bridge in bridges
    ]


def _nic(vif: VifPlan, options: ArgvOptions) -> list[str]:
    """The NIC's ``-netdev`` (its bridge when this host has it, else user networking with
    the vif's port forwards) and ``-device``."""
    netdev_id = f"net{vif.devid}"
    if vif.bridge in options.bridges:
        problems = hostfwd_problems([vif], options.bridges)
        if problems:
            raise PlanError(problems[0])
        netdev = option_string([("id", netdev_id), ("br", vif.bridge)], head="bridge")
    else:
        # each forward rebuilt from its typed fields (config.vif.HostForward), and escaped
        netdev = option_string([("id", netdev_id),
                                *(("hostfwd", str(f)) for f in vif.hostfwd)], head="user")
    model = "virtio-net-pci" if vif.kind is DeviceKind.XENBUS else vif.model
    assert model is not None
    device: list[OptionPair] = [("netdev", netdev_id), ("mac", vif.mac),
                                ("id", f"vif-{vif.devid}")]
    if vif.bootindex is not None:
        device.append(("bootindex", vif.bootindex))
    if vif.mtu is not None and vif.kind is DeviceKind.XENBUS:
        device.append(("host_mtu", vif.mtu))  # virtio-net tells the guest the MTU
    if vif.bootindex is None:
        device.append(("romfile", ""))  # no iPXE option ROM unless the firmware boots it
    return ["-netdev", netdev, "-device", option_string(device, head=model)]
