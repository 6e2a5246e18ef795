"""What every command of one ``pvhvm`` invocation shares: its platforms."""

from __future__ import annotations

import click

from pvhvm.platforms import Platforms, default_platforms


def current_platforms() -> Platforms:
    """The platforms of this invocation: those given to ``main``, else the built-in ones."""
    root = click.get_current_context().find_root()
    if not isinstance(root.obj, Platforms):
        root.obj = default_platforms()
    return root.obj
