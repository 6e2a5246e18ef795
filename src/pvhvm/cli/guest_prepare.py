"""``pvhvm guest prepare``: make a config's installed guest boot on PV disks (virt-v2v style).

The ``guest`` group (cli/guest.py) finds the ``prepare`` command here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from pvhvm.cli.output import console, print_json
from pvhvm.config.domain import load_config
from pvhvm.config.lang import parse_cli_variable
from pvhvm.errors import printable
from pvhvm.guest.appliance import Timeouts
from pvhvm.guest.prepare import PrepareError, PrepareResult, Verify, prepare_image
from pvhvm.inspect.check import CheckResult, check_guest, root_disk
from pvhvm.inspect.image import ImageReport
from pvhvm.inspect.pygrub import run_bootloader
from pvhvm.plan.plan import Plan, Platform, make_plan


def _variables(assignments: tuple[str, ...]) -> dict[str, Any]:
    return dict(parse_cli_variable(a) for a in assignments)


def root_image(plan: Plan) -> Path:
    """The image file of the disk the guest boots from (a raw file, not a script target)."""
    disk = root_disk(plan)
    if disk is None:
        raise PrepareError(f"{plan.name}: the config has no hard disk to prepare")
    if disk.script is not None:
        raise PrepareError(f"{plan.name}: {disk.vdev} is a script-backed disk "
                           f"({disk.script}); prepare works on image files")
    if disk.format not in ("raw", ""):
        raise PrepareError(f"{plan.name}: {disk.vdev} is {disk.format}; prepare works on raw "
                           "images (qemu-img convert -O raw first)")
    return Path(disk.target)


def _verifier(plan: Plan) -> Verify:
    """What ``guest check --deep`` says of the prepared guest's report, as JSON."""
    disk = root_disk(plan)

    def verify(report: ImageReport) -> dict[str, Any]:
        return CheckResult(disk, report, None, check_guest(plan, report, disk=disk)).to_json()

    return verify


def changes_table(result: PrepareResult) -> Table:
    verb = "would change" if result.dry_run else "changed"
    table = Table(title=f"{result.image}: {verb}")
    table.add_column("file", overflow="fold")
    table.add_column("what", overflow="fold")
    table.add_column("change", overflow="fold")
    for change in result.changes:  # guest text: escaped, and never read as rich markup
        table.add_row(Text(printable(change.path)), Text(change.kind),
                      Text(printable(change.detail)))
    return table


@click.command("prepare")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-n", "--dry-run", is_flag=True, help="List the changes; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--timeout", type=click.FloatRange(min=1), default=Timeouts.tool,
              show_default=True, metavar="SECONDS",
              help="Stop the guest's initramfs rebuild (and the appliance) after this long "
                   "(--regenerate-initramfs).")
@click.option("--regenerate-initramfs", "regenerate", is_flag=True,
              help="Rebuild each initramfs with the guest's own update-initramfs or dracut "
                   "(run in the appliance; minutes under TCG) instead of appending the "
                   "drivers to it.")
@click.option("--check", "verify", is_flag=True,
              help="Then check the prepared guest as guest check --deep does, in the same "
                   "appliance session (exit status 1 unless it boots).")
def prepare(config: Path, variables: tuple[str, ...], dry_run: bool, as_json: bool,
            timeout: float, regenerate: bool, verify: bool) -> None:
    """Make the guest of CONFIG boot on PV (virtio) disks: add the drivers to its initramfs
    (an archive appended to it, no guest program run; or, with --regenerate-initramfs, the
    guest's own generator) and to its generator's config, name devices by UUID= in fstab,
    crypttab and the bootloader; keep <file>.pre-pvhvm copies. All of it inside the
    libguestfs appliance VM, on a private copy that replaces the image once done. Refused
    while a domain runs on the image."""
    # a Xen PV guest's bootloader = "pygrub" is read as create reads it (its boot disk is
    # the one prepared); the kernel it finds is not what prepare works on
    domain = load_config(config, _variables(variables))
    plan = make_plan(run_bootloader(domain), Platform.QEMU)
    image = root_image(plan)
    timeouts = Timeouts(tool=timeout)
    check = None
    if verify and not dry_run:
        if domain.bootloader is not None and domain.kernel is None:
            raise PrepareError(f"{plan.name}: --check reads the boot chain a boot loader "
                               "config gives before prepare; run guest check after prepare "
                               "instead")
        check = _verifier(plan)
    err = console(stderr=True)
    if as_json:
        result = prepare_image(image, dry_run=dry_run, timeouts=timeouts,
                               regenerate=regenerate, verify=check)
    else:
        with err.status("preparing") as status:

            def progress(message: str) -> None:
                # a terminal gets the steps as a log; a pipe only the outcome (or the one
                # error line), as the status spinner shows nothing there either
                status.update(Text(printable(message)))
                if err.is_terminal:
                    err.log(Text(printable(message)))

            result = prepare_image(image, dry_run=dry_run, progress=progress,
                                   timeouts=timeouts, regenerate=regenerate, verify=check)
    if as_json:
        print_json(result.to_json())
        if result.check is not None and not result.check["boots"]:
            sys.exit(1)
        return
    for note in result.notes:
        err.print(Text.assemble(("note:", "yellow"), " ", printable(note)))
    out = console()
    out.print(changes_table(result))
    if not dry_run:
        total = result.seconds.get("total", 0.0)
        out.print(f"{len(result.written)} files written in the guest; {total:.1f} s; backups "
                  "end in .pre-pvhvm")
    if result.check is not None:
        for line in result.check["reasons"]:
            err.print(Text(printable(str(line))))
        out.print(Text(printable(f"{plan.name} after prepare: {result.check['verdict']}")))
        if not result.check["boots"]:
            sys.exit(1)
