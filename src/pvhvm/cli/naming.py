"""The one resolver of a domain named on the command line (issue 21, item 6): every verb
that names a domain takes its name, its domid or its UUID, as xl takes a name or an id and
virsh a name, an id or a UUID. Light on purpose: ``destroy`` and every lifecycle verb load it.
"""

from __future__ import annotations

import click

from pvhvm.cli.context import current_platforms
from pvhvm.config.domain import name_problem
from pvhvm.errors import DomainError
from pvhvm.runtime import persist
from pvhvm.runtime.state import StateStore


def definitions() -> persist.Definitions:
    """The defined domains of this invocation's state directory."""
    return persist.Definitions(StateStore().base)


def resolve(value: str) -> str:
    """The name of the one domain, running (on any platform) or defined, that ``value``
    names: a name as is; else a domid (digits) or a UUID (runtime/persist.resolve). One
    line when nothing or several match."""
    platforms = current_platforms()
    if platforms.holder(value) is not None:
        return value
    defined = definitions()
    if name_problem(value) is None and defined.read(value) is not None:
        return value
    if not value.isdigit() and persist.normal_uuid(value) is None:
        raise DomainError(f"no domain named {value!r}")
    known = persist.known_domains(platforms.domains(), defined.definitions())
    return persist.resolve(value, known)


def resolve_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback for a NAME argument (see :func:`resolve`)."""
    return resolve(value)


def resolve_names(ctx: click.Context, param: click.Parameter,
                  value: tuple[str, ...]) -> tuple[str, ...]:
    """A click callback for NAME... arguments."""
    return tuple(resolve(one) for one in value)
