"""The per-domain supervisor: QEMU's parent, in a session of its own.

``pvhvm create`` starts it detached (so it outlives the terminal and the toolstack); it
starts QEMU, proves QMP answers, marks the record running and tells ``create`` over a pipe.
Then it waits — on QEMU's exit and on QMP events, never polling — and applies the domain's
actions (xl.cfg(5)):

* SHUTDOWN from the guest (QEMU runs with ``-no-shutdown``): ``on_poweroff``
* SHUTDOWN with reason ``guest-reset`` (``-no-reboot``, i.e. on_reboot=destroy): destroy
* GUEST_PANICKED (pvpanic, ``-action panic=pause``): ``on_crash``
* QEMU exiting without being asked (killed, crashed): ``on_crash``
* SIGTERM from ``pvhvm destroy``: quit QEMU (kill after a timeout), remove the record.

``restart`` relaunches the same argv; ``preserve`` keeps the domain (paused, or a record in
state crashed when QEMU is gone) until ``pvhvm destroy``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from qemu.qmp import QMPClient, QMPError

from pvhvm.errors import DomainError
from pvhvm.qemu.qmp import connect
from pvhvm.runtime.state import DomainRecord, DomainState, StateStore

log = logging.getLogger("pvhvm.supervisor")

QMP_WAIT = 60.0
QUIT_TIMEOUT = 10.0
MAX_RESTARTS = 10


class Supervisor:
    """Runs one domain's QEMU and acts on what happens to it."""

    def __init__(self, store: StateStore, name: str, ready_fd: int | None) -> None:
        self.store = store
        self.name = name
        self.paths = store.paths(name)
        self.ready_fd = ready_fd
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self.stopping = False
        self.guest_shutdown = False
        self.events: asyncio.Queue[str] = asyncio.Queue()

    # --- the record ---------------------------------------------------------------------

    def record(self) -> DomainRecord:
        record = self.store.read(self.name)
        if record is None:
            raise DomainError(f"record of domain {self.name!r} vanished")
        return record

    def set_state(self, state: DomainState, **changes: object) -> None:
        record = self.record()
        record.state = state.value
        for key, value in changes.items():
            setattr(record, key, value)
        self.store.write(record)

    def tell_creator(self, message: str) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, message.encode())
            os.close(self.ready_fd)
        self.ready_fd = None

    # --- QEMU ---------------------------------------------------------------------------

    async def launch(self, argv: list[str]) -> None:
        """Start QEMU and wait until its QMP answers; raise DomainError with QEMU's words."""
        for sock in (self.paths.qmp_socket, self.paths.control_socket):
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        with open(self.paths.qemu_log, "ab") as qemu_log:
            qemu_log.write(f"--- {time.ctime()} {' '.join(argv)}\n".encode())
            qemu_log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log,
            )
        deadline = time.monotonic() + QMP_WAIT
        while True:
            if self.proc.returncode is not None or (
                not self.paths.qmp_socket.exists() and await self._exited(0.05)
            ):
                raise DomainError(self._launch_failure())
            if self.paths.qmp_socket.exists():
                try:
                    self.qmp = await connect(self.paths.qmp_socket, "supervisor", timeout=5)
                    break
                except DomainError:
                    if await self._exited(0.1):
                        raise DomainError(self._launch_failure()) from None
            if time.monotonic() > deadline:
                raise DomainError(f"QEMU's QMP did not answer within {QMP_WAIT:.0f}s")
        status = await self.qmp.execute("query-status")
        log.info("QEMU %d up, status %s", self.proc.pid, status)

    async def _exited(self, wait: float) -> bool:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), wait)
        except TimeoutError:
            return False
        return True

    def _launch_failure(self) -> str:
        code = self.proc.returncode if self.proc else None
        try:
            text = self.paths.qemu_log.read_text(errors="replace")
        except OSError:
            text = ""
        lines = [ln for ln in text.splitlines() if ln and not ln.startswith("--- ")]
        detail = " | ".join(lines[-3:]) or "no output"
        return f"QEMU exited during start-up (exit status {code}): {detail}"

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

    # --- events -------------------------------------------------------------------------

    async def pump_events(self, client: QMPClient) -> None:
        try:
            async for event in client.events:
                name = str(event["event"])
                raw = event.get("data")
                data: dict[str, object] = raw if isinstance(raw, dict) else {}
                log.info("event %s %s", name, data)
                if name == "SHUTDOWN" and data.get("guest"):
                    reason = str(data.get("reason", ""))
                    self.events.put_nowait("reboot" if reason == "guest-reset" else "poweroff")
                elif name == "GUEST_PANICKED":
                    self.events.put_nowait("panic")
                elif name == "STOP":
                    self.events.put_nowait("stop")
                elif name == "RESUME":
                    self.events.put_nowait("resume")
        except (QMPError, OSError, EOFError) as err:
            log.info("QMP event stream ended: %s", err)

    async def run_once(self) -> str:
        """Wait for what ends this QEMU run: returns destroy | restart | preserve."""
        assert self.proc is not None and self.qmp is not None
        record = self.record()
        pump = asyncio.create_task(self.pump_events(self.qmp))
        exited = asyncio.create_task(self.proc.wait())
        try:
            while True:
                getter = asyncio.create_task(self.events.get())
                done, _ = await asyncio.wait({getter, exited}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                if exited in done:
                    if self.stopping:
                        return "destroy"
                    if self.guest_shutdown:
                        return _normalise(record.on_poweroff)
                    log.warning("QEMU exited unexpectedly (status %s)", self.proc.returncode)
                    return _normalise(record.on_crash)
                event = getter.result()
                if event == "stop":
                    if self.record().domain_state is DomainState.RUNNING:
                        self.set_state(DomainState.PAUSED)
                elif event == "resume":
                    self.set_state(DomainState.RUNNING)
                elif event == "poweroff":
                    self.guest_shutdown = True
                    action = _normalise(record.on_poweroff)
                    if action == "preserve":
                        self.set_state(DomainState.SHUTDOWN)
                        continue
                    return action
                elif event == "reboot":
                    return "destroy"
                elif event == "panic":
                    action = _normalise(record.on_crash)
                    if action == "preserve":
                        self.set_state(DomainState.CRASHED)
                        continue
                    return action
        finally:
            pump.cancel()
            if not exited.done():
                exited.cancel()

    # --- main ---------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.set_state(DomainState.STARTING, supervisor_pid=os.getpid())
        record = self.record()
        paused = "-S" in record.argv
        try:
            await self.launch(record.argv)
        except DomainError as err:
            self.tell_creator(f"error: {err}")
            await self.stop_qemu()
            self.store.release(self.name)
            return 1
        assert self.proc is not None
        self.set_state(
            DomainState.PAUSED if paused else DomainState.RUNNING, qemu_pid=self.proc.pid,
            supervisor_pid=os.getpid(),
        )
        self.tell_creator("ok")
        restarts = 0
        while True:
            action = await self.run_once() if not self.stopping else "destroy"
            if self.stopping:
                action = "destroy"
            if action == "restart" and restarts < MAX_RESTARTS:
                restarts += 1
                await self.stop_qemu()
                await self.close_qmp()
                self.guest_shutdown = False
                try:
                    await self.launch([a for a in record.argv if a != "-S"])
                except DomainError as err:
                    log.error("restart failed: %s", err)
                    break
                assert self.proc is not None
                self.set_state(DomainState.RUNNING, qemu_pid=self.proc.pid, restarts=restarts)
                continue
            if action == "preserve":
                # QEMU is gone but the domain is kept, as xl keeps a crashed domain.
                self.set_state(DomainState.CRASHED, qemu_pid=None)
                await self.close_qmp()
                await self.wait_for_stop()
                break
            break
        await self.stop_qemu()
        await self.close_qmp()
        self.store.release(self.name)
        return 0

    def request_stop(self) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            asyncio.get_running_loop().create_task(self.stop_qemu())
        self._stop_event().set()

    def _stop_event(self) -> asyncio.Event:
        if not hasattr(self, "_stop"):
            self._stop = asyncio.Event()
        return self._stop

    async def wait_for_stop(self) -> None:
        await self._stop_event().wait()


def _normalise(action: str) -> str:
    """xl's actions reduced to what pvhvm does: destroy, restart or preserve."""
    if action in ("restart", "rename-restart", "coredump-restart", "soft-reset"):
        return "restart"
    if action == "preserve":
        return "preserve"
    return "destroy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvhvm-supervisor")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s",
    )
    store = StateStore(args.state_dir)
    supervisor = Supervisor(store, args.name, args.ready_fd)
    try:
        return asyncio.run(supervisor.main())
    except Exception as err:  # the last line of defence of a detached process: log it
        log.exception("supervisor failed")
        supervisor.tell_creator(f"error: supervisor failed: {err}")
        if supervisor.proc is not None and supervisor.proc.returncode is None:
            supervisor.proc.kill()
        store.release(args.name)
        return 1


if __name__ == "__main__":
    sys.exit(main())
