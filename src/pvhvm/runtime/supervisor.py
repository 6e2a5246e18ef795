"""One domain's supervisor: a task in the host supervisor (runtime/hostd.py), QEMU's parent.

``pvhvm create`` hands the domain to the host supervisor of its state directory with the
domain's owner lock. The supervisor starts QEMU (in a session of its own), proves QMP answers,
marks the record running and tells ``create`` over a pipe. Then it waits — on QEMU's exit
(a pidfd) and on QMP events, never polling — and applies the domain's actions
(xl.cfg(5) on_poweroff / on_reboot / on_crash):

* SHUTDOWN reason ``guest-shutdown`` (QEMU runs with ``-no-shutdown``): ``on_poweroff``;
  ``on_reboot`` when ``pvhvm reboot`` asked for it (the record's ``reboot_requested``, as
  libvirt's fakeReboot: restart is ``system_reset`` and ``cont`` in the same QEMU)
* SHUTDOWN reason ``guest-reset`` or ``host-qmp-system-reset`` (only seen with ``-no-reboot``,
  i.e. on_reboot=destroy; otherwise QEMU resets in place and sends RESET): ``on_reboot``
* GUEST_PANICKED (pvpanic, ``-action panic=pause``): ``on_crash``
* QEMU exiting without being asked (killed, crashed, SIGTERM from someone else): ``on_crash``
* QEMU quitting on a QMP ``quit``, or ``pvhvm destroy`` (a ``stop`` request to the host
  supervisor): destroy — quit QEMU (kill after a timeout), remove the record.

Each QEMU start appends to the domain's logs, with a marker line in its console log, and
rotates them by size; a running QEMU's logs are rotated every minute (runtime/logs.py). A
failed start quotes the QEMU log from where this start began.

``restart`` relaunches the record's argv (without ``-S``; it holds hot-plugged devices
too); ``preserve`` keeps the domain (QEMU stopped, state shutdown or crashed; or a record
in state crashed when QEMU is gone) until ``pvhvm destroy``.

``adopt`` takes over a QEMU whose supervisor died (``lifecycle.refresh`` asks for it): it
waits on QEMU through a pidfd, reads its run state over QMP and applies an action the
guest asked for while nobody was watching; a QEMU that died meanwhile is a crash
(``on_crash``), acted on now.

``incoming`` (restore, migrate-receive: runtime/incoming.py) starts QEMU
paused with ``-incoming defer``, hands it the migration stream's fd (QMP ``getfd``, then
``migrate-incoming fd:``), says ``received`` on the ready fd once QEMU has loaded it, and
waits for the creator's word on the commit fd: ``run`` (``cont``) or ``pause``; anything else, its
end of the pipe closing included, removes the domain as a failed create. From then on it
supervises the domain exactly as a created one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from pvhvm.errors import DomainError, ForeignPeerError
from pvhvm.private import open_private, private_dir
from pvhvm.qemu.qmp import connect
from pvhvm.runtime import logs
from pvhvm.runtime.resize import apply_balloon_target
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore, qemu_alive

log = logging.getLogger("pvhvm.supervisor")
T = TypeVar("T")

QMP_WAIT = 60.0
QUIT_TIMEOUT = 10.0
MAX_RESTARTS = 10

#: what ends a QEMU run
DESTROY, RESTART, PRESERVE = "destroy", "restart", "preserve"
#: the event word of DEVICE_DELETED, followed by the device's id
DELETED = "deleted:"
#: the name the incoming migration stream's fd has in QEMU (QMP getfd)
INCOMING_FD_NAME = "pvhvm-incoming"
#: what the creator of an incoming domain says once QEMU has loaded its state
RUN, PAUSE = "run", "pause"


@dataclass(frozen=True)
class Incoming:
    """A domain whose state comes in a migration stream (restore, migrate-receive)."""

    #: QEMU reads the stream from it (a pipe from ``pvhvm restore``, the ssh channel)
    stream_fd: int
    #: the creator writes RUN or PAUSE here once told ``received``
    commit_fd: int


def incoming_argv(argv: list[str]) -> list[str]:
    """``argv`` started to receive a migration stream: paused (-S) until told otherwise,
    the stream given later over QMP (``-incoming defer``)."""
    return [*argv, *([] if "-S" in argv else ["-S"]), "-incoming", "defer"]


class QemuProcess(Protocol):
    """What the supervisor needs of a QEMU process, child or adopted."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class WatchedProcess:
    """A QEMU waited on through a pidfd: no polling, and no watcher thread per child.

    ``popen``: a child this supervisor started, whose exit status is read. Without it, a QEMU
    adopted from a supervisor that died: its exit status belongs to init, so ``returncode``
    is -1 once it has gone.
    """

    def __init__(self, pid: int | None, popen: subprocess.Popen[bytes] | None = None) -> None:
        self._pid = pid or 0
        self._popen = popen
        self._returncode: int | None = None
        self._exit: asyncio.Future[None] | None = None
        self._pidfd: int | None = None
        try:
            if pid:
                self._pidfd = os.pidfd_open(pid)
        except OSError:  # gone already
            self._pidfd = None
        if self._pidfd is None:
            self._returncode = popen.wait() if popen is not None else -1

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and self._popen is not None:
            self._returncode = self._popen.poll()
        return self._returncode

    def _reap(self) -> None:
        self._returncode = self._popen.wait() if self._popen is not None else -1

    async def wait(self) -> int:
        if self._pidfd is not None and self._exit is None:
            loop = asyncio.get_running_loop()
            exit_future: asyncio.Future[None] = loop.create_future()
            pidfd = self._pidfd

            def readable() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                self._pidfd = None
                self._reap()
                if not exit_future.done():
                    exit_future.set_result(None)

            loop.add_reader(pidfd, readable)
            self._exit = exit_future
        if self._exit is not None:
            await asyncio.shield(self._exit)
        return -1 if self._returncode is None else self._returncode

    def kill(self) -> None:
        if self._pid and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)


