"""What ``pvhvm create --dry-run`` imports (issue 13: a dry run within 100 ms, Python's start
included). The time itself is measured in benchmarks/toolstack; this pins the module set that
the time depends on: a dry run of a qemu config loads no event loop, no QMP, no other platform
and no progress bars. Each probe is a fresh interpreter running the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pvhvm.platforms import PLATFORM_NAMES, default_platforms
from pvhvm.runtime.state import PLATFORM_SUBSTORES, StateStore
from tests import jsonout

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: modules a dry run of a qemu config must not import (nor any module under them)
NOT_FOR_A_DRY_RUN = (
    "asyncio", "qemu.qmp", "libvirt", "rich.progress", "pvhvm.platforms.xen",
    "pvhvm.platforms.libvirt", "pvhvm.xenstore", "pvhvm.runtime.hotplug", "pvhvm.runtime.resize",
    "pvhvm.runtime.save", "pvhvm.runtime.migrate", "pvhvm.runtime.supervisor",
    "pvhvm.libvirt", "pvhvm.xen", "pvhvm.inspect", "pvhvm.bench", "pvhvm.cli.domain",
    "pvhvm.cli.export", "hypothesis", "pytest", "guestfs", "pvhvm.guest.appliance",
)

PROBE = """\
import json, sys
from pvhvm.cli.entry import run
sys.argv = ["pvhvm", *sys.argv[1:]]
try:
    run()
