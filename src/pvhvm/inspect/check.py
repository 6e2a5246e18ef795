"""``check_guest(plan, report)``: will this installed guest boot with this plan?

For the planned root disk and NICs (docs: SPEC.md "Moving an installed Linux guest to PV
disks", virt-v2v's convert_linux):

* drivers: the root disk's driver must be in the kernel or its initramfs before the root
  filesystem is mounted: virtio_pci + virtio_blk for a PV disk on qemu (virtio-blk-pci),
  xen-blkfront on xen, ata_piix (or ata_generic) + sd_mod for emulated IDE (libata). A NIC's
  driver (virtio_net, xen-netfront, 8139cp/8139too, e1000, ne2k-pci) must be installed.
* names: the names the guest kernel will give the planned disks. On qemu PV disks are
  virtio-blk, named ``vda``, ``vdb``... in plan order (PCI slot order); emulated IDE disks are
  libata SCSI disks, ``sda``... in IDE place order (hda, hdb, hdc, hdd); on xen a PV disk is
  xen-blkfront's ``xvd<letter>`` of its vdev (hda and sda both become xvda). ``root=``,
  ``resume=``, fstab and crypttab must name devices that exist: a kernel name of a planned
  disk, or a UUID=/LABEL=/PARTUUID= found on the image.
* console: an HVM guest's serial port is ttyS0 on both platforms, and a PV guest's on QEMU
  (which runs it as HVM); the kernel and a getty should use it (``console=ttyS0``), not Xen's
  PV console (hvc0/xvc0). A PV guest that Xen runs (the xen platform) has hvc0 only: nothing
  is said of its console.

Three answers (:class:`Verdict`), as each finding's :class:`Severity` decides:

* *will not boot* (``fatal``) only on positive evidence: the initramfs was built by a generator
  recognised by its own files (initramfs-tools, dracut) and carries the root disk's driver
  nowhere, while the kernel is known not to have it built in (config-* or modules.builtin
  read); no initramfs at all for a driver that is a module; a root=, fstab or crypttab device
  name that will not exist under this plan (a mount that systemd waits for and then fails
  into emergency mode);
* *cannot tell* (``cannot-tell``): a link of the boot chain that could not be read, said
  plainly (an image that is not raw, a root filesystem on LVM, XFS, btrfs or LUKS, no boot
  entry, an initramfs that does not parse or whose init is of unknown ways and carries no
  such driver);
* *boots*: every link read and fine (``note`` findings are advice, not doubts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pvhvm.config.domain import GuestType
from pvhvm.guest.appliance import ApplianceError
from pvhvm.inspect.deep import deep_report
from pvhvm.inspect.errors import InspectError
from pvhvm.inspect.etcfiles import DeviceName, Naming, classify
from pvhvm.inspect.image import (
    DriverState,
    ImageReport,
    InitramfsReport,
    KernelReport,
    inspect_image,
    inspect_initramfs_file,
    matches,
)
from pvhvm.plan.plan import DiskPlan, Plan, Platform, VifPlan
from pvhvm.plan.types import DeviceKind
from pvhvm.plan.vdev import VdevFamily, index_to_letters, parse_vdev

PV_DISK_DRIVERS = {Platform.QEMU: (("virtio_pci",), ("virtio_blk",)),
                   Platform.XEN: (("xen_blkfront",),)}
IDE_DISK_DRIVERS = (("ata_piix", "ata_generic"), ("sd_mod",))
#: an emulated sd* disk: scsi-hd on the lsi53c895a (plan.SCSI_CONTROLLER)
SCSI_DISK_DRIVERS = (("sym53c8xx",), ("sd_mod",))
PV_NIC_DRIVERS = {Platform.QEMU: (("virtio_pci",), ("virtio_net",)),
                  Platform.XEN: (("xen_netfront",),)}
NIC_MODEL_DRIVERS = {"rtl8139": (("8139cp", "8139too"),), "e1000": (("e1000",),),
                     "ne2k_pci": (("ne2k_pci",),)}
SERIAL_TTY = "ttyS0"
XEN_PV_CONSOLES = ("hvc0", "xvc0")


class Severity(Enum):
    """Whether a finding stops the guest from booting, leaves it unknown, or is advice."""

    FATAL = "fatal"
    CANNOT_TELL = "cannot-tell"
    NOTE = "note"


class Verdict(Enum):
    """The check's one answer; the ``guest check`` exit status is :attr:`exit_status`."""

    BOOTS = "boots"
    WILL_NOT_BOOT = "will-not-boot"
    CANNOT_TELL = "cannot-tell"

    @property
    def exit_status(self) -> int:
        return {"boots": 0, "will-not-boot": 1, "cannot-tell": 2}[self.value]

    @property
    def words(self) -> str:
        return self.value.replace("-", " ")


