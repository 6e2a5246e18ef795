"""Errors of offline guest-image inspection.

    PvhvmError (pvhvm.errors)
    └── InspectError                     an image cannot be inspected
        ├── ImageUnreadableError         no such file, permission, a tool missing or failing
        └── ImageFormatError (ValueError)  the bytes are not what they claim (bad table, archive)

Callers that only want to know "can this image be read at all" catch InspectError.
"""

from __future__ import annotations

from pvhvm.errors import PvhvmError


class InspectError(PvhvmError):
    """A guest image (or an initramfs) cannot be inspected."""


class ImageUnreadableError(InspectError):
    """The image cannot be opened or read (missing, unreadable, a needed tool missing)."""


class ImageFormatError(InspectError, ValueError):
    """Malformed content: a partition table, filesystem or archive that does not parse."""
