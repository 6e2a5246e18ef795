"""The `pvhvm` command."""

from __future__ import annotations

import click

from pvhvm import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pvhvm")
def main() -> None:
    """HVM guests whose disks and NICs are each deterministically emulated or PV."""
