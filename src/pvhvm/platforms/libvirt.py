"""The libvirt platform: domains run by a libvirt daemon (local or by URI), through libvirt's
Python binding (libvirt-python).

``create`` turns the plan into domain XML (:mod:`pvhvm.libvirt.xml`) and starts it as a
transient domain (``virDomainCreateXML``, as ``virsh create``): like an xl domain it is gone
once it is destroyed or powers off with on_poweroff=destroy. pvhvm keeps a record per domain in
``<state dir>/libvirt`` (the URI, the plan, a domid unique across pvhvm's platforms); the
record of a domain libvirt no longer has is removed when next seen. The verbs map to libvirt's
(virsh's): destroy, shutdown (ACPI power button), suspend/resume, reset, ``virsh console``,
and live migration to another daemon's URI (the record then names that URI).

The live-device verbs keep pvhvm's rules on libvirt: block-/network-attach plan the device as
the qemu platform does (runtime/hotplug.py: PV only, pvhvm's MACs) and hand libvirt the
``<disk>``/``<interface>`` that export-libvirt writes (``virDomainAttachDeviceFlags``,
AFFECT_LIVE); detach asks libvirt to unplug (``virDomainDetachDeviceAlias``) and polls the
live XML until the device is gone, for DETACH_TIMEOUT; cd-insert/-eject are a media change
(``virDomainUpdateDeviceFlags``); mem-set moves the virtio balloon (``virDomainSetMemory
Flags``). save writes libvirt's own save image, with pvhvm's domain image in the domain XML's
metadata, and restore recognises it (pvhvm.libvirt.saveimage says why).

Only on a local URI (no host part) does pvhvm log the serial console to its own log directory
(so ``pvhvm report`` can read it) and put a NIC whose bridge this host lacks on user networking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pvhvm.errors import DomainError, InputError, NotOnPlatformError, PlanError
from pvhvm.guest.report import END
from pvhvm.libvirt import saveimage
from pvhvm.libvirt.xml import (
    LIBVIRT_FORMATS,
    LibvirtExport,
    device_text,
    disk_element,
    domain_xml,
    free_virtio_target,
    hostfwd_note,
    ide_target,
    interface_element,
)
from pvhvm.plan.plan import Plan
from pvhvm.plan.plan import Platform as PlanTarget
from pvhvm.platforms.base import (
    DETACH_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    Created,
    CreateOptions,
    DeviceChange,
    DomainPlatform,
    ReportSource,
)
from pvhvm.qemu.accel import choose_accel, probe_cache_dir
from pvhvm.runtime import hotplug, lifecycle, listing, logs, resize, stats
from pvhvm.runtime.hotplug import HotplugError
from pvhvm.runtime.listing import BlockDevice, NetworkDevice
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore
from pvhvm.runtime.stats import DomainSample

if TYPE_CHECKING:  # save is imported by its verbs: a dry run needs none of it
    from pvhvm.runtime.save import Progress, SaveOutcome
    from pvhvm.runtime.savefile import DomainImage

DEFAULT_URI = "qemu:///system"
#: how often ``shutdown -w`` presses the power button again while the guest runs
REPRESS_INTERVAL = 5.0
POLL = 0.1
#: plan keys of a record that say where it ran this time, not what it is (kept out of a save)
RUN_KEYS = ("libvirt_xml", "libvirt_id", "libvirt_cpu_seconds")


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a daemon on this host (no host part: qemu:///system,
    qemu+unix:///system?socket=...)."""
    return not urlsplit(uri).netloc


def _binding() -> Any:
    """libvirt's Python binding, imported when a libvirt domain is first touched (most
    commands never need it); its default handler, which prints every error, silenced."""
    try:
        import libvirt
    except ImportError as err:
        raise DomainError(
            "--platform libvirt needs libvirt's Python binding: pip install libvirt-python "
            "(with libvirt-dev and pkg-config), or Debian's python3-libvirt"
        ) from err
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _message(err: Exception) -> str:
    get = getattr(err, "get_error_message", None)
    text = get() if callable(get) else None
    return str(text or err)


