"""Reading a CONFIG argument as every command reads it: VAR=VALUE pairs, ``--dialect``, a
libvirt domain XML instead of a config file, and a pygrub bootloader (shared by ``create`` and
the lazily loaded export commands)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from pvhvm.config.domain import Dialect, DomainConfig, config_from_text
from pvhvm.config.lang import parse_cli_variable, read_config_text
from pvhvm.config.source import ConfigSource


def variables(assignments: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_cli_variable(a) for a in assignments)


def dialect_option(function: Any) -> Any:
    return click.option(
        "--dialect", type=click.Choice([d.value for d in Dialect]), default=None,
        help="Read CONFIG as xl, xm (xend 3.0.4-4.4) or xend 3.0.2 (the RFC's defaults) "
             "read it (default: from what the file uses; xl when nothing tells).",
    )(function)


def dialect(value: str | None) -> Dialect | None:
    return None if value is None else Dialect(value)


def load_domain(path: Path, variables: Mapping[str, Any] | None = None,
                dialect: Dialect | None = None) -> DomainConfig:
    """CONFIG as ``create`` reads it: an xm/xl file, or a libvirt domain XML as
    :func:`pvhvm.libvirt.read.load_domain` tells them apart and reads them.

    That reader (and expat under it) is imported only for a file that may be XML: it is about
    8 ms of a dry run that should take 100 ms in all, and a config file never needs it.
    """
    text = read_config_text(path)
    if may_be_domain_xml(path, text):
        from pvhvm.libvirt import read

        return read.load_domain(path, variables, dialect)
    return config_from_text(text, str(path), variables, dialect)


def domain_of_source(source: ConfigSource) -> DomainConfig:
    """A config source (the text ``create`` read once, and how to read it) as
    :func:`load_domain` reads a file; its record keeps the source for save and migrate."""
    given = variables(source.variables)
    forced = dialect(source.dialect)
    if may_be_domain_xml(Path(source.file), source.text):
        from pvhvm.libvirt import read

        return read.domain_from_text(source.file, source.text, given, forced)
    return config_from_text(source.text, source.file, given, forced)


def may_be_domain_xml(path: Path, text: str) -> bool:
    """True for every file :func:`pvhvm.libvirt.read.is_domain_xml` reads as XML (named
    ``*.xml``, or with a ``<`` in it: all XML has one), so that the reader decides those."""
    return str(path).lower().endswith(".xml") or "<" in text


def run_bootloader(domain: DomainConfig) -> DomainConfig:
    """bootloader = "pygrub" with no kernel=: the kernel is found in the guest's disk (the
    inspection modules are imported only then, as LazyGroup imports commands)."""
    if domain.bootloader is None or domain.kernel is not None:
        return domain
    pygrub = importlib.import_module("pvhvm.inspect.pygrub")
    found: DomainConfig = pygrub.run_bootloader(domain)
    return found
