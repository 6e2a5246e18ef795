"""``pvhvm guest``: installed guests, read offline (inspect) and checked against a plan (check).

``create`` calls :func:`guest_check_for_create` so a guest that will not boot is refused
with the reasons (``--no-check`` goes ahead anyway); a guest the check cannot tell about is
created, with what could not be read as a note.

Every string read from a guest image (os-release, boot entries, kernel releases, fstab,
file names) is printed through :func:`pvhvm.errors.printable` and handed to rich as
:class:`~rich.text.Text`, never as markup: a guest cannot drive the terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from pvhvm.cli.output import console, print_findings, print_json
from pvhvm.config.domain import Dialect, load_config
from pvhvm.config.lang import parse_cli_variable
from pvhvm.errors import PvhvmError, printable
from pvhvm.inspect.check import CheckResult, Problem, Severity, Verdict, check_plan
from pvhvm.inspect.errors import InspectError
from pvhvm.inspect.image import ImageReport, find_boot_entry, inspect_image
from pvhvm.inspect.pygrub import run_bootloader
from pvhvm.plan.plan import Plan, Platform, make_plan


class GuestWillNotBootError(PvhvmError):
    """``create`` refused: the check found a problem that stops the guest booting."""


#: helper commands in their own modules, found when they are installed: "name" → module
OPTIONAL_COMMANDS = {"prepare": "pvhvm.cli.guest_prepare"}


class GuestGroup(click.Group):
    """The ``guest`` group; ``prepare`` lives in its own module and is imported when named."""

    def _optional(self, name: str) -> click.Command | None:
        module = OPTIONAL_COMMANDS.get(name)
        if module is None or importlib.util.find_spec(module) is None:
            return None
        command = getattr(importlib.import_module(module), name, None)
        return command if isinstance(command, click.Command) else None

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names |= {n for n, m in OPTIONAL_COMMANDS.items() if importlib.util.find_spec(m)}
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._optional(cmd_name)


@click.group(cls=GuestGroup, context_settings={"help_option_names": ["-h", "--help"]})
def guest() -> None:
    """Installed guests: what an image holds, and whether it boots with a config."""


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """An inspection error may quote the guest (a file name, a tool's complaint about it):
    it leaves as one escaped line."""
    try:
        yield
    except InspectError as err:
        raise type(err)(printable(str(err))) from err


def _cell(value: str) -> Text:
    """A table cell of guest text: control characters escaped, never markup."""
    return Text(printable(value))


def _row(table: Table, *cells: str) -> None:
    table.add_row(*(_cell(c) for c in cells))


def report_tables(report: ImageReport) -> list[Table]:
    """The readable form of an ImageReport (every cell escaped: it is the guest's text)."""
    tables: list[Table] = []
    summary = Table(title="Image", show_header=False, title_justify="left")
    summary.add_column("key", style="bold", overflow="fold")
    summary.add_column("value", overflow="fold")
    _row(summary, "path", report.path)
    _row(summary, "size", f"{report.size >> 20} MiB")
    _row(summary, "partition table", f"{report.table.scheme} {report.table.disk_id}".strip())
    _row(summary, "os", report.os_release.get("PRETTY_NAME", "?"))
    if report.bootloader is not None:
        entry = report.default_entry
        _row(summary, "boot loader", f"{report.bootloader.loader} ({report.bootloader.path})")
        if entry is not None:
            _row(summary, "default entry", entry.title)
            _row(summary, "  kernel", entry.kernel)
            _row(summary, "  initrd", " ".join(entry.initrd) or "(none)")
            _row(summary, "  cmdline", entry.cmdline)
    for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
        if key in report.default_grub:
            _row(summary, key, report.default_grub[key])
    _row(summary, "gettys", " ".join(report.gettys) or "(none found)")
    tables.append(summary)

    filesystems = Table(title="Filesystems", title_justify="left")
    for column in ("part", "start", "size", "type", "uuid", "label", "partuuid", "role"):
        filesystems.add_column(column, overflow="fold")
    for fs in report.filesystems:
        sig = fs.signature
        _row(filesystems,
             "-" if fs.partition is None else str(fs.partition), str(fs.offset),
             f"{fs.size >> 20} MiB", sig.type if sig else "?", sig.uuid if sig else "",
             sig.label if sig else "", fs.partuuid, fs.role)
    tables.append(filesystems)

    kernels = Table(title="Kernels and their storage/network drivers", title_justify="left")
    for column in ("release", "initrd", "at boot (built in or initramfs)", "modules only",
                   "absent"):
        kernels.add_column(column, overflow="fold")
    for kernel in report.kernels:
        initrd = kernel.initrd
        at_boot, modules, absent = [], [], []
        for driver, state in kernel.drivers.items():
            if state.at_boot:
                at_boot.append(driver + ("(b)" if state.builtin else ""))
            elif state.installed:
                modules.append(driver)
            elif state.installed is False:
                absent.append(driver)
        where = Text("(none)")
        if initrd is not None:
            detail = initrd.compression + (" + microcode" if initrd.microcode else "")
            if initrd.generator:
                detail += f", {initrd.generator}"
            if initrd.error:
                detail = f"unreadable: {initrd.error}"
            where = Text.assemble(printable(initrd.path), "\n", printable(detail))
        kernels.add_row(_cell(kernel.release), where, _cell(" ".join(at_boot)),
                        _cell(" ".join(modules)), _cell(" ".join(absent)))
    tables.append(kernels)

    mounts = Table(title="fstab / crypttab", title_justify="left")
    for column in ("file:line", "device", "named by", "mountpoint", "type", "options"):
        mounts.add_column(column, overflow="fold")
    for mount in report.fstab:
        _row(mounts, f"fstab:{mount.line}", mount.device.spec, mount.device.naming.value,
             mount.mountpoint, mount.fstype, ",".join(mount.options))
    for crypt in report.crypttab:
        _row(mounts, f"crypttab:{crypt.line}", crypt.device.spec, crypt.device.naming.value,
             f"/dev/mapper/{crypt.name}", "luks", ",".join(crypt.options))
    tables.append(mounts)
    return tables


@guest.command("inspect")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect_cmd(image: Path, as_json: bool) -> None:
    """What disk IMAGE holds, read offline: partitions, OS, kernels and their initramfs
    drivers, boot loader, fstab. Nothing is booted or mounted."""
    with _one_line_errors():
        report = inspect_image(image)
    if as_json:
        print_json(report.to_json())
        return
    out = console()
    for table in report_tables(report):
        out.print(table)
    for note in report.notes:
        out.print(Text(f"note: {printable(note)}"), soft_wrap=True)


@guest.command("boot-entry")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--extract", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the entry's kernel and initrd out into this directory (as pygrub).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def boot_entry_cmd(image: Path, extract: Path | None, as_json: bool) -> None:
    """The default boot entry of IMAGE's boot loader: kernel, initrd, command line (what
    pygrub boots for a bootloader = "pygrub" guest)."""
    with _one_line_errors():
        if extract is None:
            report = inspect_image(image)
            entry = report.default_entry
            if entry is None:
                raise InspectError(f"{image}: no default boot entry "
                                   f"({'; '.join(report.notes) or 'the boot loader has none'})")
            document: dict[str, Any] = entry.to_json()
        else:
            if not extract.is_dir():
                raise InspectError(f"--extract {extract}: no such directory")
            boot = find_boot_entry(image, extract)
            document = {**boot.entry.to_json(), "kernel_file": str(boot.kernel),
                        "initrd_file": str(boot.initrd) if boot.initrd else None}
    if as_json:
        print_json(document)
        return
    out = console()
    for key, value in document.items():
        text = " ".join(value) if isinstance(value, list) else str(value)
        out.print(Text(f"{key}: {printable(text)}"), soft_wrap=True)


def _variables(assignments: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_cli_variable(a) for a in assignments)


def _escaped(problem: Problem) -> dict[str, str]:
    """A finding as print_findings takes it, its guest text escaped."""
    return {key: printable(value) for key, value in problem.to_json().items()}


def _print_problems(problems: list[Problem]) -> None:
    print_findings([_escaped(p) for p in problems])


@guest.command("check")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("--platform", type=click.Choice([p.value for p in Platform]), default="qemu",
              show_default=True, help="The platform the guest would run on.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--dialect", type=click.Choice([d.value for d in Dialect]), default=None,
              help="Read CONFIG as xm or xl reads it (as create does).")
@click.option("--deep", is_flag=True,
              help="Read what the host reader cannot (a root on LVM, XFS, btrfs) through "
                   "libguestfs's appliance VM (20 s or more under TCG).")
def check_cmd(config: Path, variables: tuple[str, ...], platform: str,
              as_json: bool, dialect: str | None, deep: bool) -> None:
    """Will the guest of CONFIG boot as planned? One line per finding with its fix, then
    the verdict: boots (exit status 0: every link of the boot chain read and fine), will not
    boot (1: a driver or device name read missing), cannot tell (2: a link could not be read,
    e.g. root on LVM, XFS or btrfs without --deep; create goes ahead with a note). A bad
    CONFIG is exit status 1 too, with one "pvhvm: error:" line and no verdict."""
    domain = load_config(config, _variables(variables),
                         None if dialect is None else Dialect(dialect))
    if Platform(platform) is Platform.QEMU:
        domain = run_bootloader(domain)
    plan = make_plan(domain, Platform(platform))
    result = check_plan(plan, deep=deep)
    verdict = result.verdict
    if as_json:
        print_json(result.to_json())
    else:
        _print_problems(result.problems)
        where = result.report.path if result.report else "nothing readable"
        console().print(Text(printable(
            f"{plan.name}: {verdict.words} ({where}, {len(result.problems)} findings)")),
            soft_wrap=True)
    if verdict is not Verdict.BOOTS:
        # the findings are the message; click's ctx.exit would be swallowed
        sys.exit(verdict.exit_status)


def guest_check_for_create(plan: Plan, quiet: bool = False) -> CheckResult:
    """``create``'s check: a fatal problem refuses the create, with every problem printed.
    Notes alone are printed by :func:`print_check_notes` once the domain exists, so a create
    that fails for another reason still says one line."""
    result = check_plan(plan)
    if result.fatal:
        _print_problems(result.problems)
        count = sum(1 for p in result.problems if p.severity is Severity.FATAL)
        raise GuestWillNotBootError(
            f"{plan.name} will not boot as planned ({count} fatal problem"
            f"{'s' if count > 1 else ''} above); fix them (pvhvm guest prepare) or use "
            "--no-check to create it anyway"
        )
    return result


def print_check_notes(result: CheckResult) -> None:
    """The check's notes, after a create that went ahead."""
    _print_problems(result.problems)


def findings(result: CheckResult) -> list[dict[str, str]]:
    """A check's findings as :mod:`pvhvm.inspect.checkcache` keeps them and create prints
    them (guest text escaped)."""
    return [_escaped(p) for p in result.problems]
