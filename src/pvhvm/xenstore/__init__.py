"""A wire-compatible XenStore: daemon and clients in pure Python (stdlib + asyncio).

Modules, in the order data flows:

* `wire` -- the xs_wire.h codec (no I/O): `Op`, `Packet`, `Parser`, `Permission`;
* `tree`, `transaction`, `quota` -- the database, transactions, domain accounting;
* `server` -- ``reply(store, connection, request) -> effects``, the daemon's logic;
* `daemon` -- the asyncio Unix-socket adapter, `spawn_daemon` and `run_in_thread`;
* `client` -- `XenStoreClient` (blocking) and `AsyncXenStoreClient`;
* `errors` -- the XenStoreError subclasses (tree in its docstring).
"""

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