def verdict(problems: list[Problem]) -> Verdict:
    """Any fatal finding: will not boot; else any unreadable link: cannot tell; else boots."""
    if any(p.severity is Severity.FATAL for p in problems):
        return Verdict.WILL_NOT_BOOT
    if any(p.severity is Severity.CANNOT_TELL for p in problems):
        return Verdict.CANNOT_TELL
    return Verdict.BOOTS


@dataclass(frozen=True)
class Problem:
    """One finding: what, where, and how to fix it."""

    severity: Severity
    subject: str
    message: str
    fix: str = ""

    def line(self) -> str:
        """The one line the CLI prints."""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.severity.value}: {self.subject}: {self.message}{fix}"

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "subject": self.subject,
                "message": self.message, "fix": self.fix}


def is_fatal(problems: list[Problem]) -> bool:
    return any(p.severity is Severity.FATAL for p in problems)


def guest_disk_names(plan: Plan) -> dict[str, str]:
    """vdev → the name the guest kernel gives that disk on this plan's platform (cdroms
    are ``sr<n>``)."""
    names: dict[str, str] = {}
    pv = [d for d in plan.disks if d.kind is DeviceKind.XENBUS]
    for index, disk in enumerate(pv):
        if plan.platform is Platform.QEMU:
            names[disk.vdev] = "vd" + index_to_letters(index)
        else:
            vdev = parse_vdev(disk.vdev)
            letter = vdev.disk if vdev.family is not VdevFamily.NUMBER else index
            names[disk.vdev] = "xvd" + index_to_letters(letter)
    ide = sorted((d for d in plan.disks if d.kind is DeviceKind.IOEMU),
                 key=lambda d: d.ide_place or (9, 9))
    hard, cdroms = 0, 0
    for disk in ide:
        if disk.cdrom:
            names[disk.vdev] = f"sr{cdroms}"
            cdroms += 1
        else:
            names[disk.vdev] = "sd" + index_to_letters(hard)
            hard += 1
    return names


def root_disk(plan: Plan) -> DiskPlan | None:
    """The disk the guest boots from: firmware's first boot disk, else the first hard disk."""
    hard = [d for d in plan.disks if not d.cdrom and not d.is_empty]
    booting = sorted((d for d in hard if d.bootindex is not None),
                     key=lambda d: d.bootindex or 0)
    if booting:
        return booting[0]
    if plan.direct_kernel_boot and plan.cmdline:
        root = _argument(plan.cmdline, "root")
        names = guest_disk_names(plan)
        if root is not None:
            device = classify(root)
            for disk in hard:
                if device.naming is Naming.KERNEL_NAME and names.get(disk.vdev) == device.disk:
                    return disk
    return hard[0] if hard else None


def _argument(cmdline: str, key: str) -> str | None:
    value = None
    for arg in cmdline.split():
        if arg.startswith(key + "="):
            value = arg[len(key) + 1:]
    return value


def _arguments(cmdline: str, key: str) -> list[str]:
    return [arg[len(key) + 1:] for arg in cmdline.split() if arg.startswith(key + "=")]


def _realised(disk: DiskPlan, plan: Plan) -> str:
    if disk.kind is DeviceKind.IOEMU:
        return "emulated SCSI" if disk.scsi_unit is not None else "emulated IDE"
    return "virtio-blk" if plan.platform is Platform.QEMU else "xen-blkfront"


def _at_boot(name: str, drivers: dict[str, DriverState],
             initrd: InitramfsReport | None) -> bool:
    """Whether the kernel has ``name`` before the root filesystem is mounted, as far as was
    read: built in (config-*, modules.builtin on the image or in the initramfs) or a module
    anywhere in a readable initramfs."""
    state = drivers.get(name)
    if state is not None and (state.builtin or state.initramfs):
        return True
    if initrd is not None and initrd.error is None:
        return name in initrd.modules or name in initrd.builtin
    return False


