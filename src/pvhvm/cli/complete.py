"""Shell completion of domain names (click's completion protocol: ``_PVHVM_COMPLETE``).

Every argument that names a domain completes from the state directory's domain records, on
every platform (the xen platform's store too), and its defined domains (running or not): a
directory listing, no supervisor started, no socket asked, no record read (docs/pvhvm.1,
README "Shell completion"). Enable it with
``eval "$(_PVHVM_COMPLETE=bash_source pvhvm)"`` (``zsh_source``, ``fish_source`` for those shells).
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from pvhvm.errors import PvhvmError
from pvhvm.runtime.persist import Definitions
from pvhvm.runtime.state import StateStore


def domain_names() -> list[str]:
    """The names of the domains this user's state directory holds, running or defined ([] when
    there is none or it cannot be read: a completion never fails)."""
    try:
        store = StateStore()
        names = {name for each in (store, *store.peers) for name in each.names()}
        return sorted(names | set(Definitions(store.base).names()))
    except (PvhvmError, OSError):
        return []


def complete_domain(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """click's ``shell_complete`` for a NAME argument: the domains whose name starts with
    what has been typed."""
    return [CompletionItem(name) for name in domain_names() if name.startswith(incomplete)]
