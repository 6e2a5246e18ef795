"""A wire-compatible XenStore: daemon and clients in pure Python (stdlib + asyncio).

Modules, in the order data flows:

* `wire` -- the xs_wire.h codec (no I/O): `Op`, `Packet`, `Parser`, `Permission`;
* `tree`, `transaction`, `quota` -- the database, transactions, domain accounting;
* `server` -- ``reply(store, connection, request) -> effects``, the daemon's logic;
* `daemon` -- the asyncio Unix-socket adapter, `spawn_daemon` and `run_in_thread`;
* `client` -- `XenStoreClient` (blocking) and `AsyncXenStoreClient`;
* `errors` -- the XenStoreError subclasses (tree in its docstring).
"""

from typing import TYPE_CHECKING, Any

#: each public name and the module it lives in; imported on first use, so that a command
#: that needs only the client does not load the daemon
_WHERE = {
    "Access": "wire",
    "AsyncTransaction": "client",
    "AsyncXenStoreClient": "client",
    "Connection": "server",
    "DaemonProcess": "daemon",
    "Op": "wire",
    "Packet": "wire",
    "Permission": "wire",
    "Quota": "quota",
    "ThreadedDaemon": "daemon",
    "Transaction": "client",
    "WatchEvent": "client",
    "XenStore": "server",
    "XenStoreClient": "client",
    "XenStoreConflictError": "errors",
    "XenStoreConnectionError": "errors",
    "XenStoreDaemon": "daemon",
    "XenStoreErrnoError": "errors",
    "XenStoreProtocolError": "errors",
    "default_socket_path": "client",
    "reply": "server",
    "run_daemon": "daemon",
    "run_in_thread": "daemon",
    "spawn_daemon": "daemon",
}
__all__ = [
    "Access",
    "AsyncTransaction",
    "AsyncXenStoreClient",
    "Connection",
    "DaemonProcess",
    "Op",
    "Packet",
    "Permission",
    "Quota",
    "ThreadedDaemon",
    "Transaction",
    "WatchEvent",
    "XenStore",
    "XenStoreClient",
    "XenStoreConflictError",
    "XenStoreConnectionError",
    "XenStoreDaemon",
    "XenStoreErrnoError",
    "XenStoreProtocolError",
    "default_socket_path",
    "reply",
    "run_daemon",
    "run_in_thread",
    "spawn_daemon",
]

if TYPE_CHECKING:
    from pvhvm.xenstore.client import (
        AsyncTransaction,
        AsyncXenStoreClient,
        Transaction,
        WatchEvent,
        XenStoreClient,
        default_socket_path,
    )
    from pvhvm.xenstore.daemon import (
        DaemonProcess,
        ThreadedDaemon,
        XenStoreDaemon,
        run_daemon,
        run_in_thread,
        spawn_daemon,
    )
    from pvhvm.xenstore.errors import (
        XenStoreConflictError,
        XenStoreConnectionError,
        XenStoreErrnoError,
        XenStoreProtocolError,
    )
    from pvhvm.xenstore.quota import Quota
    from pvhvm.xenstore.server import Connection, XenStore, reply
    from pvhvm.xenstore.wire import Access, Op, Packet, Permission


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