def _installed(name: str, drivers: dict[str, DriverState]) -> bool | None:
    state = drivers.get(name)
    if state is None:
        return None
    return True if state.builtin else state.installed


def check_guest(
    plan: Plan, report: ImageReport | None, *, disk: DiskPlan | None = None,
    initramfs: InitramfsReport | None = None,
) -> list[Problem]:
    """Problems booting ``report``'s guest as ``plan`` says, one per finding (see module doc).

    ``disk`` is the planned disk the report was read from (default :func:`root_disk`);
    ``initramfs`` is the host-side ``ramdisk=`` of a direct kernel boot, read by the caller.
    """
    problems: list[Problem] = []
    disk = disk or root_disk(plan)
    if disk is None:
        return [Problem(Severity.CANNOT_TELL, "disks", "no hard disk: nothing installed to check")]
    names = guest_disk_names(plan)
    cmdline, kernel, initrd = _boot_chain(plan, report, initramfs, problems)
    drivers = kernel.drivers if kernel is not None else {}
    if initrd is None and kernel is not None:
        initrd = kernel.initrd
    if plan.direct_kernel_boot:
        named = bool(plan.ramdisk)
    else:
        entry = report.default_entry if report is not None else None
        named = entry is not None and bool(entry.initrd)
    if named and initrd is None:
        pass  # named but not read: _boot_chain said so (cannot tell)
    elif not (plan.direct_kernel_boot and not plan.ramdisk and kernel is None):
        _check_disk_drivers(plan, disk, kernel, drivers, initrd, problems)
    else:
        problems.append(Problem(
            Severity.CANNOT_TELL, f"disk {disk.vdev}",
            f"kernel {plan.kernel} boots without a ramdisk and is not one of the image's "
            "kernels: whether it has the root disk's driver built in cannot be told"))
    for vif in plan.vifs:
        _check_nic_drivers(plan, vif, drivers, initrd, kernel, problems)
    if report is not None:
        valid = _valid_names(plan, names, disk, report)
        if cmdline is not None:
            _check_cmdline(cmdline, disk, names, valid, report, initrd, problems)
        _check_fstab(disk, names, valid, report, problems)
        _check_default_grub(names, valid, report, disk, problems)
    xen_pv = plan.platform is Platform.XEN and plan.guest_type is GuestType.PV
    if cmdline is not None and not xen_pv:
        _check_console(cmdline, report, problems)
    return problems


def _boot_chain(
    plan: Plan, report: ImageReport | None, initramfs: InitramfsReport | None,
    problems: list[Problem],
) -> tuple[str | None, KernelReport | None, InitramfsReport | None]:
    """The command line, kernel and initramfs this plan boots."""
    if plan.direct_kernel_boot:
        kernel = None
        if report is not None and initramfs is not None:
            release = initramfs.releases[0] if initramfs.releases else None
            kernel = next((k for k in report.kernels if k.release == release), None)
        if kernel is not None and initramfs is not None:
            kernel = KernelReport(kernel.release, kernel.vmlinuz, initramfs, kernel.modules_dir,
                                  _with_initramfs(kernel.drivers, initramfs),
                                  kernel.builtin_known)
        if initramfs is not None and initramfs.error:
            problems.append(Problem(Severity.CANNOT_TELL, f"ramdisk {plan.ramdisk}",
                                    f"not readable ({initramfs.error}); drivers not checked"))
        return plan.cmdline or "", kernel, initramfs
    if report is None:
        return None, None, None
    entry = report.default_entry
    if entry is None:
        where = report.bootloader.path if report.bootloader else "the image"
        problems.append(Problem(
            Severity.CANNOT_TELL, "boot loader",
            f"no default boot entry readable in {where}; kernel, initramfs and root= not "
            "checked",
        ))
        return None, None, None
    kernel = report.kernel_for(entry)
    initrd = kernel.initrd if kernel is not None else None
    if kernel is not None and initrd is not None and initrd.error:
        problems.append(Problem(Severity.CANNOT_TELL, f"initrd {initrd.path}",
                                f"not readable ({initrd.error}); drivers not checked"))
    if entry.initrd and kernel is not None and kernel.initrd is None:
        problems.append(Problem(Severity.CANNOT_TELL, f"initrd {entry.initrd[-1]}",
                                "named by the boot entry but not found on the image"))
    if kernel is None:
        problems.append(Problem(Severity.CANNOT_TELL, "kernel",
                                f"the boot entry's kernel {entry.kernel} was not found on the "
                                "image; its drivers not checked"))
    return entry.cmdline, kernel, initrd


