"""The one way a value reaches a QEMU option string (QemuOpts, QEMU's util/qemu-option.c).

QEMU reads ``-drive``, ``-device``, ``-netdev``, ``-chardev``, ``-object``, ``-vnc``,
``-audiodev``, ``-rtc``, ``-machine``, ``-name``, ``-smp`` ... as ``key=value,key=value``
(some with a leading bare value: ``-device DRIVER,...``, ``-netdev TYPE,...``, ``-vnc
ADDR:DISPLAY,...``). Inside a value a comma is written ``,,``; a single comma always ends the
value. So every value goes through :func:`escape`, and every option string is made by
:func:`option_string` from typed pairs whose keys are pvhvm's own (checked here: a key is
never data).

Options QEMU takes as a whole argv item (``-kernel``, ``-append``, ``-uuid``, ``-k``) need no
escaping; ``-initrd`` is split at commas for a multiboot kernel (each piece a module, and
QEMU 7.2 has no escape there), so :func:`initrd_value` refuses a path with a comma.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pvhvm.errors import PlanError

#: what a key pvhvm writes looks like (``file.server.host``, ``queue-size``, ``logappend``)
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

OptionValue = str | int | bool
#: an ordered (key, value) pair; a bool becomes ``on``/``off``
OptionPair = tuple[str, OptionValue]


def escape(value: str) -> str:
    """``value`` as one QemuOpts value: a comma doubled (``,,``), nothing else changes."""
    return value.replace(",", ",,")


def _text(value: OptionValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def option_string(pairs: Iterable[OptionPair], *, head: str | None = None) -> str:
    """``[HEAD,]key=value,key=value`` with every value (and the head) escaped.

    ``head`` is the leading bare value some options take (a ``-device`` driver, a
    ``-netdev``/``-chardev`` backend, a ``-vnc`` address). Keys are pvhvm's own: a key that
    is not a plain identifier is a bug, raised as PlanError rather than written.
    """
    items: list[str] = [] if head is None else [escape(head)]
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise PlanError(f"QEMU option key {key!r} is not an option name")
        items.append(f"{key}={escape(_text(value))}")
    if not items:
        raise PlanError("an empty QEMU option string")
    return ",".join(items)


def split_option_string(text: str) -> list[str]:
    """QemuOpts' own reading of ``text``: the items between single commas, ``,,`` → ``,``
    (the inverse of :func:`option_string`, for checks and tests)."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return items


def initrd_value(path: str) -> str:
    """The ``-initrd`` argument for ``path``: QEMU splits it at commas into multiboot
    modules and cannot escape one, so a comma is refused (one line)."""
    if "," in path:
        raise PlanError(f"ramdisk {path!r}: QEMU's -initrd splits at commas (multiboot "
                        "modules) and has no escape for one; move or link the file to a path "
                        "without a comma")
    return path
