"""The one error root of pvhvm.

    PvhvmError
    ├── InputError (also ValueError)       bad input from a user: config, spec, CLI argument
    │   ├── ConfigError                    a config file: carries file, line, column
    │   └── SpecError                      a disk= or vif= spec
    ├── PlanError (also ValueError)        a config that parses but cannot be realised as asked
    ├── LaunchError                       the device model failed to start (exit code, argv, log)
    ├── DomainError                        lifecycle: unknown domain, name in use, ...
    │   ├── NotOnPlatformError             a verb or option the domain's platform lacks
    │   └── ForeignPeerError               another uid answers on a socket pvhvm reached
    ├── GuestImageError                    building the guest image kit failed
    └── XenStoreError                      XenStore protocol or transport errors (see xenstore/)

The CLI turns any PvhvmError into one line on stderr and exit status 1.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) shown as escapes, so a
    message naming a hostile file name stays one line and cannot drive the terminal."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


class PvhvmError(Exception):
    """Root of every error pvhvm raises on purpose."""


class InputError(PvhvmError, ValueError):
    """Bad input from a user."""


class ConfigError(InputError):
    """An error in a domain config file, located at file:line:col when known."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None,
        col: int | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = printable(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.col is not None:
                    where += f":{self.col}"
            where += ": "
        return f"{where}{self.message}"


class SpecError(InputError):
    """A bad disk= or vif= spec string."""


class PlanError(PvhvmError, ValueError):
    """A config whose devices cannot be realised as asked."""


class LaunchError(PvhvmError):
    """The device model failed to start."""

    def __init__(
        self, message: str, *, argv: list[str] | None = None, exitcode: int | None = None,
        output: str = "",
    ) -> None:
        self.argv = argv or []
        self.exitcode = exitcode
        self.output = output
        detail = message
        if exitcode is not None:
            detail += f" (exit status {exitcode})"
        tail = output.strip().splitlines()[-3:]
        if tail:
            detail += ": " + " | ".join(tail)
        super().__init__(detail)


class DomainError(PvhvmError):
    """A lifecycle operation on a domain failed."""


class NotOnPlatformError(DomainError):
    """A verb (or create option) that the platform holding the domain does not have."""

    def __init__(self, message: str, *, platform: str, verb: str) -> None:
        self.platform = platform
        self.verb = verb
        super().__init__(message)


class ForeignPeerError(DomainError):
    """Another user answers on a socket pvhvm connected to for its user (the host
    supervisor's, a domain's QMP or console): nothing was sent to it (pvhvm/private.py)."""


class GuestImageError(PvhvmError):
    """Building the guest image kit failed."""


class XenStoreError(PvhvmError):
    """XenStore protocol or transport error; subclasses live in pvhvm.xenstore."""