def _with_initramfs(drivers: dict[str, DriverState],
                    initramfs: InitramfsReport) -> dict[str, DriverState]:
    ok = initramfs.error is None
    return {
        name: DriverState(state.builtin or name in initramfs.builtin, state.installed,
                          (name in initramfs.modules) if ok else None)
        for name, state in drivers.items()
    }


def _check_disk_drivers(
    plan: Plan, disk: DiskPlan, kernel: KernelReport | None, drivers: dict[str, DriverState],
    initrd: InitramfsReport | None, problems: list[Problem],
) -> None:
    """The root disk's driver at boot: fatal only when its absence is read, not guessed."""
    needs: tuple[tuple[str, ...], ...] = (
        PV_DISK_DRIVERS[plan.platform] if disk.kind is DeviceKind.XENBUS
        else SCSI_DISK_DRIVERS if disk.scsi_unit is not None else IDE_DISK_DRIVERS
    )
    missing = [" or ".join(alts) for alts in needs
               if not any(_at_boot(d, drivers, initrd) for d in alts)]
    if not missing:
        return
    lacking = " and ".join(missing)
    subject = f"disk {disk.vdev}"
    readable = initrd is not None and initrd.error is None
    builtin_known = (kernel is not None and kernel.builtin_known) or (
        readable and initrd is not None and initrd.builtin_listed)
    if initrd is None:
        if kernel is None or not builtin_known:
            problems.append(Problem(
                Severity.CANNOT_TELL, subject,
                f"cannot tell whether the kernel has {lacking}: no initramfs and no kernel "
                "config or modules.builtin read"))
            return
        where = f"the kernel {kernel.release} boots without an initramfs and has no"
        problems.append(Problem(
            Severity.FATAL, subject,
            f"the root disk is {_realised(disk, plan)}; {where} {lacking} built in: it will "
            "not find the root filesystem", _driver_fix(plan, disk, drivers, needs)))
        return
    if not readable:
        return  # the unreadable initramfs is its own cannot-tell finding (_boot_chain)
    assert initrd is not None
    if initrd.generator is None or not builtin_known:
        why = ("its init is of unknown ways (not initramfs-tools or dracut)"
               if initrd.generator is None else "what the kernel has built in was not read")
        problems.append(Problem(
            Severity.CANNOT_TELL, subject,
            f"the root disk is {_realised(disk, plan)} and {initrd.path} carries no "
            f"{lacking} module anywhere; whether the kernel can reach its root filesystem "
            f"cannot be told: {why}"))
        return
    where = f"{initrd.path} (built by {initrd.generator}"
    if initrd.modules_policy:
        where += f" with MODULES={initrd.modules_policy}"
    where += ")"
    problems.append(Problem(
        Severity.FATAL, subject,
        f"the root disk is {_realised(disk, plan)} and {where} lacks {lacking} "
        "(not built into the kernel either): the initramfs will not find the root filesystem",
        _driver_fix(plan, disk, drivers, needs),
    ))


def _driver_fix(plan: Plan, disk: DiskPlan, drivers: dict[str, DriverState],
                needs: tuple[tuple[str, ...], ...]) -> str:
    not_installed = [" or ".join(alts) for alts in needs
                     if all(_installed(d, drivers) is False for d in alts)]
    if not_installed:
        return f"install a kernel that has {' and '.join(not_installed)}"
    if disk.kind is DeviceKind.XENBUS:
        return ("pvhvm guest prepare CONFIG (adds the PV drivers to the initramfs and "
                "rebuilds it), or give the root disk type=ioemu")
    return "add ata_piix and sd_mod to the initramfs, or give the root disk type=xenbus"


