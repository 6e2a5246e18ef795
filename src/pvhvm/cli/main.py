"""The `pvhvm` command: thin click commands over the config, plan and realiser stages.

Every PvhvmError and every usage error becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from pvhvm import __version__
from pvhvm.cli import configs
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import resolve_name
from pvhvm.cli.output import console, plan_tables, print_findings, print_json, say, warn
from pvhvm.config.source import ConfigSource
from pvhvm.errors import PvhvmError, printable
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.platforms import PLATFORM_NAMES, CreateOptions, Platforms
from pvhvm.runtime.persist import Definitions, identity


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


#: the lifecycle verbs of cli/domain.py by command name: loaded when named, like the commands
#: below (a dry run needs none of them)
DOMAIN_VERBS = {
    "list": "list_cmd", "console": "console", "shutdown": "shutdown", "pause": "pause",
    "unpause": "unpause", "reboot": "reboot", "reset": "reset", "vncdisplay": "vncdisplay",
    "block-list": "block_list",
    "network-list": "network_list", "block-attach": "block_attach",
    "block-detach": "block_detach", "network-attach": "network_attach",
    "network-detach": "network_detach", "cd-insert": "cd_insert", "cd-eject": "cd_eject",
    "mem-set": "mem_set", "vcpu-set": "vcpu_set", "migrate": "migrate",
    "migrate-receive": "migrate_receive", "save": "save", "restore": "restore",
}


#: persistent domains and the host service (cli/persist.py), loaded when named
PERSIST_VERBS = {
    "define": "define", "start": "start", "undefine": "undefine", "autostart": "autostart",
    "config-update": "config_update", "edit": "edit", "host": "host",
}


@click.group(
    cls=LazyGroup,
    lazy={
        **{name: f"pvhvm.cli.domain:{attribute}" for name, attribute in DOMAIN_VERBS.items()},
        "bench": "pvhvm.cli.bench:bench", "image": "pvhvm.cli.image:image",
        "guest": "pvhvm.cli.guest:guest",
        "report": "pvhvm.cli.report:report", "xenstored": "pvhvm.cli.xenstored:xenstored",
        "dmesg": "pvhvm.cli.logs:dmesg",
        "export-xl": "pvhvm.cli.export:export_xl_cmd",
        "export-libvirt": "pvhvm.cli.export:export_libvirt_cmd",
        "top": "pvhvm.cli.stats:top", "domstats": "pvhvm.cli.stats:domstats",
        **{name: f"pvhvm.cli.persist:{attribute}" for name, attribute in PERSIST_VERBS.items()},
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="pvhvm")
def cli() -> None:
    """HVM guests whose disks and NICs are each deterministically emulated or PV."""


def _known_platform(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: ``--platform`` names one of this invocation's platforms."""
    names = current_platforms().names()
    if value is not None and value not in names:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(names)}",
                                 ctx=ctx, param=param)
    return value


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the plan).")
@click.option(
    "--platform", metavar="|".join(PLATFORM_NAMES), default=None, callback=_known_platform,
    help=f"Where to realise the domain.  [default: {PLATFORM_NAMES[0]}]",
)
@click.option(
    "--accel", type=click.Choice(["auto", "kvm", "tcg"]), default=None,
    help="auto uses KVM only where it has been proven to boot a kernel.  [default: auto]",
)
@click.option("-p", "--paused", is_flag=True, help="Leave the domain paused after creating it.")
@click.option("-c", "--console", "attach_console", is_flag=True,
              help="Attach to the console once the domain has started (^] detaches).")
@click.option(
    "--xenstore", type=click.Path(path_type=Path), default=None,
    help="xen platform: the xenstored socket to use (default: pvhvm's own daemon).",
)
@configs.dialect_option
@click.option("--skip-unsupported", is_flag=True,
              help="Create the guest without the keys this platform cannot realise "
                   "(PCI passthrough, vTPM...) instead of refusing.")
@click.option("--connect", metavar="URI", default=None,
              help="libvirt platform: the daemon's URI (default: qemu:///system).")
@click.option("--no-check", is_flag=True,
              help="Create the guest even when pvhvm guest check says it will not boot.")
