"""The `pvhvm` command: thin click commands over the config, plan and realiser stages.

Every PvhvmError and every usage error becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pvhvm import __version__
from pvhvm.cli.output import console, plan_tables, print_json
from pvhvm.config.domain import load_config
from pvhvm.config.lang import parse_cli_variable
from pvhvm.errors import PvhvmError
from pvhvm.plan.plan import Platform, make_plan

PLATFORMS = [p.value for p in Platform]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pvhvm")
def cli() -> None:
    """HVM guests whose disks and NICs are each deterministically emulated or PV."""


def _variables(assignments: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_cli_variable(a) for a in assignments)


def warn(message: str) -> None:
    console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", markup=True)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON object.")
@click.option(
    "--platform", type=click.Choice(PLATFORMS), default="qemu", show_default=True,
    help="Where to realise the domain.",
)
def create(
    config: Path, variables: tuple[str, ...], dry_run: bool, as_json: bool, platform: str
) -> None:
    """Create a domain from CONFIG (an xm/xl-style file, parsed, never executed).

    VAR=VALUE pairs are variables the file may use; those it does not use override its keys.
    """
    domain = load_config(config, _variables(variables))
    plan = make_plan(domain, Platform(platform))
    if not as_json:
        for message in plan.warnings:
            warn(message)
    if not dry_run:
        raise click.UsageError("only --dry-run is available in this version")
    if as_json:
        print_json(plan.to_json())
        return
    out = console()
    for table in plan_tables(plan):
        out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; turn expected errors into one message and exit status 1."""
    try:
        cli.main(args=argv, prog_name="pvhvm", standalone_mode=False)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        click.echo("pvhvm: aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        click.echo(f"pvhvm: error: {err.format_message()}", err=True)
        if isinstance(err, click.UsageError) and err.ctx is not None:
            click.echo(f"Try '{err.ctx.command_path} --help' for help.", err=True)
        sys.exit(1)
    except PvhvmError as err:
        click.echo(f"pvhvm: error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
