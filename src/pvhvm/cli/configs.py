"""Reading a CONFIG argument as every command reads it: VAR=VALUE pairs, ``--dialect`` and a
pygrub bootloader (shared by ``create`` and the lazily loaded export commands)."""

from __future__ import annotations

import importlib
from typing import Any

import click

from pvhvm.config.domain import Dialect, DomainConfig
from pvhvm.config.lang import parse_cli_variable


def variables(assignments: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_cli_variable(a) for a in assignments)


def dialect_option(function: Any) -> Any:
    return click.option(
        "--dialect", type=click.Choice([d.value for d in Dialect]), default=None,
        help="Read CONFIG as xm or xl reads it (default: xl when it sets type=, "
             "xm when it sets builder=).",
    )(function)


def dialect(value: str | None) -> Dialect | None:
    return None if value is None else Dialect(value)


def run_bootloader(domain: DomainConfig) -> DomainConfig:
    """bootloader = "pygrub" with no kernel=: the kernel is found in the guest's disk (the
    inspection modules are imported only then, as LazyGroup imports commands)."""
    if domain.bootloader is None or domain.kernel is not None:
        return domain
    pygrub = importlib.import_module("pvhvm.inspect.pygrub")
    found: DomainConfig = pygrub.run_bootloader(domain)
    return found
