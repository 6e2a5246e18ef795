"""QMP through qemu.qmp (asyncio), with a synchronous helper for one-shot CLI commands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from pvhvm.errors import DomainError


async def connect(socket: Path, name: str = "pvhvm", timeout: float = 10.0) -> QMPClient:
    """A connected QMPClient on ``socket``; DomainError when QEMU does not answer in time."""
    client = QMPClient(name)
    try:
        await asyncio.wait_for(client.connect(str(socket)), timeout)
    except (TimeoutError, ConnectError, OSError) as err:
        await _quietly_disconnect(client)
        raise DomainError(f"QMP socket {socket} does not answer: {err}") from err
    return client


async def _quietly_disconnect(client: QMPClient) -> None:
    with contextlib.suppress(QMPError, OSError, EOFError):
        await client.disconnect()


async def execute_async(
    socket: Path, command: str, arguments: Mapping[str, object] | None = None,
    timeout: float = 10.0,
) -> Any:
    client = await connect(socket, timeout=timeout)
    try:
        return await asyncio.wait_for(client.execute(command, arguments), timeout)
    except ExecuteError as err:
        raise DomainError(f"QEMU refused {command}: {err}") from err
    except (TimeoutError, QMPError, OSError, EOFError) as err:
        raise DomainError(f"QMP {command} failed: {err}") from err
    finally:
        await _quietly_disconnect(client)


def execute(
    socket: Path, command: str, arguments: Mapping[str, object] | None = None,
    timeout: float = 10.0,
) -> Any:
    """Run one QMP command on ``socket`` and return its result."""
    return asyncio.run(execute_async(socket, command, arguments, timeout))
