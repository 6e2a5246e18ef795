"""The `pvhvm` command: thin click commands over the config, plan and realiser stages.

Every PvhvmError and every usage error becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from pvhvm import __version__
from pvhvm.cli.domain import register as register_domain_verbs
from pvhvm.cli.output import console, plan_tables, print_json, writable_option, write_output
from pvhvm.config.domain import load_config
from pvhvm.config.lang import parse_cli_variable
from pvhvm.errors import PvhvmError
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.qemu.argv import ignored_settings
from pvhvm.runtime import console as domain_console
from pvhvm.runtime import lifecycle
from pvhvm.runtime.lifecycle import CreateOptions
from pvhvm.runtime.state import StateStore
from pvhvm.xen import domain as xen_domain
from pvhvm.xen.xlcfg import export_xl

PLATFORMS = [p.value for p in Platform]


class LazyGroup(click.Group):
    """A group some of whose commands are imported only when named: ``bench`` pulls in the
    whole benchmark and ``xenstored`` the daemon, which ``create`` or ``list`` never need."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: command name → "module:attribute"
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.lazy.get(cmd_name)
        if where is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = where.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    lazy={
        "bench": "pvhvm.cli.bench:bench", "image": "pvhvm.cli.image:image",
        "guest": "pvhvm.cli.guest:guest",
        "report": "pvhvm.cli.report:report", "xenstored": "pvhvm.cli.xenstored:xenstored",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the plan).")
@click.option(
    "--platform", type=click.Choice(PLATFORMS), default="qemu", show_default=True,
    help="Where to realise the domain.",
)
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto", show_default=True,
    help="auto uses KVM only where it has been proven to boot a kernel.",
)
@click.option("-p", "--paused", is_flag=True, help="Leave the domain paused after creating it.")
@click.option("-c", "--console", "attach_console", is_flag=True,
              help="Attach to the console once the domain has started (^] detaches).")
@click.option(
    "--xenstore", type=click.Path(path_type=Path), default=None,
    help="xen platform: the xenstored socket to use (default: pvhvm's own daemon).",
)
@click.option("--no-check", is_flag=True,
              help="Create the guest even when pvhvm guest check says it will not boot.")
def create(
    config: Path, variables: tuple[str, ...], dry_run: bool, as_json: bool, platform: str,
    accel: str, paused: bool, xenstore: Path | None, attach_console: bool, no_check: bool,
) -> None:
    """Create a domain from CONFIG (an xm/xl-style file, parsed, never executed).

    VAR=VALUE pairs are variables the file may use; those it does not use override its keys.
    """
    if xenstore is not None and platform != "xen":
        raise click.UsageError("--xenstore applies to --platform xen only")
    domain = load_config(config, _variables(variables))
    plan = make_plan(domain, Platform(platform))
    options = CreateOptions(accel=accel, paused=paused)
    xen = platform == "xen"
    warnings = list(plan.warnings)
    if not xen:
        warnings += lifecycle.network_warnings(plan, lifecycle.host_bridges())
        warnings += ignored_settings(plan)
    if not as_json:
        for message in warnings:
            warn(message)
    if dry_run:
        document = plan.to_json()
        document["warnings"] = warnings
        if xen:
            document["xenstore"] = xen_domain.dry_run_nodes(plan)
        else:
            document["qemu_argv"] = lifecycle.dry_run_argv(plan, options)
        if as_json:
            print_json(document)
            return
        out = console()
        for table in plan_tables(plan):
            out.print(table)
        return
    if not no_check:
        # imported here, as LazyGroup imports commands: only a real create reads the guest's
        # image, so --dry-run and the other verbs do not pay for the inspection modules
        from pvhvm.cli.guest import guest_check_for_create

        guest_check_for_create(plan, quiet=as_json)
    if xen:
        record = xen_domain.create(plan, xenstore)
        done = f"written to XenStore at {record.plan['xenstore_socket']}"
    else:
        record = lifecycle.create(plan, options)
        how = "created paused" if paused else "started"
        done = f"{how}: {record.accel}, console {record.console}"
    if as_json:
        print_json(record.to_json())
    else:
        console(stderr=True).print(f"domain {record.name} (id {record.domid}) {done}")
    if attach_console and not xen:
        domain_console.attach(record, lock=StateStore().paths(record.name).console_lock)


@cli.command()
@click.argument("name")
def destroy(name: str) -> None:
    """Stop domain NAME at once and remove everything it made (as xl destroy)."""
    if not xen_domain.destroy(name):
        lifecycle.destroy(name)


@cli.command(name="export-xl")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              callback=writable_option,
              help="Write the xl.cfg here instead of stdout.")
def export_xl_cmd(config: Path, variables: tuple[str, ...], output: Path | None) -> None:
    """Export CONFIG as an xl.cfg(5) for a Xen host, noting what xl cannot express."""
    plan = make_plan(load_config(config, _variables(variables)), Platform.XEN)
    exported = export_xl(plan)
    for note in exported.notes:
        warn(note)
    if output is None:
        sys.stdout.write(exported.text)
    else:
        write_output(output, exported.text)


register_domain_verbs(cli)


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
