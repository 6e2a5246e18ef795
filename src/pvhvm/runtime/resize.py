"""A running domain's memory and vCPUs, as xl(1)'s ``mem-set`` and ``vcpu-set`` change them.

Input and limits follow xl (tools/xl/xl_mem.c, xl_vcpu.c; libxl_mem.c, libxl_domain.c):

* ``mem-set NAME MEM``: MEM is MiB, or a number with one suffix ``b k m g t`` (any case;
  xl's parse_mem_size_kb). A target above the domain's static maximum (``maxmem``, else
  ``memory`` at create) is refused, as libxl refuses "memory_dynamic_max must be less than
  or equal to memory_static_max". xl has no floor for a guest; pvhvm refuses less than
  MIN_MEMORY_MIB, the least ``memory =`` it creates a domain with.
* ``vcpu-set NAME VCPUS``: at least 1 ("Requested 0 VCPUs!") and at most ``maxvcpus``
  ("Requested N VCPUs, however maxcpus is M!"); raising past the host's CPU count is refused
  unless ``--ignore-host`` (xl's "You are overcommitting!").

On the qemu platform memory moves through the domain's virtio balloon: the guest boots with
its static maximum (``-m maxmem``) and the balloon holds back all but the target, as xl's
populate-on-demand does for an HVM guest; ``mem-set`` moves the target (QMP ``balloon``) and
the guest's virtio_balloon driver follows it (``query-balloon`` reads back how far). A guest
without that driver keeps what it has. vCPUs are ``-smp VCPUS,maxcpus=MAXVCPUS``: raising
adds the lowest free CPU slots (``query-hotpluggable-cpus``, ``device_add``), lowering asks
the guest to eject the highest ones (``device_del``, ACPI) and waits until QEMU has let them
go. Lowering is refused under TCG: QEMU 7.2's TCG crashed here ("malloc(): unsorted double
linked list corrupted") when a vCPU it had unplugged was plugged again.

The new values go in the record (``list``'s Mem and VCPUs, ``list -l``'s config) and in the
argv a supervisor relaunches (``-smp``); each QEMU start sets the balloon to the recorded
target again (:func:`apply_balloon_target`). So a reboot keeps them, as xl's reboot does
(libxl_retrieve_domain_configuration reads the target and the online vCPUs back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient, QMPError

from pvhvm.errors import DomainError, InputError
from pvhvm.qemu.argv import BALLOON_DEVICE
from pvhvm.runtime import hotplug
from pvhvm.runtime.state import DomainRecord, StateStore

log = logging.getLogger(__name__)

#: the least memory a domain may be set to (the least ``memory =`` create accepts)
MIN_MEMORY_MIB = 16
#: how long vcpu-set waits for the guest to eject the vCPUs it is asked to give up
VCPU_UNPLUG_TIMEOUT = 30.0
#: record.plan key of the exact mem-set target in KiB (``memory`` holds whole MiB)
TARGET_KEY = "memory_target_kib"

_SIZE = re.compile(r"([0-9]+)([bkmgt]?)", re.IGNORECASE)
#: a suffix → what the number is shifted by to give KiB (xl: none means MiB)
_SHIFT = {"b": -10, "k": 0, "": 10, "m": 10, "g": 20, "t": 30}


class ResizeError(InputError):
    """A mem-set or vcpu-set argument that is not valid for the domain."""


# --- parsing and limits (pure) -----------------------------------------------------------


def parse_memory_kib(text: str) -> int:
    """MEM of ``mem-set`` in KiB: a whole number of MiB, or with a suffix b, k, m, g or t."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ResizeError(f"MEM {text!r} is not a size: a whole number of MiB, or one with a "
                          "suffix b, k, m, g or t (as xl mem-set: 512, 524288k, 1g)")
    shift = _SHIFT[match.group(2).lower()]
    number = int(match.group(1))
    return number << shift if shift >= 0 else number >> -shift


def parse_vcpus(text: str) -> int:
    """VCPUS of ``vcpu-set``: a whole number."""
    if not text.isascii() or not text.isdigit():
        raise ResizeError(f"VCPUS {text!r} is not a whole number of vCPUs")
    return int(text)


@dataclass(frozen=True)
class Limits:
    """What a domain may be set to: fixed when it was created (xl's static-max, maxvcpus)."""

    max_memory_mib: int
    max_vcpus: int

    @classmethod
    def of(cls, record: DomainRecord) -> Limits:
        plan = record.plan
        memory = int(plan.get("memory") or record.memory_mib)
        vcpus = int(plan.get("vcpus") or record.vcpus)
        return cls(max_memory_mib=int(plan.get("maxmem") or memory),
                   max_vcpus=int(plan.get("maxvcpus") or vcpus))


