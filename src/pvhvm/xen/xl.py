"""xl(1), the toolstack Xen ships, run for pvhvm's xen platform on a Xen host (dom0).

On a host with a hypervisor behind it (``/dev/xen/privcmd``), ``pvhvm create --platform xen``
plans the config as everywhere, writes export-xl's xl.cfg (xen/xlcfg.py) and hands it to
``xl create``: libxl builds the domain and writes its xenbus nodes, never pvhvm. Every later
verb is the xl verb of the same name (xl(1) of Xen 4.17). This module only runs xl and reads
what it prints; an xl failure becomes one line (:class:`XlError`), the reason libxl gave.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvhvm.errors import DomainError
from pvhvm.plan.plan import Plan
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, write_atomic
from pvhvm.xen.xlcfg import export_xl

#: the privcmd device a toolstack domain has (Linux's xen-privcmd, or xenfs's older node)
PRIVCMD = (Path("/dev/xen/privcmd"), Path("/proc/xen/privcmd"))
#: how long one xl command may take: ``xl create`` of a PV guest took 11-30 s under TCG
#: (SPEC.md, "A real Xen host inside QEMU"), an HVM one's device model more
XL_TIMEOUT = 600.0
#: libxl's own prefix on its messages: ``libxl: error: libxl_create.c:1234:func: ``
_LIBXL_PREFIX = re.compile(r"^libxl: (?:error|warning|debug|info): (?:[\w./-]+:\d+:\w+: )?")
#: export-xl's file for the domain, in its state directory: what ``xl create`` was given
XL_CONFIG = "xl.cfg"
#: libxl's report of a hotplug script it SIGKILLed at LIBXL_HOTPLUG_TIMEOUT (40 s in 4.17)
_KILLED_SCRIPT = re.compile(r"(\S+/scripts/\S+ (?:add|remove|online|offline)) \[\d+\] died due "
                            r"to fatal signal Killed")
#: libxl's prefix on a message about one domain: ``Domain 7:``
_DOMAIN_PREFIX = re.compile(r"\bDomain (\d+):")
_NOISE = ("Parsing config from", "xl: ", "Waiting for domain")


class XlError(DomainError):
    """xl refused or failed: one line, the reason libxl gave."""


def hypervisor_present(privcmd: Sequence[Path] = PRIVCMD) -> bool:
    """Whether this host is a Xen toolstack domain (dom0): a hypervisor is behind it."""
    return any(path.exists() for path in privcmd)


def one_line(output: str) -> str:
    """xl's stderr as one line: its error lines (libxl's location prefix dropped), else its
    last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = []
    for line in lines:
        if "error" in line.lower() or line.startswith("libxl: "):
            text = _LIBXL_PREFIX.sub("", line)
            if text not in errors:
                errors.append(text)
    chosen = errors or [line for line in lines if not line.startswith(_NOISE)] or lines[-1:]
    text = "; ".join(chosen) or "no output"
    return text if len(text) <= 400 else text[:397] + "..."


def domids_named(message: str) -> list[int]:
    """The domids libxl's messages name (``Domain 7:unable to add disk devices``)."""
    return sorted({int(found) for found in _DOMAIN_PREFIX.findall(message)})


@dataclass(frozen=True)
class XlDomain:
    """One line of ``xl list``."""

    name: str
    domid: int
    memory_mib: int
    vcpus: int
    #: xl's six state letters, ``r-----`` ... ``--p---`` ... ``---s--``
    flags: str
    cpu_seconds: float

    @property
    def state(self) -> DomainState:
        """The state xl's letters say (r b p s c d): blocked is running to pvhvm."""
        for letter, state in (("d", DomainState.DYING), ("c", DomainState.CRASHED),
                              ("s", DomainState.SHUTDOWN), ("p", DomainState.PAUSED)):
            if letter in self.flags:
                return state
        return DomainState.RUNNING


class Xl:
    """Runs ``xl`` (the program ``program``, found on PATH) as this process's user."""

    def __init__(self, program: str = "xl") -> None:
        self.program = program

    def argv(self, *args: str) -> list[str]:
        found = shutil.which(self.program)
        if found is None:
            raise XlError(f"{self.program} (Xen's toolstack, xen-utils) is not installed on "
                          "this Xen host")
        return [found, *args]

    def run(self, *args: str, timeout: float = XL_TIMEOUT) -> str:
        """``xl ARGS``; its stdout, or XlError with what it said."""
        argv = self.argv(*args)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise XlError(f"xl {args[0]} did not finish within {timeout:g} s") from err
        except OSError as err:
            raise XlError(f"cannot run {argv[0]}: {err.strerror}") from err
        if done.returncode != 0:
            said = done.stderr + done.stdout
            killed = _KILLED_SCRIPT.search(said)
            hint = (f" ({killed.group(1)} was killed at libxl's fixed 40 s hotplug-script "
                    "timeout: this host was too busy to run it in time)" if killed else "")
            raise XlError(f"xl {args[0]}: {one_line(said)}{hint}")
        return done.stdout

    def list(self) -> dict[str, XlDomain]:
        """Every domain xl knows (``xl list``), by name."""
        out: dict[str, XlDomain] = {}
        for line in self.run("list", timeout=60).splitlines()[1:]:
            fields = line.rsplit(None, 5)
            if len(fields) != 6:
                continue
            name, domid, memory, vcpus, flags, seconds = fields
            try:
                out[name.strip()] = XlDomain(name.strip(), int(domid), int(memory), int(vcpus),
                                             flags, float(seconds))
            except ValueError:
                continue
        return out

    def find(self, name: str) -> XlDomain | None:
        return self.list().get(name)

    def create(self, config: Path, paused: bool = False) -> None:
        """``xl create [-p] CONFIG``: libxl builds the domain (and destroys what it made when
        the build fails)."""
        self.run("create", *(["-p"] if paused else []), str(config))

    def console(self, name: str) -> None:
        """``xl console NAME`` on this terminal until ^] (xenconsole's escape, as pvhvm's)."""
        done = subprocess.run(self.argv("console", name), check=False)
        if done.returncode != 0:
            raise XlError(f"xl console {name} failed (exit status {done.returncode})")