class LibvirtPlatform(DomainPlatform):
    """A libvirt daemon's QEMU driver, at ``--connect URI`` (default qemu:///system)."""

    name = "libvirt"
    plan_target = PlanTarget.QEMU
    create_options = frozenset({"accel", "paused", "console", "connect"})

    def __init__(self, store: StateStore | None = None) -> None:
        self._base = store

    @property
    def records(self) -> StateStore:
        base = self._base.base if self._base is not None else StateStore().base
        return StateStore(base / "libvirt", base=base)

    # --- connections ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self, uri: str) -> Iterator[Any]:
        libvirt = _binding()
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise DomainError(f"cannot connect to libvirt at {uri}: {_message(err)}") from err
        try:
            yield conn
        except libvirt.libvirtError as err:
            raise DomainError(f"libvirt at {uri}: {_message(err)}") from err
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _lookup(self, conn: Any, record: DomainRecord) -> Any | None:
        """The libvirt domain of ``record``, or None when libvirt has none (or another one
        with the name: a different uuid)."""
        libvirt = _binding()
        try:
            dom = conn.lookupByName(record.name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return dom if dom.UUIDString() == record.uuid else None

    @staticmethod
    def _active(dom: Any) -> bool:
        """Whether ``dom`` still runs; False once libvirt has forgotten it (a transient
        domain that powered off)."""
        libvirt = _binding()
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    @staticmethod
    def _uri(record: DomainRecord) -> str:
        return str(record.plan.get("libvirt_uri", DEFAULT_URI))

    @staticmethod
    def _state(dom: Any) -> DomainState:
        libvirt = _binding()
        state = dom.state()[0]
        return {
            libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
            libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
            libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
            libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PAUSED,
            libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.DYING,
            libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTDOWN,
            libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
        }.get(state, DomainState.RUNNING)

    # --- create --------------------------------------------------------------------------

    def _user_networking(self, plan: Plan, uri: str) -> frozenset[int]:
        if not is_local(uri):
            return frozenset()
        bridges = lifecycle.host_bridges()
        return frozenset(v.devid for v in plan.vifs if v.bridge not in bridges)

    def _export(self, plan: Plan, options: CreateOptions, virt_type: str) -> LibvirtExport:
        uri = options.connect or DEFAULT_URI
        log = str(self.records.paths(plan.name).console_log) if is_local(uri) else None
        return domain_xml(plan, virt_type, console_log=log,
                          user_networking=self._user_networking(plan, uri))

    def _virt_type(self, plan: Plan, options: CreateOptions, probe: bool) -> str:
        """kvm or qemu (TCG): as --accel says; auto, on a local URI, KVM only where pvhvm has
        proven it boots a kernel here (as the qemu platform decides); on a remote one, kvm."""
        uri = options.connect or DEFAULT_URI
        if (options.accel or "auto") == "auto" and not is_local(uri):
            return "kvm"
        accel = choose_accel(
            options.accel or "auto", cache_dir=probe_cache_dir(),
            kernel=Path(plan.kernel) if plan.kernel else None, probe_allowed=probe,
        )
        return "kvm" if accel.value == "kvm" else "qemu"

    def realise_warnings(self, plan: Plan, options: CreateOptions) -> list[str]:
        forwarded = [hostfwd_note(v) for v in plan.vifs if v.hostfwd]
        if forwarded and not options.dry_run:
            raise PlanError("; ".join(forwarded))
        notes = list(domain_xml(plan, "qemu").notes)
        if not is_local(options.connect or DEFAULT_URI):
            return notes  # that host's bridges are its own business
        return lifecycle.network_warnings(plan, lifecycle.host_bridges()) + notes

    def dry_run(self, plan: Plan, options: CreateOptions) -> dict[str, Any]:
        exported = self._export(plan, options, self._virt_type(plan, options, probe=False))
        return {"libvirt_uri": options.connect or DEFAULT_URI, "libvirt_xml": exported.xml}

    def create(self, plan: Plan, options: CreateOptions) -> Created:
        uri = options.connect or DEFAULT_URI
        libvirt = _binding()
        virt_type = self._virt_type(plan, options, probe=True)
        exported = self._export(plan, options, virt_type)
        flags = libvirt.VIR_DOMAIN_START_PAUSED if options.paused else 0

        def build(domid: int) -> DomainRecord:
            if options.source is not None:
                lifecycle.write_source(self.records.paths(plan.name).directory,
                                       options.source)
            return DomainRecord(
                name=plan.name, domid=domid, uuid=plan.uuid,
                platform=self.name, memory_mib=plan.memory_mib, vcpus=plan.vcpus,
                plan={**plan.to_json(), "libvirt_uri": uri, "libvirt_xml": exported.xml},
                argv=[], on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
                on_crash=plan.on_crash, state=DomainState.STARTING.value,
                accel="kvm" if virt_type == "kvm" else "tcg",
                console=f"virsh -c {uri} console {plan.name}",
            )

        # The XML appends to the log (a migration's destination QEMU opens it again); a new
        # domain starts it empty, so an old report is never read as this guest's.
        record = self._start(plan.name, uri, build, lambda conn: conn.createXML(
            exported.xml, flags), fresh_log=True)
        how = "created paused" if options.paused else "started"
        return Created(record, f"{how} by libvirt at {uri} ({record.accel}); "
                               f"console: {record.console}")

    def _start(self, name: str, uri: str, build: Callable[[int], DomainRecord],
               start: Callable[[Any], Any], fresh_log: bool = False) -> DomainRecord:
        """Claim ``name``, record ``build(domid)`` as starting, have libvirt start it
        (``start(conn)`` returns the libvirt domain) and record what libvirt says; a failure
        anywhere destroys what libvirt started and leaves no record (create, restore).
        ``fresh_log``: a new run of the console log (once the name is this domain's): the log is
        rotated by size and gets a start marker, as the qemu platform's supervisor does, so a
        crash trace of an earlier run is kept and ``report`` reads only this run."""
        records = self.records
        paths = records.claim(name)
        paths.console_log.parent.mkdir(parents=True, exist_ok=True)
        if fresh_log:
            logs.rotate(paths.console_log)
            logs.write_marker(paths.console_log, name, None)
        dom: Any = None
        try:
            with records.locked():
                record = build(records.next_domid())
                records.write(record)
            with self._connection(uri) as conn:
                dom = start(conn)
                record.plan["libvirt_id"] = dom.ID()
                record.state = self._state(dom).value
            records.write(record)
        except BaseException:
            if dom is not None:
                with contextlib.suppress(Exception):
                    dom.destroy()
            records.release(name)
            raise
        return record

    # --- finding -------------------------------------------------------------------------

    def holds(self, name: str) -> bool:
        return self.records.paths(name).directory.exists()

    def _refresh(self, name: str) -> tuple[DomainRecord, Any] | None:
        """``name``'s record with its state read from libvirt now, and its libvirt domain;
        None (record removed) when libvirt no longer has it."""
        records = self.records
        record = records.read(name)
        if record is None:  # a create still writing it, or killed before: destroy removes it
            return None
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                records.release(name)
                return None
            libvirt = _binding()
            try:
                record.state = self._state(dom).value
                # virDomainGetInfo: [state, max memory, memory, vCPUs, CPU time in ns]
                record.plan["libvirt_cpu_seconds"] = dom.info()[4] / 1e9
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                records.release(name)  # a transient domain that has just powered off
                return None
            return record, dom

    def find(self, name: str) -> DomainRecord:
        found = self._refresh(name)
        if found is None:
            raise DomainError(f"no domain named {name!r}")
        return found[0]

    def domains(self) -> list[DomainRecord]:
        """Every recorded domain libvirt still has; one whose daemon cannot be reached is
        listed as last recorded (a list of every platform should not fail for it)."""
        out = []
        for name in self.records.names():
            try:
                found = self._refresh(name)
            except DomainError:
                record = self.records.read(name)
                if record is not None:
                    out.append(record)
                continue
            if found is not None:
                out.append(found[0])
        return sorted(out, key=lambda r: r.domid)

    def cpu_seconds(self, record: DomainRecord) -> float:
        """As libvirt read it when the record was last refreshed (``list`` refreshes it)."""
        return float(record.plan.get("libvirt_cpu_seconds", 0.0))

    def destroy(self, name: str) -> None:
        records = self.records
        record = records.read(name)
        if record is None:
            if not records.paths(name).directory.exists():
                raise DomainError(f"no domain named {name!r}")
            records.release(name)
            return
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is not None and self._active(dom):
                libvirt = _binding()
                try:
                    dom.destroy()
                except libvirt.libvirtError as err:  # it stopped meanwhile: as good
                    if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                    libvirt.VIR_ERR_OPERATION_INVALID):
                        raise
        records.release(name)

    # --- verbs ---------------------------------------------------------------------------

    def _act(self, name: str, action: str) -> None:
        record = self.find(name)
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            getattr(dom, action)()

    def pause(self, name: str) -> None:
        """``virsh suspend``."""
        self._act(name, "suspend")

    def unpause(self, name: str) -> None:
        """``virsh resume``."""
        self._act(name, "resume")

    def reboot(self, name: str) -> None:
        """``virsh reboot --mode acpi``: the guest is asked (libvirt's fakeReboot)."""
        libvirt = _binding()
        record = self.find(name)
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            dom.reboot(libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)

    def reset(self, name: str) -> None:
        """``virsh reset``: a hard reset, as on the qemu platform."""
        record = self.find(name)
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            dom.reset(0)

    def shutdown(self, name: str, wait: bool = False,
                 timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """The ACPI power button (``virsh shutdown --mode acpi``); ``wait``: pressed again
        every REPRESS_INTERVAL seconds until libvirt has no such running domain."""
        libvirt = _binding()
        record = self.find(name)
        if wait and record.domain_state is DomainState.PAUSED:
            raise DomainError(
                f"domain {name!r} is paused, so its guest cannot act on the power button "
                f"('pvhvm unpause {name}' first, or 'pvhvm destroy {name}')"
            )
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            if not wait:
                return
            start = time.monotonic()
            presses = 1
            while time.monotonic() < start + timeout:
                dom = self._lookup(conn, record)
                if dom is None or not self._active(dom):
                    if dom is None:
                        self.records.release(name)
                    return
                if time.monotonic() >= start + presses * REPRESS_INTERVAL:
                    presses += 1
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                time.sleep(POLL)
        times = "once" if presses == 1 else f"{presses} times"
        raise DomainError(
            f"domain {name!r} did not shut down within {timeout:g}s: the guest ignored the ACPI "
            f"power button, pressed {times} (use 'pvhvm destroy {name}' to stop it at once)"
        )

    def console(self, name: str) -> None:
        """``virsh console`` (^] detaches; libvirt allows one console session per domain)."""
        record = self.find(name)
        virsh = shutil.which("virsh")
        if virsh is None:
            raise DomainError("pvhvm console on the libvirt platform uses virsh "
                              "(Debian's libvirt-clients), which is not installed")
        done = subprocess.run([virsh, "-c", self._uri(record), "console", name], check=False)
        if done.returncode != 0:
            raise DomainError(f"virsh console {name} failed (exit status {done.returncode})")

    def _live_devices(self, record: DomainRecord) -> dict[str, str]:
        """What realises each device, from the live domain XML, keyed as the listings key
        them (``disk-<vdev>``, ``vif-<devid>``): e.g. ``libvirt ide hda``, ``libvirt virtio``."""
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {record.name!r}")
            live = ET.fromstring(dom.XMLDesc(0))
        out: dict[str, str] = {}
        for device in live.find("devices") or []:
            alias = device.find("alias")
            key = (alias.get("name") or "").removeprefix("ua-") if alias is not None else ""
            if device.tag == "disk" and key.startswith("disk-"):
                target = device.find("target")
                if target is not None:
                    out[key] = f"libvirt {target.get('bus')} {target.get('dev')}"
            elif device.tag == "interface" and key.startswith("vif-"):
                model = device.find("model")
                kind = device.get("type")
                out[key] = f"libvirt {model.get('type') if model is not None else '?'}"
                if kind == "user":
                    out[f"user:{key}"] = "user"  # network_devices: a note, not a driver
        return out

    def block_devices(self, name: str) -> list[BlockDevice]:
        record = self.find(name)
        return listing.block_devices(record, self._live_devices(record))

    def network_devices(self, name: str) -> list[NetworkDevice]:
        record = self.find(name)
        drivers = self._live_devices(record)
        user = {key.removeprefix("user:") for key in drivers if key.startswith("user:")}
        return listing.network_devices(record, drivers, user_networked=user)

    def migrate(self, name: str, destination: str, *, migrate_uri: str | None = None,
                unsafe: bool = False) -> DomainRecord:
        """Live migration through libvirt, managed by this client (virDomainMigrate3: both
        daemons are connected to from here, so neither needs to reach the other's libvirtd;
        only the source's QEMU must reach the destination's, at ``migrate_uri`` or where the
        destination's libvirt says: its qemu.conf ``migration_host``, else its hostname).

        ``migrate_uri``: where the destination's QEMU takes the migration stream (virsh's
        ``--migrateuri``: ``tcp://ADDRESS``, ``unix://PATH``). ``unsafe``: skip libvirt's
        shared-storage check (virsh's ``--unsafe``) for disks that are shared in fact but not
        on a file system libvirt knows as shared. The console log pvhvm gave libvirt (a file
        in this host's pvhvm state) does not follow the domain to another host, whose file
        system pvhvm knows nothing of; it comes back, appended to, when the domain returns to
        this host (:func:`_destination_xml`). A failed migration leaves the domain running
        where it was.
        """
        libvirt = _binding()
        record = self.find(name)
        source = self._uri(record)
        if destination == source:
            raise DomainError(f"domain {name!r} already runs at {source}")
        flags = libvirt.VIR_MIGRATE_LIVE | (libvirt.VIR_MIGRATE_UNSAFE if unsafe else 0)
        params: dict[str, str] = {}
        if migrate_uri is not None:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
        with self._connection(source) as conn, self._connection(destination) as dconn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            given = _console_log(ET.fromstring(str(record.plan.get("libvirt_xml") or "<x/>")))
            changed = _destination_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE),
                                       given, local=is_local(destination))
            if changed is not None:
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = changed
            try:
                moved = dom.migrate3(dconn, params, flags)
            except libvirt.libvirtError as err:
                raise DomainError(
                    f"domain {name!r} was not migrated from {source} to {destination} (it "
                    f"still runs at {source}): {_message(err)}"
                ) from err
            record.plan["libvirt_uri"] = destination
            record.plan["libvirt_id"] = moved.ID()
            record.console = f"virsh -c {destination} console {name}"
            record.state = self._state(moved).value
        self.records.write(record)
        return record

    def vcpu_set(self, name: str, vcpus: int, ignore_host: bool = False) -> DeviceChange:
        """``virsh setvcpus --live``: libvirt hot-plugs or unplugs the vCPUs over QMP."""
        libvirt = _binding()
        record = self.find(name)
        resize.check_vcpus(record, vcpus, ignore_host)
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            dom.setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        resize.record_vcpus(record, vcpus)
        self.records.write(record)
        return DeviceChange(f"{vcpus} vCPU(s) (libvirt setvcpus --live)")

    def report_source(self, name: str) -> ReportSource:
        """The file the domain's serial console goes to, as its live domain XML names it (the
        ``<log>`` pvhvm gave libvirt, or a ``file:`` serial's own file), while the domain runs
        on this host. A remote host's files are not readable from here in general, and that
        the same path exists here proves nothing (it may be another guest's log), so a
        domain on another host, or one whose console is logged to no file (no serial port, or
        created on another host, then migrated here), is refused and pointed at its console."""
        record = self.find(name)
        uri = self._uri(record)
        how = (f"its guest prints the report on its console ('pvhvm console {name}'; the "
               "pvhvm guest image prints it again with 'sh /etc/pvhvm/report.sh')")
        if not is_local(uri):
            raise NotOnPlatformError(
                f"domain {name!r} runs on the libvirt host at {uri}, whose console log pvhvm "
                f"cannot read from this host: {how}", platform=self.name, verb="report")
        with self._connection(uri) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            live = ET.fromstring(dom.XMLDesc(0))
        log = _console_file(live)
        if log is None:
            raise NotOnPlatformError(
                f"domain {name!r} logs its console to no file (it has no serial console, or "
                f"was created by libvirt on another host and migrated here): {how}",
                platform=self.name, verb="report")
        reported = log.exists() and END in logs.current_run(log.read_text(errors="replace"))
        if not reported and record.domain_state is not DomainState.RUNNING:
            raise DomainError(f"domain {name!r} is {record.state} and has not reported yet")
        return ReportSource(console_log=log, domain_directory=self.records.paths(name).directory)

    # --- devices of a running domain -----------------------------------------------------

    @contextlib.contextmanager
    def _running(self, name: str, verb: str) -> Iterator[tuple[DomainRecord, Any, int]]:
        """``name``'s record, its libvirt domain and the flags a device change takes (live,
        and config too when the domain is persistent), one device verb at a time."""
        libvirt = _binding()
        records = self.records
        with records.flocked(records.paths(name).hotplug_lock):
            record = self.find(name)
            if record.domain_state not in (DomainState.RUNNING, DomainState.PAUSED):
                raise DomainError(f"domain {name!r} is {record.state}: its devices can change "
                                  "only while it runs or is paused")
            with self._connection(self._uri(record)) as conn:
                dom = self._lookup(conn, record)
                if dom is None:
                    raise DomainError(f"no domain named {name!r}")
                flags = libvirt.VIR_DOMAIN_AFFECT_LIVE
                if dom.isPersistent():
                    flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
                try:
                    yield record, dom, flags
                except libvirt.libvirtError as err:
                    raise DomainError(f"{verb} {name}: libvirt refused it: {_message(err)}"
                                      + _slot_hint(err)) from err

    @staticmethod
    def _live_element(dom: Any, alias: str) -> ET.Element | None:
        """The live domain XML's device whose alias is ``alias``; None once it is gone."""
        devices = ET.fromstring(dom.XMLDesc(0)).find("devices")
        for device in devices if devices is not None else []:
            element = device.find("alias")
            if element is not None and element.get("name") == alias:
                return device
        return None

    def _unplug(self, dom: Any, alias: str, flags: int, timeout: float) -> bool:
        """Ask libvirt to unplug ``alias`` (the guest is asked: ACPI/PCIe hot-unplug) and
        poll the live XML until libvirt has removed it (on QEMU's DEVICE_DELETED); False
        when it is still there after ``timeout`` seconds."""
        if self._live_element(dom, alias) is None:
            return True
        dom.detachDeviceAlias(alias, flags)
        deadline = time.monotonic() + timeout
        while True:
            if self._live_element(dom, alias) is None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def _record_change(self, name: str, change: Callable[[DomainRecord], None],
                       undo: Callable[[], None]) -> None:
        """Keep a device change in the record; when that fails, ``undo`` it in libvirt."""
        try:
            self.records.modify(name, change)
        except BaseException:
            with contextlib.suppress(Exception):
                undo()
            raise

    def block_attach(self, name: str, spec: str) -> DeviceChange:
        """``virsh attach-device --live`` of the PV disk ``spec`` (pvhvm's disk grammar and
        rules: a cdrom or an emulated disk is refused, as by ``xl block-attach``)."""
        with self._running(name, "block-attach") as (record, dom, flags):
            disk = hotplug.disk_to_attach(spec, record)
            if disk.format not in LIBVIRT_FORMATS:
                raise HotplugError(f"disk {disk.vdev!r}: format {disk.format!r} is not one "
                                   f"libvirt's QEMU opens ({', '.join(LIBVIRT_FORMATS)})")
            live = ET.fromstring(dom.XMLDesc(0))
            taken = {str(t.get("dev")) for t in live.findall("devices/disk/target")}
            target = free_virtio_target(taken)
            xml = device_text(disk_element(disk, target))
            dom.attachDeviceFlags(xml, flags)

            def change(rec: DomainRecord) -> None:
                rec.plan.setdefault("disks", []).append(hotplug.disk_json(disk))
                rec.hotplugged.append({"kind": "disk", "vdev": disk.vdev, "devid": disk.devid,
                                       "libvirt_target": target, "spec": spec,
                                       "directory": os.getcwd()})

            self._record_change(name, change, lambda: dom.detachDeviceFlags(xml, flags))
        return DeviceChange(f"disk {disk.vdev} (devid {disk.devid}) attached: libvirt virtio "
                            f"{target}, {disk.target}")

    def block_detach(self, name: str, disk: str, force: bool = False,
                     timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        """Unplug a hot-plugged disk (by vdev or devid), waiting for the guest to let go."""
        with self._running(name, "block-detach") as (record, dom, flags):
            entry = hotplug.hotplugged_entry(
                record, "disk", lambda item: disk in (str(item.get("vdev")),
                                                      str(item.get("devid"))),
                f"disk {disk}")
            vdev = str(entry["vdev"])
            gone = self._unplug(dom, f"ua-disk-{vdev}", flags, timeout)
            self._forget(name, record, entry, f"disk {vdev}", gone, force, timeout,
                         lambda rec: [d for d in rec.plan.get("disks", [])
                                      if str(d.get("vdev")) != vdev], "disks")
        return _detached(f"disk {vdev}", gone)

    def _forget(self, name: str, record: DomainRecord, entry: dict[str, Any], what: str,
                gone: bool, force: bool, timeout: float,
                kept: Callable[[DomainRecord], list[dict[str, Any]]], section: str) -> None:
        """Take a detached device out of the record; not released by the guest: an error
        unless ``force`` (libvirt then removes it once QEMU reports it deleted)."""
        if not gone and not force:
            raise DomainError(
                f"{what} of domain {name!r}: the guest did not release it within "
                f"{timeout:g}s (it is still attached); --force removes it from the domain")

        def change(rec: DomainRecord) -> None:
            rec.plan[section] = kept(rec)
            rec.hotplugged = [e for e in rec.hotplugged if e != entry]

        self.records.modify(name, change)

    def network_attach(self, name: str, spec: str = "") -> DeviceChange:
        """``virsh attach-device --live`` of a PV NIC (virtio) with pvhvm's derived MAC; on a
        local daemon a bridge this host lacks gets user networking, as at create."""
        with self._running(name, "network-attach") as (record, dom, flags):
            vif = hotplug.vif_to_attach(spec, record)
            warnings: list[str] = []
            user = False
            if is_local(self._uri(record)):
                bridges = lifecycle.host_bridges()
                warnings = lifecycle.vif_notes([vif], bridges)
                user = vif.bridge not in bridges
            xml = device_text(interface_element(vif, user))
            dom.attachDeviceFlags(xml, flags)

            def change(rec: DomainRecord) -> None:
                rec.plan.setdefault("vifs", []).append(hotplug.vif_json(vif))
                rec.hotplugged.append({"kind": "vif", "devid": vif.devid, "mac": vif.mac,
                                       "spec": hotplug.recorded_vif_spec(spec, vif),
                                       "directory": os.getcwd()})

            self._record_change(name, change, lambda: dom.detachDeviceFlags(xml, flags))
        how = " (user networking)" if user else ""
        return DeviceChange(f"vif {vif.devid} attached: libvirt virtio{how}, MAC {vif.mac}",
                            tuple(warnings))

    def network_detach(self, name: str, nic: str, force: bool = False,
                       timeout: float = DETACH_TIMEOUT) -> DeviceChange:
        """Unplug a hot-plugged NIC (by devid or MAC), waiting for the guest to let go."""
        with self._running(name, "network-detach") as (record, dom, flags):
            entry = hotplug.hotplugged_entry(
                record, "vif", lambda item: nic == str(item.get("devid"))
                or nic.lower() == str(item.get("mac")).lower(), f"vif {nic}")
            devid = int(entry["devid"])
            gone = self._unplug(dom, f"ua-vif-{devid}", flags, timeout)
            self._forget(name, record, entry, f"vif {devid}", gone, force, timeout,
                         lambda rec: [v for v in rec.plan.get("vifs", [])
                                      if int(v.get("devid") or 0) != devid], "vifs")
        return _detached(f"vif {devid}", gone)

    def _change_medium(self, name: str, vdev: str, path: str, verb: str) -> None:
        """The CD drive ``vdev`` with medium ``path`` ("" empty), as libvirt's media change
        (``virsh change-media --live --force``: the tray is forced, as xl does)."""
        libvirt = _binding()
        with self._running(name, verb) as (record, dom, flags):
            disk = hotplug.cd_medium(record, vdev, path)
            if disk.ide_place is None:
                raise HotplugError(f"cdrom {vdev!r} of domain {name!r} is not an emulated "
                                   "(IDE) drive")
            xml = device_text(disk_element(disk, ide_target(disk)))
            dom.updateDeviceFlags(xml, flags | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)

            def change(rec: DomainRecord) -> None:
                for item in rec.plan.get("disks", []):
                    if item.get("vdev") == vdev:
                        item["target"], item["format"] = disk.target, disk.format
                rec.media[vdev] = disk.target  # what a save carries (runtime/replan.py)

            self.records.modify(name, change)

    def cd_insert(self, name: str, vdev: str, target: str) -> DeviceChange:
        path = hotplug.medium_path(target)
        self._change_medium(name, vdev, path, "cd-insert")
        return DeviceChange(f"cdrom {vdev}: {target} inserted")

    def cd_eject(self, name: str, vdev: str) -> DeviceChange:
        self._change_medium(name, vdev, "", "cd-eject")
        return DeviceChange(f"cdrom {vdev}: ejected")

    def domain_stats(self, name: str) -> DomainSample:
        """virsh domstats: the figures libvirt keeps (runtime/stats.libvirt_sample)."""
        libvirt = _binding()
        record = self.find(name)
        if record.domain_state not in (DomainState.RUNNING, DomainState.PAUSED):
            raise DomainError(f"domain {name!r} is {record.state}: nothing runs it to measure")
        with self._connection(self._uri(record)) as conn:
            dom = self._lookup(conn, record)
            if dom is None:
                raise DomainError(f"no domain named {name!r}")
            try:
                return stats.libvirt_sample(record, dom)
            except libvirt.libvirtError as err:
                raise DomainError(f"domstats {name}: libvirt refused it: "
                                  f"{_message(err)}") from err

    def mem_set(self, name: str, memory_kib: int) -> DeviceChange:
        """``virsh setmem --live``: the virtio balloon's target, within the maximum the
        domain booted with (its ``<memory>``: maxmem, as xl's static-max)."""
        libvirt = _binding()
        with self._running(name, "mem-set") as (record, dom, flags):
            resize.check_memory(record, memory_kib)
            balloon = ET.fromstring(dom.XMLDesc(0)).find("devices/memballoon")
            if balloon is None or balloon.get("model") != "virtio":
                raise NotOnPlatformError(
                    f"domain {name!r} has no memory balloon (it was created by a pvhvm whose "
                    "libvirt XML had <memballoon model='none'/>); re-create it to use mem-set",
                    platform=self.name, verb="mem-set")
            dom.setMemoryFlags(memory_kib, flags)
            self.records.modify(name, lambda rec: resize.record_memory(rec, memory_kib))
            actual = 0
            with contextlib.suppress(libvirt.libvirtError):
                actual = int(dom.memoryStats().get("actual", 0))
        return DeviceChange(
            f"memory target {resize.show_kib(memory_kib)} (libvirt setmem, virtio balloon); "
            f"the guest had {resize.show_kib(actual)} and follows it with its virtio_balloon "
            "driver")

    # --- save / restore -------------------------------------------------------------------

    def _local(self, record: DomainRecord, verb: str) -> str:
        uri = self._uri(record)
        if not is_local(uri):
            raise NotOnPlatformError(
                f"domain {record.name!r} runs on the libvirt host at {uri}, whose daemon would "
                f"{verb} the file on that host: pvhvm {verb}s libvirt domains of a daemon on "
                "this host only (use 'virsh -c URI " + verb + "')",
                platform=self.name, verb=verb)
        return uri

    def save(self, name: str, path: Path, leave: str = "destroyed",
             progress: Progress | None = None) -> SaveOutcome:
        """``virsh save``: libvirt writes its own save image (pvhvm's domain image in the
        domain XML's metadata) and the domain is gone. Written under a temporary name and
        renamed once whole; a failed save leaves no file and the domain running."""
        from pvhvm.runtime import incoming
        from pvhvm.runtime.save import SaveOutcome

        if leave != "destroyed":
            raise NotOnPlatformError(
                f"domain {name!r} is on the libvirt platform, whose save (virsh save) always "
                f"stops the domain: save -c and -p are not on it ('pvhvm restore -p FILE' "
                "brings it back paused)", platform=self.name, verb="save")
        libvirt = _binding()
        started = time.monotonic()
        with self._running(name, "save") as (record, dom, _flags):
            self._local(record, "save")
            image = incoming.image_of(record, self.records.paths(name), verb="saved")
            image = dataclasses.replace(image, extra={"libvirt_uri": self._uri(record)})
            live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE
                               | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
            xml = saveimage.with_image(live, image)
            path = path.absolute()
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                dom.saveFlags(str(partial), xml, 0)
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise
            try:
                os.replace(partial, path)
            except OSError as err:  # the domain is in the partial file: bring it back
                with contextlib.suppress(libvirt.libvirtError):
                    dom.connect().restore(str(partial))
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise InputError(f"cannot write {path}: {err.strerror}") from err
        self.records.release(name)
        return SaveOutcome(path=path, size=path.stat().st_size,
                           seconds=time.monotonic() - started, domain="destroyed")

    def restore(self, path: Path, image: DomainImage, paused: bool = False,
                progress: Progress | None = None, connect: str | None = None) -> DomainRecord:
        """``virsh restore`` of a libvirt save image that ``pvhvm save`` wrote, on the daemon
        at ``connect`` (default qemu:///system). The URI the image was saved from is never
        connected to because the file says so: when it is another one, the user names it
        with --connect. libvirt re-parses the image's domain XML itself; pvhvm's record is
        planned again from the config its image carries (runtime/replan.py) and the files it
        opens are checked first, so a stale or forged image starts nothing."""
        from pvhvm.runtime import replan

        libvirt = _binding()
        saved_at = str(image.extra.get("libvirt_uri", DEFAULT_URI))
        uri = connect or DEFAULT_URI
        if connect is None and saved_at != uri:
            raise InputError(
                f"{path} was saved from the libvirt daemon at {saved_at}: pvhvm connects "
                f"only where you say; to restore it there, add --connect {saved_at}")
        if not is_local(uri):
            raise NotOnPlatformError(
                f"{uri} is a remote libvirt host: pvhvm restores libvirt domains on a daemon "
                "on this host only", platform=self.name, verb="restore")
        replanned = replan.replan(image, str(path), check_slots=False)
        plan = replanned.plan
        flags = (libvirt.VIR_DOMAIN_SAVE_PAUSED if paused
                 else libvirt.VIR_DOMAIN_SAVE_RUNNING)

        def build(domid: int) -> DomainRecord:
            lifecycle.write_source(self.records.paths(plan.name).directory, image.source)
            return DomainRecord(
                name=plan.name, domid=domid, uuid=plan.uuid,
                platform=self.name, memory_mib=image.memory_kib // 1024,
                vcpus=replanned.vcpus,
                plan={**replanned.plan_json, "libvirt_uri": uri}, argv=[],
                on_poweroff=plan.on_poweroff, on_reboot=plan.on_reboot,
                on_crash=plan.on_crash, state=DomainState.STARTING.value, accel=image.accel,
                console=f"virsh -c {uri} console {plan.name}",
                hotplugged=[spec.to_json() for spec, _ in replanned.hotplugged],
                media=dict(image.media))

        def start(conn: Any) -> Any:
            conn.restoreFlags(str(path.absolute()), None, flags)
            return conn.lookupByUUIDString(plan.uuid)

        return self._start(plan.name, uri, build, start)


def _slot_hint(err: Exception) -> str:
    """What to do when libvirt found no free PCI slot for a hot-plugged device."""
    if "No more available PCI slots" not in _message(err):
        return ""
    return (" (every hotplug slot is in use: detach a hot-plugged device, or create the "
            "domain with a larger hotplug_slots)")


def _detached(what: str, gone: bool) -> DeviceChange:
    if gone:
        return DeviceChange(f"{what} detached")
    return DeviceChange(
        f"{what} removed from the domain (--force)",
        (f"{what}: the guest has not released it yet; libvirt removes the device once the "
         "guest lets go of it",))



def _console_log(domain: ET.Element) -> str | None:
    """The ``<log file>`` of a domain XML's first serial port (the console's), if any."""
    log = domain.find("devices/serial/log")
    return log.get("file") if log is not None else None


def _destination_xml(migratable: str, given: str | None, *, local: bool) -> str | None:
    """The domain XML for a migration's destination when it must differ from the source's
    (None when not): to another host, without the console log ``given`` to libvirt at
    create (a file in this host's pvhvm state: that host may have no such directory, and
    QEMU there would fail to open it); back to this host, with it again, appending (so the
    log still holds what the guest printed here before). libvirt lets a destination XML
    change such host-side parts of a domain, not what the guest sees."""
    if given is None:
        return None
    domain = ET.fromstring(migratable)
    serial = domain.find("devices/serial")
    if serial is None:
        return None
    changed = False
    for port in [serial, *domain.findall("devices/console")]:
        for log in port.findall("log"):
            if not local and log.get("file") == given:
                port.remove(log)
                changed = True
    if local and serial.find("log") is None:
        log = ET.Element("log", file=given, append="on")
        target = serial.find("target")
        serial.insert(list(serial).index(target) if target is not None else len(serial), log)
        changed = True
    return ET.tostring(domain, encoding="unicode") if changed else None


def _console_file(domain: ET.Element) -> Path | None:
    """The file the first serial port (the console's) writes to in a domain XML, if any."""
    serial = domain.find("devices/serial")
    if serial is None:
        return None
    if serial.get("type") == "file":
        source = serial.find("source")
        path = source.get("path") if source is not None else None
    else:
        path = _console_log(domain)
    return Path(path) if path else None