def show_kib(kib: int) -> str:
    """``kib`` as MiB when whole, else as KiB."""
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def check_memory(record: DomainRecord, kib: int) -> None:
    """ResizeError unless ``kib`` is a target the domain can be given."""
    limits = Limits.of(record)
    where = f"mem-set {record.name}"
    if kib > limits.max_memory_mib * 1024:
        raise ResizeError(
            f"{where}: {show_kib(kib)} is above the domain's maximum, maxmem = "
            f"{limits.max_memory_mib} MiB (fixed at create, as xl's static-max)")
    if kib < MIN_MEMORY_MIB * 1024:
        raise ResizeError(f"{where}: {show_kib(kib)} is below the least a domain may have, "
                          f"{MIN_MEMORY_MIB} MiB")


def check_vcpus(record: DomainRecord, vcpus: int, ignore_host: bool,
                host_cpus: int | None = None) -> None:
    """ResizeError unless the domain can have ``vcpus`` vCPUs."""
    limits = Limits.of(record)
    where = f"vcpu-set {record.name}"
    if vcpus < 1:
        raise ResizeError(f"{where}: {vcpus} vCPUs: a domain has at least 1")
    if vcpus > limits.max_vcpus:
        raise ResizeError(f"{where}: {vcpus} vCPUs is more than the domain's maximum, "
                          f"maxvcpus = {limits.max_vcpus} (fixed at create, as in xl)")
    host = host_cpus if host_cpus is not None else (os.cpu_count() or 1)
    if not ignore_host and vcpus > record.vcpus and vcpus > host:
        raise ResizeError(f"{where}: {vcpus} vCPUs overcommit this host's {host} CPUs; "
                          "--ignore-host goes ahead (as xl vcpu-set -i)")


def target_kib(record: DomainRecord) -> int:
    """The memory target the record keeps (KiB)."""
    return int(record.plan.get(TARGET_KEY) or record.memory_mib * 1024)


def record_memory(record: DomainRecord, kib: int) -> None:
    """Keep a new memory target in ``record`` (any platform): Mem, the config's memory, and
    the maximum made explicit (it no longer follows ``memory``)."""
    limits = Limits.of(record)
    record.plan["maxmem"] = limits.max_memory_mib
    record.plan["memory"] = kib // 1024
    record.plan[TARGET_KEY] = kib
    record.memory_mib = kib // 1024


def record_vcpus(record: DomainRecord, vcpus: int) -> None:
    """Keep a new vCPU count in ``record`` (any platform), with the maximum made explicit."""
    limits = Limits.of(record)
    record.plan["maxvcpus"] = limits.max_vcpus
    record.plan["vcpus"] = vcpus
    record.vcpus = vcpus


def smp_argv(argv: list[str], vcpus: int) -> list[str]:
    """``argv`` with ``-smp``'s boot vCPU count set to ``vcpus`` (maxcpus kept)."""
    out = list(argv)
    for index in range(len(out) - 1):
        if out[index] == "-smp":
            _, _, rest = out[index + 1].partition(",")
            out[index + 1] = f"{vcpus},{rest}" if rest else str(vcpus)
    return out


# --- the qemu platform ---------------------------------------------------------------------


def _has_balloon(record: DomainRecord) -> bool:
    return BALLOON_DEVICE in record.argv


async def apply_balloon_target(client: QMPClient, record: DomainRecord) -> None:
    """At each QEMU start (the supervisor's launch): set the balloon to the record's target,
    so the guest gets ``memory`` of its ``maxmem`` and a mem-set outlives a relaunch. A
    failure is logged: the guest then keeps its boot memory."""
    if not _has_balloon(record):
        return
    try:
        await asyncio.wait_for(client.execute("balloon", {"value": target_kib(record) * 1024}),
                               hotplug.QMP_TIMEOUT)
    except (QMPError, OSError, EOFError, TimeoutError) as err:
        log.warning("setting the balloon of %s to %s failed: %s", record.name,
                    show_kib(target_kib(record)), err)


@dataclass(frozen=True)
class MemorySet:
    """What mem-set did: the target, and what the guest had when it was set."""

    target_kib: int
    actual_kib: int


def mem_set(name: str, kib: int, store: StateStore | None = None) -> MemorySet:
    """``xl mem-set NAME MEM`` on the qemu platform: move the balloon's target."""
    store = store or StateStore()
    with hotplug.one_at_a_time(name, store):
        record = hotplug.running_domain(name, store)
        check_memory(record, kib)
        if not _has_balloon(record):
            raise DomainError(f"domain {name!r} has no memory balloon (it was created by a "
                              "pvhvm without one); re-create it to use mem-set")

        async def work(client: QMPClient) -> Any:
            await hotplug.qmp_execute(client, "balloon", {"value": kib * 1024})
            return await hotplug.qmp_execute(client, "query-balloon", {})

        balloon = asyncio.run(hotplug.qmp_session(store.paths(name).control_socket, work))
        store.modify(name, lambda rec: record_memory(rec, kib))
    actual = int(balloon.get("actual", 0)) // 1024 if isinstance(balloon, dict) else 0
    return MemorySet(target_kib=kib, actual_kib=actual)


