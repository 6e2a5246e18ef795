"""Persistent domains and the host service (issue 21, items 1 and 6): define, start,
undefine, autostart, config-update, edit and ``host start|stop|install-unit``; and
:func:`resolve_name`, the one resolver every verb that names a domain uses (name, domid or
UUID). Thin: the work is runtime/persist.py and runtime/hostsvc.py.

Definitions are of the qemu platform (the one whose domains this host runs); ``start`` and
``host start`` start them there."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from importlib import resources
from pathlib import Path

import click

from pvhvm.cli import configs
from pvhvm.cli.complete import complete_domain
from pvhvm.cli.context import current_platforms
from pvhvm.cli.naming import definitions, resolve_name
from pvhvm.cli.output import print_json, say, warn
from pvhvm.config.lang import read_config_text
from pvhvm.config.source import ConfigSource
from pvhvm.errors import DomainError, InputError, PvhvmError
from pvhvm.plan.plan import Plan, Platform, make_plan
from pvhvm.platforms import CreateOptions
from pvhvm.runtime import hostsvc, persist
from pvhvm.runtime.persist import Definition, Definitions
from pvhvm.runtime.replan import plan_source
from pvhvm.runtime.state import StateStore


def _definitions() -> Definitions:
    return definitions()


def _defined(name: str) -> Definition:
    definition = _definitions().read(name)
    if definition is None:
        raise DomainError(f"domain {name!r} is not defined ('pvhvm define CFG' defines it)")
    return definition


def _warn_all(plan: Plan) -> None:
    platform = current_platforms().default
    for message in list(plan.warnings) + platform.realise_warnings(
            plan, CreateOptions(dry_run=True)):
        warn(message)


_config_argument = click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
_variables_argument = click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
_skip_option = click.option("--skip-unsupported", is_flag=True,
                            help="Keep it though this platform cannot realise some keys.")


@click.command()
@_config_argument
@_variables_argument
@configs.dialect_option
@_skip_option
@click.option("--json", "as_json", is_flag=True, help="The definition as JSON.")
def define(config: Path, variables: tuple[str, ...], dialect: str | None,
           skip_unsupported: bool, as_json: bool) -> None:
    """Define a persistent domain from CONFIG (as virsh define; xl users keep /etc/xen):
    parsed and planned as create --dry-run, kept as written (0600, in the state directory).
    A defined name gets its new config and keeps its uuid and MACs."""
    source = ConfigSource.read(config, variables, dialect, skip_unsupported)
    domain = configs.domain_of_source(source)
    definitions = _definitions()
    old = definitions.read(domain.name)
    running = current_platforms().default.holds(domain.name)
    kept = (old.uuid if old is not None
            else current_platforms().default.find(domain.name).uuid if running else None)
    plan = make_plan(configs.run_bootloader(domain), Platform.QEMU,
                     skip_unsupported=skip_unsupported,
                     uuid=kept or persist.identity(domain.name, domain.uuid, definitions))
    if not as_json:
        _warn_all(plan)
    new = definitions.define(Definition(plan.name, plan.uuid, False, source))
    definition = _defined(plan.name)
    if as_json:
        print_json(definition.to_json())
        return
    say(f"domain {plan.name} {'defined' if new else 'redefined'} (uuid {plan.uuid})")


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("-p", "--paused", is_flag=True, help="Leave the domain paused.")
@click.option("-c", "--console", "attach_console", is_flag=True,
              help="Attach to the console once started (^] detaches).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="As for create.")
@click.option("--json", "as_json", is_flag=True, help="The started domain's record as JSON.")
def start(name: str, paused: bool, attach_console: bool, accel: str, as_json: bool) -> None:
    """Start defined domain NAME (as virsh start): its kept config planned again, with its
    uuid (so its MACs)."""
    definition = _defined(name)
    platforms = current_platforms()
    if platforms.holder(name) is not None:
        raise DomainError(f"domain {name!r} is already running")
    started = hostsvc.start_defined(definition, StateStore(), paused=paused, accel=accel)
    if as_json:
        print_json(started.record.to_json())
    else:
        for message in started.warnings:
            warn(message)
        for message in started.notes:
            warn(message, "note")
        record = started.record
        how = "started paused" if paused else "started"
        say(f"domain {name} (id {record.domid}) {how}: {record.accel}, console {record.console}")
    if attach_console:
        platforms.default.console(name)


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def undefine(name: str) -> None:
    """Remove defined domain NAME's definition (as virsh undefine: a running domain runs on,
    transient, and is gone once it shuts down)."""
    _definitions().undefine(name)
    running = current_platforms().holder(name) is not None
    say(f"domain {name} undefined" + ("; it runs on as a transient domain" if running else ""))


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@click.option("--disable", is_flag=True, help="Do not start it at host start.")
def autostart(name: str, disable: bool) -> None:
    """Start defined domain NAME at 'pvhvm host start' (at boot), as virsh autostart."""
    _definitions().set_autostart(name, not disable)
    say(f"domain {name} {'unmarked' if disable else 'marked'} as autostarted")


def _replace_config(name: str, source: ConfigSource) -> None:
    """Keep ``source`` as defined domain ``name``'s config once it parses and plans."""
    definition = _defined(name)
    plan = plan_source(source, uuid=definition.uuid)
    if plan.name != name:
        raise InputError(f"{source.file}: the config names domain {plan.name!r}, not {name!r} "
                         "(define it to make a new domain)")
    _warn_all(plan)
    _definitions().update(name, source, plan.uuid)
    running = current_platforms().holder(name) is not None
    say(f"domain {name}: config updated" + ("; it takes effect at its next start"
                                            if running else ""))