def create(
    config: Path, variables: tuple[str, ...], dry_run: bool, as_json: bool, platform: str | None,
    accel: str | None, paused: bool, xenstore: Path | None, attach_console: bool,
    dialect: str | None, skip_unsupported: bool, connect: str | None, no_check: bool,
) -> None:
    """Create a domain from CONFIG (an xm/xl-style file, parsed, never executed), or from a
    libvirt domain XML (*.xml, or a file that starts with '<').

    VAR=VALUE pairs are variables the file may use; those it does not use override its keys.
    """
    platforms = current_platforms()
    target = platforms.default if platform is None else platforms.get(platform)
    # read once: the record keeps this text, which save and migrate carry to be planned again
    source = ConfigSource.read(config, variables, dialect, skip_unsupported)
    options = CreateOptions(
        accel=accel, paused=paused, console=attach_console, xenstore=xenstore, connect=connect,
        source=source, dry_run=dry_run,
    )
    platforms.check_options(target, options)
    domain = configs.domain_of_source(source)
    if target.plan_target is Platform.QEMU:
        domain = configs.run_bootloader(domain)
    # its uuid: the config's, a defined domain's, else a fresh one (runtime/persist.identity)
    definitions = Definitions()
    uuid = identity(domain.name, domain.uuid, definitions, remember=not dry_run)
    plan = make_plan(domain, target.plan_target, skip_unsupported=skip_unsupported, uuid=uuid)
    warnings = list(plan.warnings) + target.realise_warnings(plan, options)
    if not as_json and not dry_run and definitions.read(plan.name) is not None:
        warn(f"domain {plan.name} is defined: this runs {config}'s config, transient, with "
             f"its uuid; the definition is unchanged ('pvhvm start {plan.name}' runs it)",
             "note")
    if not as_json:
        for message in warnings:
            warn(message)
        for message in () if dry_run else plan.notes:  # a dry run shows them in its tables
            warn(message, "note")
        for message in target.realise_notes(plan, options):
            warn(message, "note")
    if dry_run:
        document = plan.to_json()
        document["warnings"] = warnings
        document.update(target.dry_run(plan, options))
        if as_json:
            print_json(document)
            return
        out = console()
        for table in plan_tables(plan):
            out.print(table)
        return
    found: list[dict[str, str]] | None = None
    if not no_check:
        from pvhvm.inspect import checkcache

        plan_json = plan.to_json()
        found = checkcache.lookup(plan_json)
        if found is None:
            # imported here, as LazyGroup imports commands: only a real create reads the
            # guest's image, so --dry-run and the other verbs do not pay for the inspection
            guest_cli = importlib.import_module("pvhvm.cli.guest")
            found = guest_cli.findings(guest_cli.guest_check_for_create(plan))
            checkcache.remember(plan_json, found)
    created = platforms.create(target, plan, options)
    record = created.record
    if found and not as_json:
        print_findings(found)
    if as_json:
        print_json(record.to_json())
    else:
        say(f"domain {record.name} (id {record.domid}) {created.summary}")
    if attach_console:
        target.console(record.name)


@cli.command()
@click.argument("name", callback=resolve_name)
def destroy(name: str) -> None:
    """Stop domain NAME at once and remove everything it made (as xl destroy)."""
    current_platforms().locate(name).destroy(name)




def main(argv: list[str] | None = None, platforms: Platforms | None = None) -> None:
    """Entry point: run the CLI; turn expected errors into one message and exit status 1.

    ``platforms``: the platforms the commands may use (default: the built-in ones).
    """
    try:
        cli.main(args=argv, prog_name="pvhvm", standalone_mode=False, obj=platforms)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        click.echo("pvhvm: aborted", err=True)
        sys.exit(1)
    except click.ClickException as err:
        click.echo(f"pvhvm: error: {printable(err.format_message())}", err=True)
        if isinstance(err, click.UsageError) and err.ctx is not None:
            click.echo(f"Try '{err.ctx.command_path} --help' for help.", err=True)
        sys.exit(1)
    except PvhvmError as err:
        click.echo(f"pvhvm: error: {printable(str(err))}", err=True)
        sys.exit(1)
    except OSError as err:
        # the host refused pvhvm itself (a read-only or full state directory, ...): one line
        # naming the file; the operation has already undone what it made
        click.echo(f"pvhvm: error: {os_error_line(err)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def os_error_line(err: OSError) -> str:
    """``[Errno 28] No space left on device: '/x'`` as ``/x: no space left on device``."""
    reason = (err.strerror or str(err)).lower() if err.strerror else str(err)
    if err.filename is None:
        return reason
    return f"{printable(os.fsdecode(err.filename))}: {reason}"
