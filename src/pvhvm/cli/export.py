"""``pvhvm export-xl`` and ``pvhvm export-libvirt``: a CONFIG for another toolstack.

Loaded when named (see main.LazyGroup): the xl.cfg writer and libvirt's XML are not needed by
``create`` or the lifecycle verbs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pvhvm.cli import configs
from pvhvm.cli.output import warn, writable_option, write_output
from pvhvm.config.domain import load_config
from pvhvm.libvirt.xml import VIRT_TYPES, domain_xml
from pvhvm.plan.plan import Platform, make_plan
from pvhvm.xen.xlcfg import export_xl


def _emit(text: str, notes: tuple[str, ...], output: Path | None) -> None:
    """An export's notes on stderr, its text on stdout or in ``output``."""
    for note in notes:
        warn(note)
    if output is None:
        sys.stdout.write(text)
    else:
        write_output(output, text)


@click.command(name="export-xl")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              callback=writable_option,
              help="Write the xl.cfg here instead of stdout.")
@configs.dialect_option
def export_xl_cmd(
    config: Path, variables: tuple[str, ...], output: Path | None, dialect: str | None
) -> None:
    """Export CONFIG as an xl.cfg(5) for a Xen host, noting what xl cannot express."""
    domain = load_config(config, configs.variables(variables), configs.dialect(dialect))
    plan = make_plan(domain, Platform.XEN, skip_unsupported=True)
    exported = export_xl(plan)
    _emit(exported.text, exported.notes, output)


@click.command(name="export-libvirt")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("variables", nargs=-1, metavar="[VAR=VALUE]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              callback=writable_option,
              help="Write the domain XML here instead of stdout.")
@click.option("--virt-type", type=click.Choice(VIRT_TYPES), default="kvm", show_default=True,
              help="<domain type=...>: kvm, or qemu for TCG where KVM is not available.")
@configs.dialect_option
def export_libvirt_cmd(
    config: Path, variables: tuple[str, ...], output: Path | None, virt_type: str,
    dialect: str | None,
) -> None:
    """Export CONFIG as libvirt domain XML (virsh define), noting what libvirt cannot express."""
    domain = configs.run_bootloader(
        load_config(config, configs.variables(variables), configs.dialect(dialect)))
    plan = make_plan(domain, Platform.QEMU)
    exported = domain_xml(plan, virt_type)
    _emit(exported.xml, exported.notes, output)
