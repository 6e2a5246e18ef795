"""The `pvhvm` command: thin click commands over the config, plan and realiser stages.

Every PvhvmError becomes one line on stderr and exit status 1; a usage error (unknown option
or command, missing argument, bad choice) one line and exit status 2, as click and xl's own
getopt give. With ``--json`` the same failure is also one JSON document on stdout
(output.error_envelope, docs/json.md), with the same exit status.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from pvhvm import __version__
from pvhvm.cli import configs
from pvhvm.cli.complete import complete_domain
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import resolve_name
from pvhvm.cli.output import (
    command_name,
    console,
    error_envelope,
    json_printed,
    new_command,
    plan_tables,
    print_findings,
    print_json,
    print_json_document,
    say,
    warn,
)
from pvhvm.config.source import ConfigSource
from pvhvm.errors import (
    ConfigError,
    DomainError,
    GuestImageError,
    InputError,
    LaunchError,
    NotOnPlatformError,
    PlanError,
    PvhvmError,
    XenStoreError,
    printable,
)
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

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """click's, with "Did you mean" only for a near miss: click suggests any command whose
        difflib ratio reaches 0.6, which offers 'create' for 'rename' (0.67); a transposed
        or dropped letter ('lsit', 'destory', 'creat') scores 0.75 and more."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as err:
            near = difflib.get_close_matches(err.command_name, self.list_commands(ctx),
                                             n=3, cutoff=SUGGESTION_CUTOFF)
            message = f"No such command {err.command_name!r}."
            if near:
                message += f" Did you mean {' or '.join(repr(n) for n in near)}?"
            raise click.UsageError(message, ctx=ctx) from None


#: how close (difflib's ratio) a mistyped command must be to a real one to be suggested
SUGGESTION_CUTOFF = 0.75


#: the lifecycle verbs of cli/domain.py by command name: loaded when named, like the commands
#: below (a dry run needs none of them)
DOMAIN_VERBS = {
    "list": "list_cmd", "console": "console", "shutdown": "shutdown", "pause": "pause",
    "unpause": "unpause", "reboot": "reboot", "reset": "reset", "vncdisplay": "vncdisplay",
    "vncviewer": "vncviewer",
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
    """Run Xen HVM guests from xm/xl domain configs on QEMU/KVM (or on Xen, or through
    libvirt), each disk and NIC emulated or paravirtual exactly as its config line says.

    The verbs are xl's. --json gives one JSON document (docs/json.md); the man page
    (man -l docs/pvhvm.1) has every command."""


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
    # (kept for the name only once the create has succeeded: a refused create keeps nothing)
    uuid = identity(domain.name, domain.uuid, definitions, remember=False)
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
    if domain.uuid is None and definitions.read(plan.name) is None:
        definitions.remember_uuid(plan.name, uuid)
    if found and not as_json:
        print_findings(found)
    if as_json:
        print_json(record.to_json())
    else:
        say(f"domain {record.name} (id {record.domid}) {created.summary}")
    if attach_console:
        target.console(record.name)


@cli.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def destroy(name: str) -> None:
    """Stop domain NAME at once and remove everything it made (as xl destroy)."""
    current_platforms().locate(name).destroy(name)




def main(argv: list[str] | None = None, platforms: Platforms | None = None) -> None:
    """Entry point: run the CLI; turn expected errors into one message and exit status 1 (2
    for a usage error), and into a JSON error document as well under ``--json``.

    ``platforms``: the platforms the commands may use (default: the built-in ones).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = wants_json(args)
    new_command()
    try:
        cli.main(args=args, prog_name="pvhvm", standalone_mode=False, obj=platforms)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.Abort:
        _fail(args, as_json, "aborted", None, "aborted", 1, prefix="pvhvm: ")
    except click.UsageError as err:
        hint = (f"Try '{err.ctx.command_path} --help' for help."
                if err.ctx is not None else None)
        _fail(args, as_json, printable(err.format_message()), _usage_where(err), "usage",
              err.exit_code, hint=hint, ctx=err.ctx)
    except click.ClickException as err:
        _fail(args, as_json, printable(err.format_message()), None, "input", err.exit_code)
    except PvhvmError as err:
        where = _config_where(err) if isinstance(err, ConfigError) else None
        _fail(args, as_json, printable(str(err)), where, error_kind(err), 1)
    except OSError as err:
        # the host refused pvhvm itself (a read-only or full state directory, ...): one line
        # naming the file; the operation has already undone what it made
        where = None if err.filename is None else printable(os.fsdecode(err.filename))
        _fail(args, as_json, os_error_line(err), where, "host", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


def wants_json(args: Sequence[str]) -> bool:
    """Whether this command line asks for JSON (``--json``, or ``list -l``, which prints
    JSON as xl's does): then its failure is a JSON document too."""
    words = list(args[:args.index("--")] if "--" in args else args)
    if "--json" in words:
        return True
    return bool(words) and words[0] == "list" and ("-l" in words or "--long" in words)


def _fail(args: Sequence[str], as_json: bool, message: str, where: str | None, kind: str,
          status: int, *, prefix: str = "pvhvm: error: ", hint: str | None = None,
          ctx: click.Context | None = None) -> None:
    """The one line on stderr (and a hint), the JSON error document on stdout when asked for,
    and exit ``status``."""
    click.echo(f"{prefix}{message}", err=True)
    if hint is not None:
        click.echo(hint, err=True)
    if as_json and not json_printed():
        command = command_name(ctx) if ctx is not None else command_words(args)
        print_json_document(error_envelope(command, message, where, kind))
    sys.exit(status)


def error_kind(err: PvhvmError) -> str:
    """The ``kind`` of a JSON error document (docs/json.md): the branch of pvhvm.errors'
    tree the error is on."""
    for cls, kind in ((InputError, "input"), (PlanError, "plan"), (LaunchError, "launch"),
                      (NotOnPlatformError, "not-on-platform"), (DomainError, "domain"),
                      (GuestImageError, "guest-image"), (XenStoreError, "xenstore")):
        if isinstance(err, cls):
            return kind
    return "error"


def _config_where(err: ConfigError) -> str | None:
    """``file:line:col`` of a config error, as much as it knows."""
    if err.file is None:
        return None
    where = printable(err.file)
    for part in (err.line, err.col if err.line is not None else None):
        if part is not None:
            where += f":{part}"
    return where


def _usage_where(err: click.UsageError) -> str | None:
    """The option or argument a usage error is about (``--accel``, ``CONFIG``), if click says."""
    if isinstance(err, click.NoSuchOption):
        return err.option_name
    param = getattr(err, "param", None)
    if isinstance(param, click.Option):
        return "/".join(param.opts)
    if isinstance(param, click.Parameter):
        return param.human_readable_name
    return None


def command_words(args: Sequence[str]) -> str:
    """The command a command line names (``guest check``), as far as its words resolve; ""
    when none does (a failure before any command was found)."""
    words: list[str] = []
    group: click.Command = cli
    ctx = click.Context(cli, info_name="pvhvm")
    for word in args:
        if word.startswith("-") or not isinstance(group, click.Group):
            break
        found = group.get_command(ctx, word)
        if found is None:
            break
        words.append(word)
        group = found
    return " ".join(words)


def os_error_line(err: OSError) -> str:
    """``[Errno 28] No space left on device: '/x'`` as ``/x: no space left on device``."""
    reason = (err.strerror or str(err)).lower() if err.strerror else str(err)
    if err.filename is None:
        return reason
    return f"{printable(os.fsdecode(err.filename))}: {reason}"
