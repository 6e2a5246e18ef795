"""Hot-plugged PV devices on QEMU: the QMP arguments that add them to a running QEMU and the
argv that re-creates them when QEMU is started again (a supervisor restart, on_reboot).

Pure functions of the device plan. Facts (QEMU 7.2, qapi/block-core.json, qdev-monitor.c):

* a disk is ``blockdev-add`` of a format node ``disk-<vdev>`` over a ``file``/``host_device``
  protocol node, then ``device_add`` of ``virtio-blk-pci`` ``id=vbd-<devid>`` on it; the same
  node is ``-blockdev JSON`` on a command line, so both spell one dict;
* a NIC is ``netdev_add`` (``user`` or ``bridge``) ``net<devid>`` then ``device_add`` of
  ``virtio-net-pci`` ``id=vif-<devid>``;
* on q35 the device goes on one of the empty ``pcie-root-port``s reserved at create
  (``bus=hotplugN``; pcie.0 itself has no hotplug, docs/pcie.txt); on pc on the root bus.
"""

from __future__ import annotations

import json
from typing import Any

from pvhvm.plan.plan import DiskPlan, VifPlan
from pvhvm.qemu.argv import PV_DISK_TUNING, QEMU_FORMATS, DiskTuning
from pvhvm.qemu.opts import OptionPair, option_string


def blockdev_node(disk: DiskPlan, *, direct_io: bool, block_device: bool,
                  tuning: DiskTuning = PV_DISK_TUNING) -> dict[str, Any]:
    """``blockdev-add``'s arguments for a PV disk on a file or (``block_device``) a host
    block device; ``direct_io``: its target can be opened with O_DIRECT."""
    direct = direct_io and tuning.cache in ("none", "directsync")
    protocol: dict[str, Any] = {
        "driver": "host_device" if block_device else "file", "filename": disk.target,
        "aio": "native" if direct and tuning.aio == "native" else "threads",
        "cache": {"direct": direct, "no-flush": False},
    }
    if disk.access.value == "w!":
        protocol["locking"] = "off"
    return {
        "driver": QEMU_FORMATS[disk.format], "node-name": f"disk-{disk.vdev}",
        "read-only": not disk.access.writable, "file": protocol,
    }


def disk_device(disk: DiskPlan, vcpus: int, bus: str | None,
                tuning: DiskTuning = PV_DISK_TUNING) -> dict[str, Any]:
    """``device_add``'s arguments for a PV disk (virtio-blk-pci)."""
    device: dict[str, Any] = {
        "driver": "virtio-blk-pci", "id": f"vbd-{disk.devid}", "drive": f"disk-{disk.vdev}",
        "num-queues": tuning.num_queues or vcpus, "queue-size": tuning.queue_size,
    }
    if bus is not None:
        device["bus"] = bus
    return device


def nic_netdev(vif: VifPlan, bridges: frozenset[str]) -> dict[str, Any]:
    """``netdev_add``'s arguments: the vif's bridge when it exists here, else user networking
    (as create does)."""
    if vif.bridge in bridges:
        return {"type": "bridge", "id": f"net{vif.devid}", "br": vif.bridge}
    return {"type": "user", "id": f"net{vif.devid}"}


def nic_device(vif: VifPlan, bus: str | None) -> dict[str, Any]:
    """``device_add``'s arguments for a PV NIC (virtio-net-pci, no option ROM)."""
    device: dict[str, Any] = {
        "driver": "virtio-net-pci", "id": f"vif-{vif.devid}", "netdev": f"net{vif.devid}",
        "mac": vif.mac, "romfile": "",
    }
    if vif.mtu is not None:
        device["host_mtu"] = vif.mtu
    if bus is not None:
        device["bus"] = bus
    return device


def _options(values: dict[str, Any], first: str) -> str:
    """``VALUE,KEY=VALUE,...`` with ``first``'s value leading bare (QEMU's -device/-netdev
    form), made by qemu.opts.option_string."""
    pairs: list[OptionPair] = [(key, value) for key, value in values.items() if key != first]
    return option_string(pairs, head=str(values[first]))


def device_argv(device: dict[str, Any]) -> list[str]:
    return ["-device", _options(device, "driver")]


def blockdev_argv(node: dict[str, Any]) -> list[str]:
    return ["-blockdev", json.dumps(node, separators=(",", ":"))]


def netdev_argv(netdev: dict[str, Any]) -> list[str]:
    return ["-netdev", _options(netdev, "type")]