except SystemExit as done:
    code = done.code
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def loaded(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``pvhvm ARGV`` in a fresh interpreter; its result and the modules it had loaded."""
    env = dict(os.environ, PVHVM_STATE_DIR=str(tmp_path / "state"))
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    head, _, modules = done.stderr.rpartition("\nMODULES ")
    assert modules, done.stderr
    done.stderr = head
    return done, set(json.loads(modules))


def heavy(modules: set[str], names: tuple[str, ...] = NOT_FOR_A_DRY_RUN) -> list[str]:
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


@pytest.fixture
def imagedir(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4"):
        (images / name).write_bytes(b"\0" * 1024)
    return images


@pytest.mark.parametrize("extra", [[], ["--json"]], ids=["tables", "json"])
def test_dry_run_of_a_qemu_config_loads_only_what_it_uses(
    tmp_path: Path, imagedir: Path, extra: list[str],
) -> None:
    done, modules = loaded(tmp_path, "create", str(EXAMPLES / "pv-only.cfg"),
                           f"imagedir={imagedir}", "--dry-run", *extra)
    assert done.returncode == 0, done.stderr
    assert "xvda" in done.stdout  # it did plan the guest (its tables, or the argv)
    assert heavy(modules) == []
    # the tables need rich; the JSON document does not
    assert ("rich.console" in modules) == (not extra)
    assert not (tmp_path / "state" / "domains").exists()


def test_the_probe_sees_what_a_command_loads(tmp_path: Path, imagedir: Path) -> None:
    """The same probe, on a dry run for the xen platform, finds that platform loaded: an
    empty list above is what was imported, not a probe that sees nothing."""
    done, modules = loaded(tmp_path, "create", str(EXAMPLES / "pv-only.cfg"),
                           f"imagedir={imagedir}", "--dry-run", "--json", "--platform", "xen")
    assert done.returncode == 0, done.stderr
    assert "xenstore" in jsonout.result(done.stdout)
    assert "pvhvm.platforms.xen" in modules and "pvhvm.platforms.libvirt" not in modules


def test_list_loads_a_platform_only_when_its_store_has_a_domain(tmp_path: Path) -> None:
    done, modules = loaded(tmp_path, "list", "--json")
    assert (done.returncode, jsonout.result(done.stdout, "list")) == (0, []), done.stderr
    assert heavy(modules, ("pvhvm.platforms.xen", "pvhvm.platforms.libvirt", "asyncio",
                           "guestfs", "pvhvm.guest.appliance")) == []

    StateStore(tmp_path / "state" / "xen", base=tmp_path / "state").claim("g")
    done, modules = loaded(tmp_path, "list", "--json")
    assert done.returncode == 0, done.stderr
    assert "pvhvm.platforms.xen" in modules and "pvhvm.platforms.libvirt" not in modules


def test_deferred_platforms_are_the_other_stores() -> None:
    """Every platform but the default is deferred, and each keeps its records in the store of
    its own name: what BuiltinPlatforms reads to decide without importing it."""
    assert set(PLATFORM_NAMES[1:]) == set(PLATFORM_SUBSTORES)


@pytest.mark.parametrize("platform", PLATFORM_NAMES[1:])
def test_names_stay_unique_across_unloaded_platforms(tmp_path: Path, platform: str) -> None:
    """A domain in a deferred platform's store is found by a registry that has not imported
    that platform yet, and no other platform claims it."""
    StateStore(tmp_path / platform, base=tmp_path).claim("g")
    platforms = default_platforms(StateStore(tmp_path))
    holder = platforms.holder("g")
    assert holder is not None and holder.name == platform
    assert platforms.locate("g") is platforms.get(platform)
    assert platforms.holder("h") is None
    assert platforms.names() == list(PLATFORM_NAMES)


NAMES = ["g.cfg", "g.xml", "G.XML", "g", "dir.xml/g.cfg"]
TEXTS = ['name = "g"\n', "<domain type='kvm'/>", "\ufeff \n<?xml version='1.0'?><domain/>",
         "# a <b> comment\nname = 'g'\n", "", "  <", "name = '<x>'\n"]


@pytest.mark.parametrize("name", NAMES)
def test_create_hands_every_domain_xml_to_the_xml_reader(name: str) -> None:
    """create imports libvirt's XML reader only for a file that may be XML; every file the
    reader itself takes as XML is among those (so it still decides them)."""
    from pvhvm.cli.configs import may_be_domain_xml
    from pvhvm.libvirt.read import is_domain_xml

    for text in TEXTS:
        if is_domain_xml(name, text):
            assert may_be_domain_xml(Path(name), text), (name, text)


def test_dry_run_of_a_domain_xml_loads_the_reader(tmp_path: Path, imagedir: Path) -> None:
    xml = tmp_path / "g.domain"  # no .xml suffix: told apart by its first character
    xml.write_text(f"<domain type='kvm'><name>g</name><memory unit='MiB'>256</memory>"
                   f"<os><type>hvm</type><kernel>{imagedir}/vmlinuz</kernel></os></domain>\n")
    done, modules = loaded(tmp_path, "create", str(xml), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert jsonout.result(done.stdout)["name"] == "g"
    assert "pvhvm.libvirt.read" in modules


def test_every_lifecycle_verb_is_registered_by_name() -> None:
    """main.DOMAIN_VERBS (what the CLI loads when named) is exactly cli/domain.py's verbs."""
    from pvhvm.cli import domain
    from pvhvm.cli.main import DOMAIN_VERBS, cli

    assert {name: cli.get_command(None, name) for name in DOMAIN_VERBS} == {
        command.name: command for command in domain.COMMANDS}


@pytest.mark.parametrize("line", [
    "domain g (id 1) started: tcg, console /tmp/x/domains/g/console.sock",
    "a path with [b]markup[/b] and :cd: and a\ttab",
    "x" * 300,  # one line whatever its length, as scripts grep them
])
def test_plain_lines_on_a_pipe_are_what_rich_prints(
    line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """warn()/say() skip rich on a pipe (create's path): the bytes must be rich's own, for
    the line as every path prints it (control characters, the tab too, escaped)."""
    import io

    from rich.console import Console
    from rich.text import Text

    from pvhvm.cli import output
    from pvhvm.errors import printable

    line = printable(line)

    for label in ("warning", "note"):
        rich_out = io.StringIO()
        Console(file=rich_out, width=output.PIPE_WIDTH, highlight=False, emoji=False).print(
            Text.assemble((f"{label}:", "yellow"), " ", line), soft_wrap=True)
        output.warn(line, label=label)
        assert capsys.readouterr().err == rich_out.getvalue()
    rich_out = io.StringIO()
    Console(file=rich_out, width=output.PIPE_WIDTH, highlight=False, emoji=False).print(
        Text(line), soft_wrap=True)
    output.say(line)
    assert capsys.readouterr().err == rich_out.getvalue()