def _check_nic_drivers(
    plan: Plan, vif: VifPlan, drivers: dict[str, DriverState], initrd: InitramfsReport | None,
    kernel: KernelReport | None, problems: list[Problem],
) -> None:
    needs: tuple[tuple[str, ...], ...]
    if vif.kind is DeviceKind.XENBUS:
        needs = PV_NIC_DRIVERS[plan.platform]
    else:
        needs = NIC_MODEL_DRIVERS.get(vif.model or "", ())
    for alternatives in needs:
        known = [_installed(d, drivers) for d in alternatives]
        if any(known) or kernel is None:
            continue
        if all(k is False for k in known):
            model = "PV" if vif.kind is DeviceKind.XENBUS else vif.model
            problems.append(Problem(
                Severity.NOTE, f"vif {vif.devid}",
                f"the guest kernel {kernel.release} has no {' or '.join(alternatives)} "
                f"module: the {model} NIC will not work",
                "install the driver in the guest, or choose another NIC type",
            ))


def _valid_names(plan: Plan, names: dict[str, str], disk: DiskPlan,
                 report: ImageReport) -> dict[str, str]:
    """Kernel device name → what it is, for the planned disks (root disk partitions exact)."""
    valid: dict[str, str] = {}
    for planned in plan.disks:
        name = names.get(planned.vdev)
        if name is None:
            continue
        valid[name] = f"disk {planned.vdev}"
        if planned.vdev == disk.vdev:
            for part in report.table.partitions:
                valid[f"{name}{part.number}"] = f"disk {planned.vdev} partition {part.number}"
        else:
            for number in range(1, 16):
                valid[f"{name}{number}"] = f"disk {planned.vdev} partition {number}"
    return valid


def _device_problem(
    device: DeviceName, what: str, disk: DiskPlan, names: dict[str, str],
    valid: dict[str, str], report: ImageReport, severity: Severity, expected: str | None,
) -> Problem | None:
    """A problem when ``device`` will not exist under this plan, else None."""
    root_name = names.get(disk.vdev, "")
    if device.naming is Naming.KERNEL_NAME:
        name = device.value
        if name in valid:
            if expected is not None and name != expected:
                return Problem(severity, what,
                               f"{device.spec} is {valid[name]}, not the root filesystem "
                               f"(/dev/{expected}) on this plan",
                               f"name it by UUID= (pvhvm guest prepare), or /dev/{expected}")
            return None
        target = _target_for(device, report)
        where = f"on this plan the root disk {disk.vdev} is /dev/{root_name}"
        if device.partition is not None and device.partition in {
                p.number for p in report.table.partitions}:
            where += f", so its partition {device.partition} is /dev/{root_name}{device.partition}"
        fix = f"name it {target}" if target else "name it by UUID= or LABEL="
        return Problem(severity, what, f"{device.spec} will not exist: {where}",
                       f"{fix} (pvhvm guest prepare does this)")
    if device.naming in (Naming.UUID, Naming.LABEL, Naming.PARTUUID):
        if any(matches(fs, device) for fs in report.filesystems):
            return None
        if expected is None:  # fstab, crypttab: it may be on another planned disk
            return Problem(Severity.NOTE, what,
                           f"{device.spec} names no filesystem on the root disk's image",
                           "check that it is on another planned disk")
        return Problem(severity, what, f"{device.spec} names no filesystem on the root disk",
                       f"name the root filesystem ({_root_label(report)})")
    return None


def _root_label(report: ImageReport) -> str:
    root = report.root
    if root is None or root.signature is None or not root.signature.uuid:
        return "by UUID= or LABEL="
    return f"UUID={root.signature.uuid}"


def _target_for(device: DeviceName, report: ImageReport) -> str | None:
    """UUID=... of the filesystem a kernel name meant (by its partition number); the
    partition's PARTUUID=... when it holds no filesystem with a UUID (a plain dm-crypt
    swap)."""
    for fs in report.filesystems:
        if fs.signature is None or not fs.signature.uuid:
            continue
        if fs.partition == device.partition or (fs.partition is None and device.partition is None):
            return f"UUID={fs.signature.uuid}"
    for fs in report.filesystems:
        if device.partition is not None and fs.partition == device.partition and fs.partuuid:
            return f"PARTUUID={fs.partuuid}"
    return None


