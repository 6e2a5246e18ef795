"""QMP through qemu.qmp (asyncio), with a synchronous helper for one-shot CLI commands.

Every QMP connection is made here: the socket is connected first and its peer checked
(SO_PEERCRED, pvhvm/private.py: the QEMU pvhvm started runs as this uid), and only then
handed to qemu.qmp, which sends ``qmp_capabilities`` and, for restores, descriptors. A socket
another user holds gets nothing and a ForeignPeerError (issue 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket as sockets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

from pvhvm.errors import DomainError, ForeignPeerError
from pvhvm.private import stranger_on, who


async def connect(socket: Path, name: str = "pvhvm", timeout: float = 10.0) -> QMPClient:
    """A connected QMPClient on ``socket``; DomainError when QEMU does not answer in time,
    ForeignPeerError (nothing sent) when another user listens there."""
    client = QMPClient(name)
    try:
        async with asyncio.timeout(timeout):
            sock = await _checked_socket(socket)
            try:
                await client.connect(sock)
            except BaseException:
                sock.close()
                raise
    except (TimeoutError, ConnectError, OSError) as err:
        await _quietly_disconnect(client)
        raise DomainError(f"QMP socket {socket} does not answer: {err}") from err
    except BaseException:
        await _quietly_disconnect(client)
        raise
    return client


async def _checked_socket(path: Path) -> sockets.socket:
    """A stream socket connected to ``path`` whose peer is this uid (nothing sent yet)."""
    sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM | sockets.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except BaseException:
        sock.close()
        raise
    stranger = stranger_on(sock)
    if stranger is not None:
        raise ForeignPeerError(
            f"another user ({who(stranger)}) listens on QMP socket {path}, where the domain's "
            "QEMU should; pvhvm sent it nothing. Stop that user's process, remove the socket "
            f"and keep {path.parent} yours and 0700")
    return sock


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