# --- pvhvm's domains on a Xen host: a record per domain, the domain itself libxl's -------------


def is_xl_record(record: DomainRecord) -> bool:
    """Whether ``record`` is of a domain xl created (not one pvhvm wrote into a XenStore)."""
    return record.plan.get("toolstack") == "xl"


def create(plan: Plan, records: StateStore, xl: Xl, paused: bool = False) -> DomainRecord:
    """``xl create`` of export-xl's file for ``plan``; the record takes xl's domid.

    A name xl already runs is refused before anything is made; a failed create leaves no
    domain (libxl destroys a domain whose build failed; one left by an interrupted create is
    destroyed here) and no record."""
    if xl.find(plan.name) is not None:
        raise DomainError(f"a domain named {plan.name!r} already runs on this Xen host "
                          "(xl list); pvhvm did not create it")
    exported = export_xl(plan)
    paths = records.claim(plan.name)
    config = paths.directory / XL_CONFIG
    try:
        write_atomic(config, exported.text)
        record = DomainRecord(
            name=plan.name, domid=-1, uuid=plan.uuid, platform="xen",
            memory_mib=plan.memory_mib, vcpus=plan.vcpus,
            plan={**plan.to_json(), "toolstack": "xl", "xl_config": str(config)},
            argv=[], on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
            on_crash=plan.on_crash, state=DomainState.STARTING.value,
        )
        records.write(record)
        xl.create(config, paused=paused)
        found = xl.find(plan.name)
        if found is None:
            raise XlError(f"xl create returned, but xl list has no domain {plan.name!r}")
        record.domid = found.domid
        record.state = found.state.value
        records.write(record)
    except BaseException:
        with contextlib.suppress(XlError, OSError):
            if xl.find(plan.name) is not None:
                xl.run("destroy", plan.name)
        records.release(plan.name)
        raise
    return record


def reconcile(record: DomainRecord, live: XlDomain | None, records: StateStore) -> bool:
    """Bring ``record`` up to what xl says (domid, state); a domain xl no longer has is gone
    (destroyed, or shut down with on_poweroff=destroy), and so is its record: False."""
    if live is None:
        records.release(record.name)
        return False
    if (record.domid, record.state) != (live.domid, live.state.value):
        record.domid, record.state = live.domid, live.state.value
        records.write(record)
    return True


def device_states(xl: Xl, name: str) -> dict[tuple[str, int], str]:
    """Each vbd's and vif's backend path and state, as ``xl block-list`` and ``xl
    network-list`` print them, keyed (kind, devid)."""
    out: dict[tuple[str, int], str] = {}
    for kind, verb, state_column in (("vbd", "block-list", 3), ("vif", "network-list", 4)):
        for line in xl.run(verb, name, timeout=60).splitlines()[1:]:
            fields = line.split()
            if len(fields) <= state_column or not fields[0].isdigit():
                continue
            out[(kind, int(fields[0]))] = (f"{fields[-1]} (state {fields[state_column]})")
    return out


def device_drivers(record: DomainRecord, xl: Xl) -> dict[str, str]:
    """What realises each device of a domain xl runs, keyed as listing keys them
    (``disk-<vdev>``, ``vif-<devid>``): a PV device's backend and its xenbus state; an
    emulated one's device model, with the PV path libxl gives it too."""
    live = device_states(xl, record.name)
    out: dict[str, str] = {}
    for section, kind, prefix, key in (("disks", "vbd", "disk-", "vdev"),
                                       ("vifs", "vif", "vif-", "devid")):
        for device in record.plan.get(section, []):
            backend = live.get((kind, int(device.get("devid") or 0)))
            if device.get("type") == "xenbus":
                out[f"{prefix}{device.get(key)}"] = backend or "missing (xl lists no such device)"
            else:
                out[f"{prefix}{device.get(key)}"] = ("device model" + (
                    f"; PV path {backend}" if backend else ""))
    return out
