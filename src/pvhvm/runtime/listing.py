"""What ``list``, ``block-list`` and ``network-list`` print: pure functions of domain records.

``xl list`` (tools/xl/xl_info.c) prints a header and one line per domain::

    printf("%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f", name, domid, mem_mib, vcpus,
           running 'r', blocked 'b', paused 'p', shutdown 's', reason ("-rscwS"[reason]),
           dying 'd', cpu_seconds)

Scripts parse that, so it is reproduced exactly (header tabs included). Time(s) is the CPU
time of the domain's QEMU (on Xen it is the vCPUs' time; QEMU's also counts emulation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pvhvm.runtime import xl_long
from pvhvm.runtime.persist import Definition
from pvhvm.runtime.state import DomainRecord, DomainState

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"


def state_flags(state: DomainState) -> str:
    """xl's six state letters ``rbpscd`` for a domain in ``state``.

    A shut-down domain carries its reason in the fifth place (xl: ``-rscwS``, poweroff '-');
    pvhvm's crashed domain is xl's shut down with reason crash, ``---sc-``. A starting
    domain is paused while it is being built, as libxl builds it.
    """
    return {
        DomainState.STARTING: "--p---",
        DomainState.RUNNING: "r-----",
        DomainState.PAUSED: "--p---",
        DomainState.SHUTDOWN: "---s--",
        DomainState.CRASHED: "---sc-",
        DomainState.DYING: "-----d",
    }[state]


@dataclass(frozen=True)
class ListRow:
    """One line of ``list``."""

    name: str
    #: None: a defined domain that is not running (``list --all``), shown "-" as virsh does
    domid: int | None
    memory_mib: int
    vcpus: int
    state: str
    flags: str
    cpu_seconds: float
    #: ``HOST:DISPLAY`` of the VNC server QEMU runs (query-vnc), None without one
    vnc: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def list_rows(
    records: Iterable[DomainRecord], cpu_seconds: Callable[[DomainRecord], float]
) -> list[ListRow]:
    """The rows of ``list``; ``cpu_seconds`` says how much CPU a domain has used."""
    return [
        ListRow(
            name=r.name, domid=r.domid, memory_mib=r.memory_mib, vcpus=r.vcpus, state=r.state,
            flags=state_flags(r.domain_state), cpu_seconds=cpu_seconds(r),
            vnc=vnc_address(r.vnc) if r.vnc else None,
        )
        for r in records
    ]


#: the state ``list --all`` gives a defined domain that is not running (virsh's word)
SHUT_OFF = "shut off"


def defined_rows(definitions: Iterable[Definition],
                 size: Callable[[Definition], tuple[int, int]]) -> list[ListRow]:
    """``list --all``'s rows of defined domains that are not running: no id, no CPU time;
    memory (MiB) and vCPUs as ``size`` reads them from the config (runtime/hostsvc.py)."""
    rows = []
    for definition in definitions:
        memory, vcpus = size(definition)
        rows.append(ListRow(name=definition.name, domid=None, memory_mib=memory, vcpus=vcpus,
                            state=SHUT_OFF, flags="------", cpu_seconds=0.0))
    return rows


def long_defined(definitions: Iterable[Definition]) -> list[dict[str, Any]]:
    """``list -l --all``'s objects of defined domains that are not running."""
    return [{"domid": None, "name": d.name, "uuid": d.uuid, "state": SHUT_OFF,
             "autostart": d.autostart, "config_file": d.source.file} for d in definitions]


def vnc_address(vnc: Mapping[str, Any]) -> str:
    """``HOST:DISPLAY`` of a VNC server as the record keeps it (supervisor.vnc_of), as
    ``virsh vncdisplay`` prints it: ``:N`` when it listens on every address."""
    host, display = str(vnc.get("host", "")), int(vnc.get("display", 0))
    if host in ("", "0.0.0.0", "::"):
        return f":{display}"
    return f"[{host}]:{display}" if ":" in host else f"{host}:{display}"


def format_list(rows: Iterable[ListRow]) -> str:
    """The text of ``xl list``: header and one line per domain."""
    lines = [LIST_HEADER]
    for row in rows:
        lines.append(
            f"{row.name:<40} {'-' if row.domid is None else row.domid:>5} "
            f"{row.memory_mib:5d} {row.vcpus:5d}     "
            f"{row.flags}  {row.cpu_seconds:8.1f}"
        )
    return "\n".join(lines) + "\n"