@click.command(name="config-update")
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
@_config_argument
@_variables_argument
@configs.dialect_option
@_skip_option
def config_update(name: str, config: Path, variables: tuple[str, ...], dialect: str | None,
                  skip_unsupported: bool) -> None:
    """Give defined domain NAME the config CONFIG (as xl config-update; a running domain
    gets it at its next start). Its uuid and MACs are kept."""
    _replace_config(name, ConfigSource.read(config, variables, dialect, skip_unsupported))


@click.command()
@click.argument("name", callback=resolve_name, shell_complete=complete_domain)
def edit(name: str) -> None:
    """Edit defined domain NAME's config in $VISUAL or $EDITOR (as virsh edit): a copy is
    edited, and kept only once it parses and plans; a bad edit keeps the old config."""
    definition = _defined(name)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    workdir = Path(tempfile.mkdtemp(prefix=f"pvhvm-edit-{name}-"))
    copy = workdir / (Path(definition.source.file).name or f"{name}.cfg")
    copy.write_text(definition.source.text, encoding="utf-8")
    copy.chmod(0o600)
    try:
        done = subprocess.run([*shlex.split(editor), str(copy)], check=False)
    except OSError as err:
        shutil.rmtree(workdir, ignore_errors=True)
        raise DomainError(f"editor {editor!r} did not run: {err.strerror or err}") from err
    if done.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise DomainError(f"editor {editor!r} exited with status {done.returncode}; "
                          f"domain {name}'s config is unchanged")
    text = read_config_text(copy)
    if text == definition.source.text:
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"domain {name}: config unchanged")
        return
    try:
        _replace_config(name, replace(definition.source, text=text))
    except PvhvmError as err:
        raise DomainError(f"the edit is refused and domain {name}'s config is unchanged "
                          f"(the edit is kept in {copy}): {err}") from err
    shutil.rmtree(workdir, ignore_errors=True)


# --- the host service ------------------------------------------------------------------


@click.group()
def host() -> None:
    """The host service, as xendomains and libvirtd's autostart: start autostart domains at
    boot, shut guests down (or save them) at host shutdown; a systemd unit runs these."""


def _report(report: hostsvc.HostReport, as_json: bool) -> None:
    if as_json:
        print_json({"done": report.done, "failed": report.failed})
    else:
        for line in report.done:
            say(line)
        for line in report.failed:
            warn(line, "error", "red")
    if report.failed:
        sys.exit(1)


@host.command(name="start")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="As for create.")
@click.option("--json", "as_json", is_flag=True, help="What was done, as JSON.")
def host_start(accel: str, as_json: bool) -> None:
    """Clear what a host crash left, restore what 'host stop --save-dir' saved, start every
    autostart domain that is not running (idempotent)."""
    store = StateStore()
    _report(hostsvc.host_start(store, Definitions(store.base), accel=accel), as_json)


@host.command(name="stop")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save every domain here (NAME.save); 'host start' restores them.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=hostsvc.STOP_TIMEOUT, show_default=True,
              help="Seconds to wait for the guests to power off; then they are destroyed.")
@click.option("--json", "as_json", is_flag=True, help="What was done, as JSON.")
def host_stop(save_dir: Path | None, timeout: float, as_json: bool) -> None:
    """Shut every domain down cleanly, all at once (as xendomains stop), or save them."""
    if save_dir is not None and not save_dir.is_dir():
        raise InputError(f"--save-dir {save_dir}: no such directory")
    _report(hostsvc.host_stop(StateStore(), save_dir, timeout), as_json)


#: the unit shipped in the package; install-unit fills in its @...@ places
UNIT_NAME = "pvhvm-host.service"


def unit_text() -> str:
    """The shipped systemd unit for this pvhvm, this user and this state directory."""
    template = resources.files("pvhvm").joinpath("data", UNIT_NAME).read_text("utf-8")
    script = Path(sys.executable).with_name("pvhvm")
    command = str(script) if script.exists() else f"{sys.executable} -m pvhvm"
    return (template.replace("@PVHVM@", command)
            .replace("@USER@", pwd.getpwuid(os.getuid()).pw_name)
            .replace("@STATE_DIR@", str(StateStore().base)))


@host.command(name="install-unit")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/etc/systemd/system"), show_default=True,
              help="Where to write pvhvm-host.service.")
@click.option("--print", "to_stdout", is_flag=True, help="Print the unit instead.")
def install_unit(directory: Path, to_stdout: bool) -> None:
    """Write the systemd unit whose ExecStart is 'pvhvm host start' and ExecStop 'pvhvm host
    stop', for this user and state directory; then: systemctl enable pvhvm-host."""
    text = unit_text()
    if to_stdout:
        click.echo(text, nl=False)
        return
    if not directory.is_dir():
        raise InputError(f"--dir {directory}: no such directory")
    path = directory / UNIT_NAME
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise DomainError(f"cannot write {path}: {err.strerror or err}") from err
    say(f"wrote {path}; now: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