def _root_name(names: dict[str, str], disk: DiskPlan, report: ImageReport) -> str | None:
    root = report.root
    base = names.get(disk.vdev)
    if root is None or base is None:
        return None
    return base if root.partition is None else f"{base}{root.partition}"


def _check_cmdline(
    cmdline: str, disk: DiskPlan, names: dict[str, str], valid: dict[str, str],
    report: ImageReport, initrd: InitramfsReport | None, problems: list[Problem],
) -> None:
    root = _argument(cmdline, "root")
    if root is None:
        problems.append(Problem(Severity.NOTE, "root=", "the kernel command line has no root=",
                                f"add root=UUID=... for {_root_name(names, disk, report)}"))
    else:
        device = classify(root)
        found = _device_problem(device, f"root={root}", disk, names, valid, report,
                                Severity.FATAL, _root_name(names, disk, report))
        if found is not None:
            problems.append(found)
        elif device.naming in (Naming.UUID, Naming.LABEL) and initrd is None:
            problems.append(Problem(Severity.FATAL, f"root={root}",
                                    "only an initramfs understands UUID=/LABEL= and there is "
                                    "none", "use root=PARTUUID= or add an initramfs"))
    for resume in _arguments(cmdline, "resume"):
        found = _device_problem(classify(resume), f"resume={resume}", disk, names, valid,
                                report, Severity.NOTE, None)
        if found is not None:
            problems.append(found)


def _check_fstab(disk: DiskPlan, names: dict[str, str], valid: dict[str, str],
                 report: ImageReport, problems: list[Problem]) -> None:
    for entry in report.fstab:
        if entry.mountpoint == "/" or entry.fstype == "swap" or entry.nofail:
            severity = Severity.NOTE  # root is already mounted by root=; swap is only wanted
        else:
            severity = Severity.FATAL  # local-fs.target fails: emergency mode
        found = _device_problem(entry.device, f"fstab line {entry.line} ({entry.mountpoint})",
                                disk, names, valid, report, severity, None)
        if found is not None:
            problems.append(found)
    for crypt in report.crypttab:
        severity = Severity.NOTE if "nofail" in crypt.options else Severity.FATAL
        found = _device_problem(crypt.device, f"crypttab line {crypt.line} ({crypt.name})",
                                disk, names, valid, report, severity, None)
        if found is not None:
            problems.append(found)


def _check_default_grub(names: dict[str, str], valid: dict[str, str], report: ImageReport,
                        disk: DiskPlan, problems: list[Problem]) -> None:
    for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
        value = report.default_grub.get(key, "")
        for param in ("root", "resume"):
            for spec in _arguments(value, param):
                found = _device_problem(classify(spec), f"/etc/default/grub {key} {param}=",
                                        disk, names, valid, report, Severity.NOTE, None)
                if found is not None:
                    problems.append(Problem(Severity.NOTE, found.subject,
                                            found.message + " (at the next update-grub)",
                                            found.fix))


def _check_console(cmdline: str, report: ImageReport | None, problems: list[Problem]) -> None:
    consoles = [c.split(",")[0] for c in _arguments(cmdline, "console")]
    xen = [c for c in consoles if c in XEN_PV_CONSOLES]
    if xen:
        problems.append(Problem(
            Severity.NOTE, f"console={xen[0]}",
            f"{xen[0]} is Xen's PV console, which this guest will not have; its serial port is "
            f"{SERIAL_TTY}", f"console={SERIAL_TTY},115200 (and a getty on {SERIAL_TTY})",
        ))
    if SERIAL_TTY not in consoles:
        gettys = report.gettys if report is not None else []
        getty = " and no getty runs on it" if SERIAL_TTY not in gettys else ""
        problems.append(Problem(
            Severity.NOTE, "console",
            f"the kernel command line has no console={SERIAL_TTY}{getty}: the config's serial "
            "port (pvhvm console) shows little or nothing",
            f"add console={SERIAL_TTY},115200 to the kernel command line "
            "(GRUB_CMDLINE_LINUX, then update-grub)",
        ))