def _slot_key(slot: dict[str, Any]) -> tuple[int, ...]:
    props = slot.get("props") or {}
    return tuple(int(props.get(key, 0)) for key in
                 ("node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id"))


async def _cpu_slots(client: QMPClient) -> list[dict[str, Any]]:
    """QEMU's CPU slots in vCPU order; a plugged one has a ``qom-path``."""
    slots = await hotplug.qmp_execute(client, "query-hotpluggable-cpus", {})
    return sorted((dict(s) for s in slots), key=_slot_key)


async def _eject(client: QMPClient, paths: list[str], timeout: float) -> None:
    """device_del each CPU (by QOM path), then wait until QEMU has none of them or
    ``timeout`` passed (a CPU's DEVICE_DELETED names its parts too, so its slots are read)."""
    for path in paths:
        await hotplug.qmp_execute(client, "device_del", {"id": path})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        present = {str(s.get("qom-path")) for s in await _cpu_slots(client)}
        if not present & set(paths):
            return
        await asyncio.sleep(0.2)


async def _set_cpus(client: QMPClient, vcpus: int, timeout: float) -> int:
    """Plug or eject CPUs until ``vcpus`` are present; how many are present at the end."""
    slots = await _cpu_slots(client)
    present = [s for s in slots if s.get("qom-path")]
    if vcpus > len(present):
        for index, slot in enumerate(slots):
            if len(present) >= vcpus:
                break
            if not slot.get("qom-path"):
                await hotplug.qmp_execute(client, "device_add", {
                    "driver": slot["type"], "id": f"vcpu{index}", **(slot.get("props") or {})})
                present.append(slot)
    elif vcpus < len(present):
        # the highest first; vCPU 0 (the boot CPU) always stays
        surplus = present[vcpus:]
        await _eject(client, [str(s["qom-path"]) for s in reversed(surplus)], timeout)
    return sum(1 for s in await _cpu_slots(client) if s.get("qom-path"))


@dataclass(frozen=True)
class VcpusSet:
    """What vcpu-set did: the vCPUs asked for and those the domain has now."""

    asked: int
    present: int


def vcpu_set(name: str, vcpus: int, store: StateStore | None = None, ignore_host: bool = False,
             timeout: float = VCPU_UNPLUG_TIMEOUT) -> VcpusSet:
    """``xl vcpu-set NAME VCPUS`` on the qemu platform: CPU hotplug (ACPI)."""
    store = store or StateStore()
    with hotplug.one_at_a_time(name, store):
        record = hotplug.running_domain(name, store)
        check_vcpus(record, vcpus, ignore_host)
        if vcpus < record.vcpus and record.accel != "kvm":
            raise ResizeError(
                f"vcpu-set {name}: lowering vCPUs is refused under {record.accel}: QEMU 7.2's "
                "TCG crashes when a vCPU it unplugged is plugged again (seen here), so pvhvm "
                "unplugs vCPUs only under KVM; the guest can take one offline itself "
                "(echo 0 > /sys/devices/system/cpu/cpuN/online)")
        if record.plan.get("acpi") is False:
            raise ResizeError(f"vcpu-set {name}: the domain has acpi = 0, and QEMU hot-plugs "
                              "x86 CPUs through ACPI")

        async def work(client: QMPClient) -> int:
            return await _set_cpus(client, vcpus, timeout)

        try:
            present: int = asyncio.run(
                hotplug.qmp_session(store.paths(name).control_socket, work))
        finally:
            # what QEMU has, even when plugging failed part way
            with contextlib.suppress(DomainError):
                _record_present_cpus(store, name)
        if present != vcpus:
            raise DomainError(
                f"vcpu-set {name}: the guest did not eject its vCPUs within {timeout:g}s: "
                f"it has {present} of the {vcpus} asked for (QEMU keeps the request; the "
                "guest may still act on it)")
    return VcpusSet(asked=vcpus, present=present)


def _record_present_cpus(store: StateStore, name: str) -> None:
    async def count(client: QMPClient) -> int:
        return sum(1 for s in await _cpu_slots(client) if s.get("qom-path"))

    present: int = asyncio.run(hotplug.qmp_session(store.paths(name).control_socket, count))

    def change(rec: DomainRecord) -> None:
        record_vcpus(rec, present)
        rec.argv = smp_argv(rec.argv, present)

    store.modify(name, change)