def long_list(records: Iterable[DomainRecord]) -> list[dict[str, Any]]:
    """``list -l``: as ``xl list -l``, one object per domain with its ``domid`` and its
    ``config`` in libxl's shape (runtime/xl_long.py), then pvhvm's record (its ``plan``,
    argv, state...) under the record's own names."""
    return [{"domid": record.domid, "config": xl_long.domain_config(record), **record.to_json()}
            for record in records]


# --- devices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockDevice:
    """One disk of a domain as QEMU was told to realise it."""

    vdev: str
    devid: int
    type: str
    driver: str
    mode: str
    target: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NetworkDevice:
    """One NIC of a domain as QEMU was told to realise it."""

    devid: int
    type: str
    driver: str
    mac: str
    #: the bridge the vif names ("" for none)
    bridge: str
    #: the NIC is on QEMU user networking: its bridge does not exist on this host
    user_networking: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def bridge_text(self) -> str:
        """The Bridge column: the bridge, and what the NIC is on instead when it is not."""
        if not self.user_networking:
            return self.bridge
        return f"{self.bridge} (absent: user networking)" if self.bridge else "user networking"


def _device_drivers(argv: list[str]) -> dict[str, str]:
    """``-device`` driver names by the device's ``drive=`` or ``id=`` (argv.py's names)."""
    out: dict[str, str] = {}
    for option, value in itertools.pairwise(argv):
        if option != "-device":
            continue
        driver, _, rest = value.partition(",")
        for part in rest.split(","):
            key, _, val = part.partition("=")
            if key in ("drive", "id"):
                out.setdefault(val, driver)
    return out


def block_devices(
    record: DomainRecord, drivers: Mapping[str, str] | None = None
) -> list[BlockDevice]:
    """The domain's disks: vdev, devid, ioemu|xenbus and what realises each: ``drivers``
    (keyed ``disk-<vdev>``), by default the QEMU device in the domain's argv."""
    drivers = _device_drivers(record.argv) if drivers is None else drivers
    out = []
    for disk in record.plan.get("disks", []):
        vdev = str(disk.get("vdev"))
        out.append(BlockDevice(
            vdev=vdev, devid=int(disk.get("devid") or 0), type=str(disk.get("type")),
            driver=drivers.get(f"disk-{vdev}", "?"), mode=str(disk.get("mode") or ""),
            target=str(disk.get("target") or "(empty)"),
        ))
    return out


def _user_networked(argv: list[str]) -> set[str]:
    """Ids of the ``-device``s whose netdev is QEMU user networking (no bridge on this host)."""
    user = {
        part.removeprefix("id=")
        for option, value in itertools.pairwise(argv) if option == "-netdev"
        and value.startswith("user,") for part in value.split(",") if part.startswith("id=")
    }
    out = set()
    for option, value in itertools.pairwise(argv):
        if option == "-device":
            fields = dict(p.partition("=")[::2] for p in value.split(",")[1:])
            if fields.get("netdev") in user and "id" in fields:
                out.add(fields["id"])
    return out


def network_devices(
    record: DomainRecord, drivers: Mapping[str, str] | None = None,
    user_networked: set[str] | None = None,
) -> list[NetworkDevice]:
    """The domain's NICs: devid, ioemu|xenbus, what realises each (``drivers``, keyed
    ``vif-<devid>``, by default the QEMU device model in the argv), MAC and bridge. A NIC put on
    QEMU user networking because its bridge does not exist here says so
    (user_networking; ``user_networked``: the keys of such NICs when ``drivers`` are given)."""
    if user_networked is not None:
        user = user_networked
    else:
        user = _user_networked(record.argv) if drivers is None else set()
    drivers = _device_drivers(record.argv) if drivers is None else drivers
    out = []
    for vif in record.plan.get("vifs", []):
        devid = int(vif.get("devid") or 0)
        out.append(NetworkDevice(
            devid=devid, type=str(vif.get("type")), driver=drivers.get(f"vif-{devid}", "?"),
            mac=str(vif.get("mac")), bridge=str(vif.get("bridge") or ""),
            user_networking=f"vif-{devid}" in user,
        ))
    return out


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Plain columns, left-aligned and padded to the widest cell, as xl's lists."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = []
    for cells in [header, *rows]:
        line = " ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def format_block_list(devices: list[BlockDevice]) -> str:
    return format_table(
        ["Vdev", "Devid", "Type", "Driver", "Mode", "Target"],
        [[d.vdev, str(d.devid), d.type, d.driver, d.mode, d.target] for d in devices],
    )


def format_network_list(devices: list[NetworkDevice]) -> str:
    return format_table(
        ["Idx", "Type", "Driver", "Mac Addr.", "Bridge"],
        [[str(d.devid), d.type, d.driver, d.mac, d.bridge_text] for d in devices],
    )
