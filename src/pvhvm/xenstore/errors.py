"""XenStore errors and the one table between errno names and the wire.

    XenStoreError (pvhvm.errors)
    ├── XenStoreErrnoError              an ERROR reply: carries the errno name from the wire
    │   └── XenStoreConflictError       EAGAIN on TRANSACTION_END (retry the transaction)
    ├── XenStoreProtocolError (ValueError)  malformed bytes: bad header, payload over 4096
    └── XenStoreConnectionError         the socket could not be reached or was closed

The daemon raises XenStoreErrnoError inside its operations; `reply` turns it into an
XS_ERROR packet whose payload is the errno name and a nul (xenstore.txt, "ERROR").
"""

from __future__ import annotations

import errno as _errno

from pvhvm.errors import XenStoreError

#: The errno names a daemon may send, in the order of ``xsd_errors[]`` (xs_wire.h).
WIRE_ERRNO_NAMES: tuple[str, ...] = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)


class XenStoreErrnoError(XenStoreError):
    """An operation failed with an errno name (the payload of an XS_ERROR reply).

    ``errno_name`` is the name as sent on the wire (``"ENOENT"``); ``errno`` is the
    host's number for it, or None when the host has no such errno.
    """

    def __init__(self, errno_name: str, message: str | None = None, *,
                 path: str | None = None) -> None:
        if errno_name not in WIRE_ERRNO_NAMES:
            # xenstored sends EINVAL for anything it cannot translate (send_error()).
            errno_name = "EINVAL"
        self.errno_name = errno_name
        self.errno: int | None = getattr(_errno, errno_name, None)
        self.path = path
        detail = errno_name
        if message:
            detail += f": {message}"
        elif path is not None:
            detail += f": {path}"
        super().__init__(detail)

    @staticmethod
    def create(errno_name: str, message: str | None = None, *,
               path: str | None = None) -> XenStoreErrnoError:
        """The most specific error class for ``errno_name``."""
        if errno_name == "EAGAIN":
            return XenStoreConflictError(errno_name, message, path=path)
        return XenStoreErrnoError(errno_name, message, path=path)


class XenStoreConflictError(XenStoreErrnoError):
    """TRANSACTION_END answered EAGAIN: another writer touched what the transaction read."""


class XenStoreProtocolError(XenStoreError, ValueError):
    """Bytes that do not follow xs_wire.h (e.g. a payload longer than XENSTORE_PAYLOAD_MAX)."""


class XenStoreConnectionError(XenStoreError):
    """The daemon's socket could not be reached, or the connection was closed."""