@dataclass
class CheckResult:
    """What :func:`check_plan` read and found."""

    disk: DiskPlan | None
    report: ImageReport | None
    initramfs: InitramfsReport | None
    problems: list[Problem]

    @property
    def fatal(self) -> bool:
        return is_fatal(self.problems)

    @property
    def verdict(self) -> Verdict:
        return verdict(self.problems)

    @property
    def reasons(self) -> list[Problem]:
        """The findings that decide the verdict (none when it boots)."""
        deciding = {Verdict.WILL_NOT_BOOT: Severity.FATAL,
                    Verdict.CANNOT_TELL: Severity.CANNOT_TELL}.get(self.verdict)
        return [p for p in self.problems if p.severity is deciding]

    def to_json(self) -> dict[str, Any]:
        return {
            "disk": self.disk.vdev if self.disk else None,
            "image": self.report.path if self.report else None,
            "ramdisk": self.initramfs.path if self.initramfs else None,
            "verdict": self.verdict.value,
            "reasons": [p.line() for p in self.reasons],
            "boots": self.verdict is Verdict.BOOTS,
            "problems": [p.to_json() for p in self.problems],
        }


def _first_boot_device(plan: Plan) -> str | None:
    """What firmware boots first when it is not a hard disk (a cdrom, a NIC), else None."""
    if plan.direct_kernel_boot:
        return None
    for disk in plan.disks:
        if disk.bootindex == 0 and disk.cdrom:
            return f"the cdrom {disk.vdev}"
    for vif in plan.vifs:
        if vif.bootindex == 0:
            return f"the network (vif {vif.devid})"
    return None


def check_plan(plan: Plan, *, deep: bool = False) -> CheckResult:
    """Read the plan's root disk image (and a direct boot's ``ramdisk=``) and check them.

    An image that cannot be read (not raw, a block device debugfs cannot open, a root on
    LVM, XFS, btrfs or LUKS) is *cannot tell*, never a refusal: only what was read can be
    found wrong. ``deep`` (``guest check --deep``; never ``create``) reads such an image
    through libguestfs's appliance instead (:mod:`.deep`), so the same rules give *boots* or
    *will not boot* from the guest's own files.
    """
    disk = root_disk(plan)
    problems: list[Problem] = []
    report: ImageReport | None = None
    initramfs: InitramfsReport | None = None
    first = _first_boot_device(plan)
    if first is not None:
        return CheckResult(disk, None, None, [Problem(
            Severity.CANNOT_TELL, "boot", f"the firmware boots from {first} first; the "
            "installed system is not checked")])
    if disk is None:
        problems.append(Problem(Severity.CANNOT_TELL, "disks", "no hard disk: nothing to check"))
    elif disk.script is not None:
        problems.append(Problem(Severity.CANNOT_TELL, f"disk {disk.vdev}",
                                f"a script-backed target ({disk.script}) is not inspected"))
    elif disk.format != "raw":
        problems.append(Problem(Severity.CANNOT_TELL, f"disk {disk.vdev}",
                                f"a {disk.format} image is not inspected (raw only); not checked"))
    else:
        try:
            report = inspect_image(Path(disk.target))
        except InspectError as err:
            problems.append(Problem(Severity.CANNOT_TELL, f"disk {disk.vdev}",
                                    f"image not inspected: {err}"))
        if report is not None and report.root is None and deep:
            try:
                report = deep_report(Path(disk.target))
            except (ApplianceError, InspectError) as err:
                problems.append(Problem(Severity.CANNOT_TELL, f"disk {disk.vdev}",
                                        f"not read through the appliance either: {err}"))
                report = None
        elif report is not None and report.root is None:
            found = "; ".join(report.notes)
            problems.append(Problem(
                Severity.CANNOT_TELL, f"disk {disk.vdev}",
                f"no readable Linux root filesystem on the image ({found}); only ext2/3/4 "
                "is read here, so the guest is not checked (guest check --deep reads it "
                "through libguestfs's appliance)"))
            report = None
    if plan.direct_kernel_boot and plan.ramdisk:
        try:
            initramfs = inspect_initramfs_file(Path(plan.ramdisk))
        except InspectError as err:
            problems.append(Problem(Severity.CANNOT_TELL, "ramdisk", f"not inspected: {err}"))
    if report is None and not (plan.direct_kernel_boot and initramfs is not None):
        return CheckResult(disk, None, initramfs, problems)
    problems += check_guest(plan, report, disk=disk, initramfs=initramfs)
    return CheckResult(disk, report, initramfs, problems)
