"""A saved or migrating domain planned again from its config (issue 18): what restore and
migrate-receive start instead of a command line taken from a file.

:func:`replan` takes a :class:`~pvhvm.runtime.savefile.DomainImage` (format 2) and does what
``create`` does with a config file — parse the text it carries with the same parser (same
budgets, same errors; a libvirt domain XML with the XML reader), run a pygrub bootloader as
create does, plan it with ``make_plan`` with file checks on, in the directory create ran in —
then applies what changed while the domain ran, each through the code that checks it when it
happens: mem-set / vcpu-set values within the plan's limits (xl's: 16 MiB..maxmem,
1..maxvcpus), each hot-plugged device re-planned from its spec by runtime/hotplug.py's own
planning (vdev, devid and MAC as it got them; its slot one of the plan's free hotplug ports),
each CD medium checked as cd-insert checks it. Anything else in the image must agree with
that plan: name, uuid, on_* actions, the devices the stream's device state belongs to and the
files QEMU opens (with their sizes, checked against this host by :func:`file_problems`).
Any disagreement is one :class:`ReplanError` line, raised before anything is started.

The pygrub step runs again (the kernel and initrd are extracted once more from the guest's
disk into a new folder of pvhvm's own pygrub cache, as create does), rather than trusting
kernel paths from the file: then no path QEMU opens comes from anywhere but the config's own
rules, a migration's receiver finds the kernel in the guest's (shared) disk as the sender
did, and a guest whose disk now holds another kernel fails the size check instead of
booting a file the image named. (Its files are matched by what they are, not by path.)
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pvhvm.config.domain import Dialect, DomainConfig
from pvhvm.config.lang import parse_cli_variable
from pvhvm.config.source import ConfigSource
from pvhvm.errors import InputError, PvhvmError
from pvhvm.inspect import pygrub
from pvhvm.libvirt import read as libvirt_read
from pvhvm.plan.plan import DiskPlan, Plan, Platform, VifPlan, make_plan
from pvhvm.qemu.argv import hotplug_port_ids
from pvhvm.runtime import hotplug, lifecycle
from pvhvm.runtime.resize import MIN_MEMORY_MIB, TARGET_KEY
from pvhvm.runtime.savefile import DomainImage, HotplugSpec, SavedFile
from pvhvm.runtime.state import DomainRecord


class ReplanError(InputError):
    """A saved domain whose config does not plan, or whose plan disagrees with its image."""


# --- the config, parsed and planned as create does ---------------------------------------


def domain_config(source: ConfigSource) -> DomainConfig:
    """``source`` parsed as ``create`` parses a CONFIG argument (pvhvm.cli.configs): an
    xm/xl file, or a libvirt domain XML; VAR=VALUE and --dialect as given."""
    variables = dict(parse_cli_variable(a) for a in source.variables)
    dialect = None if source.dialect is None else Dialect(source.dialect)
    return libvirt_read.domain_from_text(source.file, source.text, variables, dialect)


@contextlib.contextmanager
def resolving_in(directory: str) -> Iterator[None]:
    """Relative paths resolved against ``directory`` (create's), for the planner and the
    attach checks, which resolve against the working directory. Where that directory does
    not exist on this host, against an empty one: a relative path then names nothing, and
    the planner says so."""
    try:
        before: str | None = os.getcwd()
    except OSError:
        before = None
    with contextlib.ExitStack() as stack:
        try:
            os.chdir(directory)
        except OSError:
            os.chdir(stack.enter_context(tempfile.TemporaryDirectory(prefix="pvhvm-replan-")))
        try:
            yield
        finally:
            os.chdir(before if before is not None and os.path.isdir(before) else "/")


def plan_source(source: ConfigSource, target: Platform = Platform.QEMU,
                uuid: str | None = None) -> Plan:
    """``source``'s plan, as ``create`` makes it (pygrub run on the qemu target); ``uuid``:
    the domain's kept identity, for a config without ``uuid=`` (plan.domain_uuid)."""
    return _plan_source(source, target, uuid)[0]


def _plan_source(source: ConfigSource, target: Platform,
                 uuid: str | None = None) -> tuple[Plan, bool]:
    """:func:`plan_source`, and whether the kernel came from the bootloader (pygrub)."""
    with resolving_in(source.directory):
        config = domain_config(source)
        loaded = config.bootloader is not None and config.kernel is None
        if target is Platform.QEMU:
            config = pygrub.run_bootloader(config)
        plan = make_plan(config, target, check_files=True,
                         skip_unsupported=source.skip_unsupported, uuid=uuid)
    return plan, loaded and target is Platform.QEMU


# --- what the image may add to the plan ----------------------------------------------------


@dataclass(frozen=True)
class Replanned:
    """A saved domain as this host plans it: the plan QEMU's argv is made from (memory,
    vCPUs and media applied), the record's plan document (hot-plugged devices included)
    and the hot-plugged devices re-planned, in the order they were attached."""

    plan: Plan
    plan_json: dict[str, Any]
    hotplugged: tuple[tuple[HotplugSpec, DiskPlan | VifPlan], ...]
    #: the vCPUs vcpu-set left (the plan keeps the config's: the queues of the disks given
    #: at create follow those, and vcpu-set changes only ``-smp``, resize.smp_argv)
    vcpus: int


def _limits(plan: Plan, image: DomainImage, where: str) -> Plan:
    """``plan`` with the image's memory target, which must be within xl's limits, as its
    vCPUs must (they are applied by the caller)."""
    max_mib = plan.maxmem_mib if plan.maxmem_mib is not None else plan.memory_mib
    max_vcpus = plan.maxvcpus if plan.maxvcpus is not None else plan.vcpus
    kib = image.memory_kib
    if not MIN_MEMORY_MIB * 1024 <= kib <= max_mib * 1024:
        raise ReplanError(f"{where}: memory target {kib} KiB is outside the domain's limits "
                          f"({MIN_MEMORY_MIB} MiB to maxmem = {max_mib} MiB)")
    if not 1 <= image.vcpus <= max_vcpus:
        raise ReplanError(f"{where}: {image.vcpus} vCPUs is outside the domain's limits "
                          f"(1 to maxvcpus = {max_vcpus})")
    if kib // 1024 != plan.memory_mib:
        plan = replace(plan, memory_mib=kib // 1024, maxmem_mib=max_mib)
    return plan


def _media(plan: Plan, media: dict[str, str], where: str) -> Plan:
    """``plan`` with each CD drive's medium as cd-insert / cd-eject left it."""
    disks = list(plan.disks)
    for vdev, path in media.items():
        index = next((i for i, d in enumerate(disks) if d.vdev == vdev), None)
        if index is None or not disks[index].cdrom:
            raise ReplanError(f"{where}: the image changes the medium of {vdev!r}, which is "
                              "not a CD drive of the domain")
        try:
            target = "" if path == "" else hotplug.medium_path(path)
        except hotplug.HotplugError as err:
            raise ReplanError(f"{where}: cdrom {vdev}: {err}") from err
        disks[index] = replace(disks[index], target=target, format="raw")
    return replace(plan, disks=tuple(disks))


def _slot(entry: HotplugSpec, plan: Plan, taken: set[str], where: str) -> None:
    """The slot a hot-plugged device took must be a free hotplug port of ``plan`` (none on
    pc, whose root bus hotplugs)."""
    if plan.ide_controller:
        if entry.slot is not None:
            raise ReplanError(f"{where}: a hot-plugged device names slot {entry.slot!r}, but "
                              "the domain's machine (pc) hot-plugs on its root bus")
        return
    if entry.slot not in hotplug_port_ids(plan) or entry.slot in taken:
        raise ReplanError(f"{where}: a hot-plugged device names slot {entry.slot!r}, which "
                          "is not a free hotplug port of the domain's plan")
    taken.add(entry.slot)


def _scratch(plan_json: dict[str, Any], plan: Plan) -> DomainRecord:
    """A record holding ``plan_json``, for hotplug.py's attach checks (they read a record)."""
    return DomainRecord(
        name=plan.name, domid=0, uuid=plan.uuid, platform=plan.platform.value,
        memory_mib=plan.memory_mib, vcpus=plan.vcpus, plan=plan_json, argv=[],
        on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot, on_crash=plan.on_crash)


def _hotplugged(plan: Plan, plan_json: dict[str, Any], entries: tuple[HotplugSpec, ...],
                where: str, check_slots: bool) -> list[tuple[HotplugSpec, DiskPlan | VifPlan]]:
    """Each hot-plugged device re-planned from its spec, in attach order, onto
    ``plan_json`` (which gets it, as the attach recorded it)."""
    out: list[tuple[HotplugSpec, DiskPlan | VifPlan]] = []
    taken: set[str] = set()
    for entry in entries:
        what = f"{where}: hot-plugged {entry.kind} {entry.spec!r}"
        if check_slots:
            _slot(entry, plan, taken, what)
        record = _scratch(plan_json, plan)
        try:
            with resolving_in(entry.directory):
                device: DiskPlan | VifPlan = (
                    hotplug.disk_to_attach(entry.spec, record) if entry.kind == "disk"
                    else hotplug.vif_to_attach(entry.spec, record))
        except PvhvmError as err:
            raise ReplanError(f"{what}: {err}") from err
        if isinstance(device, DiskPlan):
            if (device.vdev, device.devid) != (entry.vdev, entry.devid):
                raise ReplanError(f"{what}: it plans as {device.vdev} (devid {device.devid}), "
                                  f"not as the {entry.vdev} (devid {entry.devid}) recorded")
            plan_json.setdefault("disks", []).append(hotplug.disk_json(device))
        else:
            if (device.devid, device.mac) != (entry.devid, entry.mac):
                raise ReplanError(f"{what}: it plans as devid {device.devid} MAC {device.mac}, "
                                  f"not as the devid {entry.devid} MAC {entry.mac} recorded")
            plan_json.setdefault("vifs", []).append(hotplug.vif_json(device))
        out.append((entry, device))
    return out


def device_set(plan_json: dict[str, Any]) -> tuple[str, ...]:
    """The devices of a record's plan as an image names them ("disk VDEV DEVID", "vif
    DEVID MAC"), sorted."""
    return tuple(sorted(
        [f"disk {d.get('vdev')} {d.get('devid')}" for d in plan_json.get("disks", [])]
        + [f"vif {v.get('devid')} {str(v.get('mac')).lower()}"
           for v in plan_json.get("vifs", [])]))


def opened_files(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, path) of each local file QEMU opens for ``plan``: disks, media, kernel."""
    out = []
    for disk in plan.get("disks", []):
        target = str(disk.get("target") or "")
        if target.startswith("/") and not disk.get("script"):
            what = "cdrom" if disk.get("cdrom") else "disk"
            out.append((f"{what} {disk.get('vdev')}", target))
    boot = plan.get("boot") or {}
    for key in ("kernel", "ramdisk"):
        if boot.get(key):
            out.append((key, str(boot[key])))
    return out


def file_size(path: str) -> int:
    """Bytes in a file or a block device (whose st_size is 0)."""
    info = os.stat(path)
    if stat.S_ISBLK(info.st_mode):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return info.st_size


def file_problems(files: tuple[SavedFile, ...] | list[SavedFile]) -> list[str]:
    """One line per file the domain opens that is missing here or not the size it was."""
    problems = []
    for saved in files:
        try:
            size = file_size(saved.path)
        except FileNotFoundError:
            problems.append(f"{saved.what}: {saved.path} does not exist on this host")
            continue
        except OSError as err:
            problems.append(f"{saved.what}: cannot read {saved.path}: {err.strerror}")
            continue
        if size != saved.size:
            problems.append(f"{saved.what}: {saved.path} has changed size "
                            f"({saved.size} bytes when saved, {size} now)")
    return problems


def replan(image: DomainImage, where: str, target: Platform = Platform.QEMU,
           check_slots: bool = True) -> Replanned:
    """``image``'s domain planned on this host (see the module docstring); ReplanError,
    one line naming ``where`` (the file, the migration), when it cannot be.
    ``check_slots``: hot-plugged devices name pvhvm's hotplug ports (not on libvirt, which
    places them itself)."""
    try:
        plan, loaded = _plan_source(image.source, target, image.uuid)
    except PvhvmError as err:
        raise ReplanError(f"{where}: the saved domain's config does not plan here: {err}"
                          ) from err
    except (OSError, RecursionError, MemoryError) as err:
        raise ReplanError(f"{where}: the saved domain's config cannot be read: {err}"
                          ) from err
    for key in ("name", "uuid", "on_poweroff", "on_reboot", "on_crash"):
        if getattr(plan, key) != getattr(image, key):
            raise ReplanError(f"{where}: the image says {key} {getattr(image, key)!r}, its "
                              f"config plans {key} {getattr(plan, key)!r}")
    plan = _media(_limits(plan, image, where), image.media, where)
    plan_json = plan.to_json()
    plan_json[TARGET_KEY] = image.memory_kib
    if image.vcpus != plan.vcpus:  # as resize.record_vcpus keeps it
        plan_json["maxvcpus"] = plan.maxvcpus if plan.maxvcpus is not None else plan.vcpus
        plan_json["vcpus"] = image.vcpus
    hotplugged = _hotplugged(plan, plan_json, image.hotplugged, where, check_slots)
    if device_set(plan_json) != tuple(sorted(image.devices)):
        raise ReplanError(
            f"{where}: the devices its config and hot-plugged specs plan "
            f"({', '.join(device_set(plan_json)) or 'none'}) are not the devices the saved "
            f"state belongs to ({', '.join(sorted(image.devices)) or 'none'})")
    problems = file_problems(_expected_files(opened_files(plan_json), image.files, loaded,
                                             where))
    if problems:
        raise ReplanError(f"{where}: the saved domain does not match this host: "
                          + "; ".join(problems))
    return Replanned(plan=plan, plan_json=plan_json, hotplugged=tuple(hotplugged),
                     vcpus=image.vcpus)


def _expected_files(planned: list[tuple[str, str]], saved: tuple[SavedFile, ...],
                    loaded: bool, where: str) -> list[SavedFile]:
    """The files the plan opens, each with the size the image says it had: the same files
    (by what they are and their path) as the image lists, or ReplanError. A kernel and
    initrd pygrub found are matched by what they are only: pygrub extracts them afresh, to
    a new folder of its cache, at each create (and this re-plan)."""
    boot = ("kernel", "ramdisk") if loaded else ()
    sizes = {f.what: f for f in saved}
    if len(sizes) != len(saved) or set(sizes) != {what for what, _ in planned}:
        raise ReplanError(f"{where}: the files its plan opens are not the files the image "
                          "lists with their sizes")
    expected = []
    for what, path in planned:
        if what not in boot and sizes[what].path != path:
            raise ReplanError(f"{where}: the files its plan opens are not the files the "
                              f"image lists with their sizes ({what}: {path!r}, not "
                              f"{sizes[what].path!r})")
        expected.append(SavedFile(what, path, sizes[what].size))
    return expected


def check_savable(record: DomainRecord, directory: Path, verb: str) -> ConfigSource:
    """The config source kept in ``record``'s ``directory`` when the domain can be saved or
    migrated (ReplanError, one line, when not): made by a ``create`` that kept its source,
    every hot-plugged device with its spec, no device still being released after a forced
    detach."""
    source = lifecycle.read_source(directory)
    if source is None:
        raise ReplanError(
            f"domain {record.name!r} was created by an older pvhvm, whose record keeps no "
            f"config to plan it from: it cannot be {verb}; destroy it and create it again")
    if any("spec" not in entry for entry in record.hotplugged):
        raise ReplanError(
            f"domain {record.name!r} has a device hot-plugged by an older pvhvm, whose record "
            f"keeps no spec to plan it from: detach it first, or it cannot be {verb}")
    if record.releasing:
        # its QEMU still has the device (the stream would carry it), the plan no longer does
        raise ReplanError(
            f"domain {record.name!r} has a device detached with --force that the guest has "
            f"not released yet: it cannot be {verb} until the guest lets go of it")
    return source