class Supervisor:
    """Runs one domain's QEMU and acts on what happens to it."""

    def __init__(
        self, store: StateStore, name: str, ready_fd: int | None = None, adopt: bool = False,
        incoming: Incoming | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.paths = store.paths(name)
        self.ready_fd = ready_fd
        self.adopt = adopt
        self.incoming = incoming
        self.proc: QemuProcess | None = None
        self.qmp: QMPClient | None = None
        self.stopping = False
        self.stop_requested = asyncio.Event()
        #: where this QEMU run's output starts in the QEMU log (a failed start quotes only it)
        self.qemu_log_offset = 0

    # --- the record (this process is its only writer once create has handed over) --------

    def record(self) -> DomainRecord:
        record = self.store.read(self.name)
        if record is None:
            raise DomainError(f"record of domain {self.name!r} vanished")
        return record

    def update(self, state: DomainState | None = None, **changes: object) -> None:
        def change(record: DomainRecord) -> None:
            if state is not None:
                record.state = state.value
            for key, value in changes.items():
                setattr(record, key, value)

        self.store.modify(self.name, change)

    def say(self, line: str) -> None:
        """One line to the creator that does not end the conversation (``received``)."""
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, f"{line}\n".encode())

    def tell_creator(self, message: str) -> None:
        if self.ready_fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # the creator may be gone (killed): fine
                os.write(self.ready_fd, message.encode())
        finally:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = None

    # --- QEMU ---------------------------------------------------------------------------

    async def launch(self, argv: list[str]) -> None:
        """Start QEMU and wait until its QMP answers; raise DomainError with QEMU's words."""
        for sock in (self.paths.qmp_socket, self.paths.control_socket):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        console_logged = any(str(self.paths.console_log) in arg for arg in argv)
        try:
            private_dir(self.paths.qemu_log.parent)
            # nobody writes them now: too big, they are rotated by renaming (runtime/logs.py)
            logs.rotate(self.paths.qemu_log)
            if console_logged:
                logs.rotate(self.paths.console_log)
                # QEMU opens its console log itself: an older pvhvm's 0644 one is made 0600
                os.close(open_private(self.paths.console_log))
            log_fd = open_private(self.paths.qemu_log)
            self.qemu_log_offset = os.fstat(log_fd).st_size
        except OSError as err:
            raise DomainError(f"cannot open the domain's logs in {self.paths.qemu_log.parent}: "
                              f"{err.strerror or err}") from err
        with os.fdopen(log_fd, "ab") as qemu_log:
            qemu_log.write(f"--- {time.ctime()} {' '.join(argv)}\n".encode())
            qemu_log.flush()
            # in a session of its own: nothing sent to the host supervisor's group reaches it;
            # umask 077: the sockets, logs and files QEMU makes are the user's alone
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
                start_new_session=True, close_fds=True, umask=0o077,
            )
        proc = WatchedProcess(popen.pid, popen)
        self.proc = proc
        if console_logged:
            # QEMU appends (logappend=on) below this run's marker; its first output (the
            # firmware's) comes well after its exec, so the marker is written first
            try:
                logs.write_marker(self.paths.console_log, self.name, proc.pid)
            except OSError as err:
                log.warning("cannot mark the console log: %s", err)
        # A new QEMU has none of what a forced detach left to release, and no reboot asked
        # of the last one's guest is pending.
        if self.record().releasing:
            self.update(releasing=[])
        if self.record().reboot_requested:
            self.update(reboot_requested=False)
        # Known at once, so a cleaner that finds this domain orphaned can kill this QEMU.
        self.update(qemu_pid=proc.pid)
        deadline = time.monotonic() + QMP_WAIT
        while True:
            if proc.returncode is not None or (
                not self.paths.qmp_socket.exists() and await self._exited(0.01)
            ):
                raise DomainError(self._launch_failure())
            if self.paths.qmp_socket.exists():
                try:
                    self.qmp = await connect(self.paths.qmp_socket, "supervisor", timeout=5)
                    break
                except ForeignPeerError:
                    raise  # another user's socket: not QEMU starting up, and told nothing
                except DomainError:
                    if await self._exited(0.1):
                        raise DomainError(self._launch_failure()) from None
            if time.monotonic() > deadline:
                raise DomainError(f"QEMU's QMP did not answer within {QMP_WAIT:.0f}s")
        status = await self.qmp.execute("query-status")
        log.info("QEMU %d up, status %s", proc.pid, status)
        self.update(vnc=await vnc_server(self.qmp))
        await apply_balloon_target(self.qmp, self.record())  # a mem-set outlives a relaunch

    async def _exited(self, wait: float) -> bool:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), wait)
        except TimeoutError:
            return False
        return True

    def _launch_failure(self, during: str = "start-up") -> str:
        """QEMU's exit status and its last lines of this run (never an earlier run's)."""
        code = self.proc.returncode if self.proc else None
        try:
            with open(self.paths.qemu_log, "rb") as qemu_log:
                qemu_log.seek(self.qemu_log_offset)
                text = qemu_log.read().decode(errors="replace")
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("--- ")]
        detail = " | ".join(lines[-3:]) or "no output"
        return f"QEMU exited during {during} (exit status {code}): {detail}"

    # --- an incoming domain (restore, migrate-receive) --------------------------------------

    async def receive(self, incoming: Incoming) -> bool:
        """Load the migration stream into the QEMU just started with :func:`incoming_argv`,
        say ``received``, and wait for the creator's word; True: the domain stays paused.

        The creator's end of the commit pipe is watched from the start: a creator that dies
        while the stream comes in (a killed ``pvhvm migrate-receive``) ends the load at once
        instead of leaving a domain nobody will commit."""
        assert self.qmp is not None
        client = self.qmp
        word = asyncio.ensure_future(self._creator_word(incoming.commit_fd))
        try:
            with client.listener("MIGRATION") as listener:
                try:
                    await client.execute("migrate-set-capabilities", {"capabilities": [
                        {"capability": "events", "state": True}]})
                    client.send_fd_scm(incoming.stream_fd)
                    await client.execute("getfd", {"fdname": INCOMING_FD_NAME})
                finally:
                    os.close(incoming.stream_fd)
                await client.execute("migrate-incoming", {"uri": f"fd:{INCOMING_FD_NAME}"})
                await self._until_loaded(listener, word)
            self.say("received")
            said = await self._until(word, "its commit")
            if said not in (RUN, PAUSE):
                raise DomainError("the toolstack restoring it went away before the domain "
                                  "was to run")
            if said == RUN:
                await client.execute("cont")
        except ExecuteError as err:
            raise DomainError(f"QEMU refused the incoming state: {err}") from err
        except (QMPError, OSError, EOFError) as err:
            if await self._exited(1.0):
                raise DomainError(self._launch_failure("the restore")) from err
            raise DomainError(f"QMP failed during the restore: {err}") from err
        finally:
            word.cancel()
            with contextlib.suppress(OSError):
                os.close(incoming.commit_fd)
        return said == PAUSE

    async def _until_loaded(self, listener: EventListener, word: asyncio.Future[str]) -> None:
        """Until a MIGRATION event says the stream is in (DomainError when it failed, or
        when the creator went away meanwhile)."""
        while True:
            event = await self._until(listener.get(), "the restore", creator=word)
            data = event.get("data")
            status = str(data.get("status")) if isinstance(data, dict) else ""
            log.info("incoming migration: %s", status)
            if status == "completed":
                return
            if status == "failed":
                await self._exited(2.0)  # QEMU 7.2 exits after a failed load
                raise DomainError(self._launch_failure("the restore")
                                  if self.proc is not None and self.proc.returncode is not None
                                  else "QEMU could not load the domain's state")

    async def _until(self, work: Awaitable[T], during: str,
                     creator: asyncio.Future[str] | None = None) -> T:
        """``work``'s result, unless QEMU exits, a destroy comes, or ``creator`` (the
        creator's word) ends first (DomainError)."""
        assert self.proc is not None
        task = asyncio.ensure_future(work)
        exited = asyncio.ensure_future(self.proc.wait())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        watched = {task, exited, stop} | ({creator} if creator is not None else set())
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for other in (exited, stop):
                other.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if self.stopping:
            raise DomainError("destroyed while starting")
        if creator is not None and creator.done() and not exited.done():
            raise DomainError(f"the toolstack restoring it went away during {during}")
        raise DomainError(self._launch_failure(during))

    @staticmethod
    async def _creator_word(fd: int) -> str:
        """The line the creator writes on the commit fd ('' when it closes it unsaid)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", 0))
        try:
            line = await reader.readline()
        finally:
            transport.close()
        return line.decode(errors="replace").strip()

    async def stop_qemu(self) -> None:
        """Ask QEMU to quit over QMP; kill it if it has not gone after QUIT_TIMEOUT."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if self.qmp is not None:
            with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
                await asyncio.wait_for(self.qmp.execute("quit"), 3)
        try:
            await asyncio.wait_for(proc.wait(), QUIT_TIMEOUT)
        except TimeoutError:
            log.warning("QEMU %d ignored quit; killing it", proc.pid)
            proc.kill()
            await proc.wait()

    async def close_qmp(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(QMPError, OSError, EOFError):
                await self.qmp.disconnect()
            self.qmp = None

    async def finish_release(self, device: str) -> None:
        """A device ``block-detach --force`` gave up waiting for is gone now: remove what
        backed it (its block node or netdev), as the detach would have."""
        pending = [r for r in self.record().releasing if r.get("device") == device]
        if not pending:
            return
        for entry in pending:
            if self.qmp is not None:
                try:
                    await asyncio.wait_for(
                        self.qmp.execute(str(entry["command"]), entry["arguments"]), 10)
                except (QMPError, OSError, EOFError, TimeoutError) as err:
                    log.warning("releasing %s: %s failed: %s", device, entry["command"], err)
        self.update(releasing=[r for r in self.record().releasing if r not in pending])

    async def reset_in_place(self) -> None:
        """The guest powered off after ``pvhvm reboot``: reset the stopped QEMU (-no-shutdown
        keeps it) and run it again, as libvirt's qemuProcessFakeReboot (system_reset, cont):
        same QEMU, same domid and uuid, the console log kept open."""
        if self.qmp is None:
            return
        try:
            await asyncio.wait_for(self.qmp.execute("system_reset"), 10)
            for attempt in range(20):
                try:
                    await asyncio.wait_for(self.qmp.execute("cont"), 10)
                    break
                except ExecuteError:  # the reset not yet processed: QEMU wants it first
                    if attempt == 19:
                        raise
                    await asyncio.sleep(0.05)
        except (QMPError, OSError, EOFError, TimeoutError) as err:
            log.error("reboot after the guest's power-off failed: %s", err)
            return
        log.info("guest rebooted after its power-off (pvhvm reboot)")
        self.update(DomainState.RUNNING)

    async def rotate_logs(self) -> None:
        """Every ROTATE_INTERVAL seconds, rotate the logs QEMU and the host supervisor keep
        open (runtime/logs.py)."""
        while True:
            await asyncio.sleep(logs.ROTATE_INTERVAL)
            # the supervisor's own log too: the host supervisor keeps it open (O_APPEND)
            for path in (self.paths.console_log, self.paths.qemu_log,
                         self.paths.supervisor_log):
                try:
                    if logs.rotate_open(path):
                        log.info("rotated %s", path)
                except OSError as err:
                    log.warning("cannot rotate %s: %s", path, err)

    # --- events -------------------------------------------------------------------------

    @staticmethod
    async def pump_events(client: QMPClient, events: asyncio.Queue[str]) -> None:
        """QMP events → the supervisor's words: poweroff reboot panic quit signal stop resume."""
        try:
            async for event in client.events:
                name = str(event["event"])
                raw = event.get("data")
                data: dict[str, object] = raw if isinstance(raw, dict) else {}
                log.info("event %s %s", name, data)
                word = _event_word(name, data)
                if word is not None:
                    events.put_nowait(word)
        except (QMPError, OSError, EOFError) as err:
            log.info("QMP event stream ended: %s", err)

    async def run_once(self, record: DomainRecord, events: asyncio.Queue[str]) -> str:
        """Wait for what ends this QEMU run: returns destroy | restart | preserve.

        ``events`` belongs to this run only, so a STOP left over from the last run cannot
        mark a restarted domain paused.
        """
        assert self.proc is not None
        pump = (
            asyncio.create_task(self.pump_events(self.qmp, events))
            if self.qmp is not None else None
        )
        exited = asyncio.create_task(self.proc.wait())
        guest_shutdown = quit_requested = False
        try:
            while True:
                getter = asyncio.create_task(events.get())
                done, _ = await asyncio.wait({getter, exited}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if exited in done and getter not in done:
                    if self.stopping or quit_requested:
                        return DESTROY
                    if guest_shutdown:
                        return _normalise(record.on_poweroff)
                    log.warning("QEMU exited unexpectedly (status %s)", self.proc.returncode)
                    return _normalise(record.on_crash)
                event = getter.result()
                if event.startswith(DELETED):
                    await self.finish_release(event.removeprefix(DELETED))
                elif event == "stop":
                    if self.record().domain_state is DomainState.RUNNING:
                        self.update(DomainState.PAUSED)
                elif event == "resume":
                    self.update(DomainState.RUNNING)
                elif event == "quit":
                    quit_requested = True
                elif event == "poweroff":
                    if self.record().reboot_requested:
                        # pvhvm reboot: this power-off is the guest's reboot (libvirt's
                        # fakeReboot, qemuProcessShutdownOrReboot)
                        self.update(reboot_requested=False)
                        action = _normalise(record.on_reboot)
                        if action == RESTART:
                            await self.reset_in_place()
                            continue
                        if action != PRESERVE:
                            return action
                        self.update(DomainState.SHUTDOWN)
                        continue
                    guest_shutdown = True
                    action = _normalise(record.on_poweroff)
                    if action != PRESERVE:
                        return action
                    self.update(DomainState.SHUTDOWN)
                elif event == "reboot":
                    action = _normalise(record.on_reboot)
                    if action != PRESERVE:
                        return action
                    self.update(DomainState.SHUTDOWN)
                elif event == "panic":
                    action = _normalise(record.on_crash)
                    if action != PRESERVE:
                        return action
                    self.update(DomainState.CRASHED)
        finally:
            if pump is not None:
                pump.cancel()
            if not exited.done():
                exited.cancel()

    # --- main ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Start (or adopt) the domain and supervise it until it is destroyed."""
        if self.adopt:
            return await self.take_over()
        return await self.start()

    async def start(self) -> int:
        """The create path: launch QEMU, tell the creator, then supervise."""
        self.update(DomainState.STARTING, supervisor_pid=os.getpid())
        record = self.record()
        paused = "-S" in record.argv
        try:
            if self.incoming is None:
                await self.launch(record.argv)
            else:
                await self.launch(incoming_argv(record.argv))
                paused = await self.receive(self.incoming)
            if self.stopping:
                raise DomainError("destroyed while starting")
        except DomainError as err:
            # A destroy during start-up may make QEMU fail before start() sees the request.
            self.tell_creator("error: destroyed while starting" if self.stopping
                              else f"error: {err}")
            await self.stop_qemu()
            await self.close_qmp()
            self.store.release(self.name)
            return 1
        assert self.proc is not None
        self.update(DomainState.PAUSED if paused else DomainState.RUNNING)
        self.tell_creator("ok")
        return await self.supervise(record)

    async def take_over(self) -> int:
        """The adopt path: watch a QEMU whose supervisor died, then supervise it."""
        record = self.record()
        events: asyncio.Queue[str] = asyncio.Queue()
        if record.qemu_pid is None or not qemu_alive(record, self.paths):
            log.warning("adopting %s: its QEMU is gone", self.name)
            self.proc = WatchedProcess(None)
        else:
            self.proc = WatchedProcess(record.qemu_pid)
            try:
                self.qmp = await connect(self.paths.qmp_socket, "supervisor", timeout=10)
                status = await self.qmp.execute("query-status")
            except (DomainError, QMPError, OSError, EOFError) as err:
                log.error("adopting %s: QMP does not answer (%s); watching its exit only",
                          self.name, err)
                await self.close_qmp()
            else:
                run_state = str(status.get("status", "")) if isinstance(status, dict) else ""
                log.info("adopted QEMU %d, status %s", self.proc.pid, run_state)
                # What the guest asked for while nobody was watching is acted on now.
                word = {"shutdown": "poweroff", "guest-panicked": "panic",
                        "paused": "stop", "running": "resume"}.get(run_state)
                state = record.domain_state
                if word == "poweroff" and state is DomainState.SHUTDOWN:
                    word = None
                if word == "panic" and state is DomainState.CRASHED:
                    word = None
                if word is not None:
                    events.put_nowait(word)
        self.update(supervisor_pid=os.getpid())
        return await self.supervise(record, events)

    async def supervise(
        self, record: DomainRecord, first_events: asyncio.Queue[str] | None = None
    ) -> int:
        """Apply the domain's actions run after run, until it is destroyed."""
        restarts = record.restarts
        events = first_events or asyncio.Queue()
        rotation = asyncio.create_task(self.rotate_logs())
        try:
            return await self._supervise(record, events, restarts)
        finally:
            rotation.cancel()

    async def _supervise(
        self, record: DomainRecord, events: asyncio.Queue[str], restarts: int
    ) -> int:
        while True:
            action = DESTROY if self.stopping else await self.run_once(record, events)
            events = asyncio.Queue()
            if self.stopping:
                action = DESTROY
            log.info("action %s", action)
            if action == RESTART and restarts < MAX_RESTARTS:
                restarts += 1
                await self.stop_qemu()
                await self.close_qmp()
                # Counted before the new QEMU's pid is recorded, so no reader sees a new pid
                # with the old count.
                self.update(restarts=restarts)
                try:
                    # the record's argv, not the first run's: it has the devices hot-plugged
                    # since (runtime/hotplug.py)
                    await self.launch([a for a in self.record().argv if a != "-S"])
                except DomainError as err:
                    log.error("restart failed: %s", err)
                    break
                self.update(DomainState.RUNNING, restarts=restarts)
                continue
            if action == PRESERVE:
                # QEMU is gone but the domain is kept, as xl keeps a crashed domain.
                self.update(DomainState.CRASHED, qemu_pid=None)
                await self.close_qmp()
                await self.stop_requested.wait()
            break
        await self.stop_qemu()
        await self.close_qmp()
        self.store.release(self.name)
        return 0

    def request_stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            asyncio.get_running_loop().create_task(self.stop_qemu())
        self.stop_requested.set()


def _event_word(name: str, data: dict[str, object]) -> str | None:
    """One QMP event (qapi/run-state.json) as what it means to the supervisor."""
    if name == "SHUTDOWN":
        reason = str(data.get("reason", ""))
        if reason == "guest-shutdown":
            return "poweroff"
        if reason in ("guest-reset", "host-qmp-system-reset"):
            return "reboot"
        if reason == "guest-panic":
            return "panic"
        if reason == "host-qmp-quit":
            return "quit"
        return None  # host-signal, host-ui...: QEMU exits, which is a crash unless we asked
    if name == "DEVICE_DELETED" and isinstance(data.get("device"), str):
        return f"{DELETED}{data['device']}"  # a device the guest let go (runtime/hotplug.py)
    return {"GUEST_PANICKED": "panic", "STOP": "stop", "RESUME": "resume"}.get(name)


def _normalise(action: str) -> str:
    """xl's actions reduced to what pvhvm does: destroy, restart or preserve."""
    if action in ("restart", "rename-restart", "coredump-restart", "soft-reset"):
        return RESTART
    if action == "preserve":
        return PRESERVE
    return DESTROY


async def vnc_server(client: QMPClient) -> dict[str, object] | None:
    """The VNC server QEMU runs (QMP query-vnc): host, port and display (port - 5900), the
    port ``vncunused`` made QEMU pick; None without one."""
    try:
        info = await asyncio.wait_for(client.execute("query-vnc"), 5)
    except (QMPError, OSError, EOFError, TimeoutError) as err:
        log.info("query-vnc: %s", err)
        return None
    return vnc_of(info)


def vnc_of(info: object) -> dict[str, object] | None:
    """query-vnc's answer (qapi/ui.json VncInfo) as the record keeps it."""
    if not isinstance(info, dict) or not info.get("enabled"):
        return None
    try:
        port = int(str(info.get("service", "")))
    except ValueError:
        return None  # a Unix-socket VNC server: no port
    host = str(info.get("host", ""))
    return {"host": host, "port": port, "display": port - 5900,
            "family": str(info.get("family", ""))}
