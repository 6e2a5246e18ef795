"""Issue 21 items 7 and 8: the JSON envelope and its schema for every --json command, errors
as JSON, exit status 2 for usage errors, "Did you mean" only for near misses, tables sized by
COLUMNS and wrapped, NO_COLOR, shell completion of domain names, and the man page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import click
import pytest

from pvhvm.cli import manpage, output
from pvhvm.cli.main import cli
from pvhvm.cli.report import report_document
from pvhvm.guest.report import parse_report
from pvhvm.runtime.migrate import MigrationOutcome
from pvhvm.runtime.save import SaveOutcome
from tests import jsonout
from tests.cli_run import run
from tests.test_strings_are_data import hostile_log

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def imagedir(tmp_path: Path) -> Path:
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4", "boot.img", "data.img",
                 "disk.img"):
        (tmp_path / name).write_bytes(b"\0" * 1024)
    return tmp_path




def pvhvm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script's entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "pvhvm", *argv], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120,
                          check=False)


def json_commands() -> list[str]:
    """Every command that prints JSON (has --json, or is list with -l)."""
    found = []

    def walk(command: click.Command, words: list[str], ctx: click.Context) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, [*words, name], click.Context(sub, info_name=name, parent=ctx))
            return
        if any("--json" in getattr(p, "opts", []) for p in command.params):
            found.append(" ".join(words))

    walk(cli, [], click.Context(cli, info_name="pvhvm"))
    return found


# --- JSON ----------------------------------------------------------------------------------


def test_every_json_command_has_its_result_in_the_schema() -> None:
    """A command with --json and no result schema would go unchecked: each has one."""
    schema = jsonout.validator().schema
    described = {rule["if"]["properties"]["command"]["const"] for rule in schema["allOf"]}
    commands = json_commands()
    assert {"create", "list", "block-list", "network-list", "guest check"} <= set(commands)
    assert sorted(set(commands) - described) == []
    assert sorted(described - set(commands)) == []  # and no schema for a command that is gone


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.cfg")))
def test_dry_run_of_every_example_is_valid(capsys: pytest.CaptureFixture[str], imagedir: Path,
                                           example: str) -> None:
    code, out, err = run(capsys, "create", str(EXAMPLES / example), f"imagedir={imagedir}",
                         "--dry-run", "--json", "--skip-unsupported")
    assert code == 0, err
    plan = jsonout.result(out, "create")
    assert plan["name"] and isinstance(plan["disks"], list)


def test_envelope_shape(capsys: pytest.CaptureFixture[str], imagedir: Path) -> None:
    code, out, _ = run(capsys, "create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={imagedir}",
                       "--dry-run", "--json")
    document = json.loads(out)
    assert code == 0 and list(document) == ["pvhvm", "command", "ok", "result"]
    assert (document["pvhvm"], document["command"], document["ok"]) == (1, "create", True)


def test_the_schema_refuses_what_it_should() -> None:
    """The schema is no rubber stamp: a wrong version, a missing result, a result of the
    wrong shape and an unknown error kind are each refused."""
    validator = jsonout.validator()
    good = {"pvhvm": 1, "command": "list", "ok": True, "result": []}
    assert validator.is_valid(good)
    for bad in (
        {**good, "pvhvm": 2},
        {"pvhvm": 1, "command": "list", "ok": True},
        {**good, "result": [{"name": "g"}]},
        {**good, "result": {}},
        {"pvhvm": 1, "command": "list", "ok": False,
         "error": {"message": "m", "where": None, "kind": "oops"}},
        {"pvhvm": 1, "command": "list", "ok": False, "result": [],
         "error": {"message": "m", "where": None, "kind": "usage"}},
        {**good, "command": "network-list",
         "result": [{"devid": 0, "type": "xenbus", "driver": "virtio-net-pci",
                     "mac": "00:16:3e:00:00:01", "bridge": "xenbr0 (absent: user networking)"}]},
    ):
        assert not validator.is_valid(bad), bad


def test_an_input_error_is_json_with_its_place(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('name = "g"\nmemory = open("x")\n')
    code, out, err = run(capsys, "create", str(cfg), "--dry-run", "--json")
    error = jsonout.error(out, "create")
    assert code == 1 and error["kind"] == "input" and error["where"] == f"{cfg}:2:10"
    assert err.strip() == f"pvhvm: error: {error['message']}"  # the same line on stderr
    code_text, out_text, err_text = run(capsys, "create", str(cfg), "--dry-run")
    assert (code_text, out_text, err_text.strip()) == (1, "", err.strip())


@pytest.mark.parametrize(("argv", "where"), [
    (["create", "--json"], "CONFIG"),
    (["create", "x.cfg", "--json", "--accel", "fast"], "--accel"),
    (["create", "x.cfg", "--json", "--no-such"], "--no-such"),
    (["nosuchverb", "--json"], None),
])
def test_a_usage_error_is_json_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          where: str | None) -> None:
    code, out, err = run(capsys, *argv)
    error = jsonout.error(out)
    assert code == 2 and error["kind"] == "usage" and error["where"] == where, error
    assert err.startswith("pvhvm: error: ")
    code_text, _, _ = run(capsys, *(a for a in argv if a != "--json"))
    assert code_text == 2


def test_domain_verbs_json(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """list, list -l on no domain; block-list of a domain that is not there: a domain error
    as JSON, exit 1."""
    monkeypatch.setenv("PVHVM_STATE_DIR", str(tmp_path / "state"))
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0 and jsonout.result(out, "list") == []
    code, out, _ = run(capsys, "list", "-l")
    assert code == 0 and jsonout.result(out, "list") == []
    code, out, _ = run(capsys, "block-list", "ghost", "--json")
    error = jsonout.error(out, "block-list")
    assert code == 1 and error["kind"] == "domain" and "ghost" in error["message"]
    code, out, _ = run(capsys, "list", "-l", "ghost")  # list -l prints JSON: so does its error
    assert code == 1 and jsonout.error(out, "list")["kind"] == "domain"


def test_a_piped_failure_prints_one_json_document(imagedir: Path) -> None:
    """Through the real console script: stdout is exactly one JSON document."""
    done = pvhvm("create", str(EXAMPLES / "pv-only.cfg"), "--dry-run", "--json")
    error = jsonout.error(done.stdout, "create")  # no imagedir=: the file names a variable
    assert done.returncode == 1 and error["kind"] == "input", done.stdout
    assert error["where"].startswith(f"{EXAMPLES / 'pv-only.cfg'}:"), error
    assert done.stderr == f"pvhvm: error: {error['message']}\n"


# --- text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("typed", "suggested"), [
    ("rename", None), ("lsit", "'list'"), ("destory", "'destroy'"), ("creat", "'create'"),
    ("shutdwon", "'shutdown'"),
])
def test_did_you_mean_only_for_a_near_miss(capsys: pytest.CaptureFixture[str], typed: str,
                                           suggested: str | None) -> None:
    code, _, err = run(capsys, typed)
    first = err.splitlines()[0]
    assert code == 2 and first.startswith(f"pvhvm: error: No such command '{typed}'.")
    if suggested is None:
        assert "Did you mean" not in first
    else:
        assert f"Did you mean {suggested}" in first


def test_piped_tables_follow_columns(tmp_path: Path) -> None:
    """A piped dry run is as wide as COLUMNS says, and a value too long for its cell is
    wrapped, never cut."""
    deep = tmp_path / ("a-very-long-directory-name-" * 4) / "images"
    deep.mkdir(parents=True)
    for name in ("vmlinuz", "initramfs.cpio.gz", "rootfs.ext4"):
        (deep / name).write_bytes(b"\0")
    for columns in (60, 160):
        done = pvhvm("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={deep}", "--dry-run",
                     env={"COLUMNS": str(columns)})
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns
        assert "…" not in done.stdout
        # the target path is all there, folded over lines of its cell
        cells = "".join(line.split("│")[5].strip() for line in lines
                        if line.count("│") == 9)
        assert f"{deep}/rootfs.ext4" in cells, done.stdout
    wide = pvhvm("create", str(EXAMPLES / "pv-only.cfg"), f"imagedir={deep}", "--dry-run",
                 env={"COLUMNS": "160"})
    assert max(len(line) for line in wide.stdout.splitlines()) > 120  # COLUMNS, not 120


def test_piped_width_without_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert output.output_width(open(os.devnull, "w")) == output.PIPE_WIDTH  # noqa: SIM115
    monkeypatch.setenv("COLUMNS", "77")
    assert output.output_width(open(os.devnull, "w")) == 77  # noqa: SIM115
    monkeypatch.setenv("COLUMNS", "wide")
    assert output.output_width(open(os.devnull, "w")) == output.PIPE_WIDTH  # noqa: SIM115


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("", True), ("1", False)])
def test_no_color_strips_colour_and_keeps_bold(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str],
                                               no_color: str | None, coloured: bool) -> None:
    """no-color.org: NO_COLOR present and not empty prevents ANSI colour; it says nothing of
    bold, which stays. (FORCE_COLOR makes the captured stream a terminal for rich.)"""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    output.console().print(output.data("fatal", "bold red"))
    out = capsys.readouterr().out
    assert "fatal" in out and "\x1b[1" in out  # bold
    assert ("31m" in out or "91m" in out) is coloured, repr(out)


# --- completion ----------------------------------------------------------------------------


def complete(state: Path, *words: str) -> list[str]:
    """What click's bash completion protocol answers for ``pvhvm WORDS``."""
    done = pvhvm(env={"_PVHVM_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(
        ["pvhvm", *words]), "COMP_CWORD": str(len(words)), "PVHVM_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stderr
    # click answers "type,value" lines; a lone "plain," is its "nothing to offer"
    return [value for line in done.stdout.splitlines() if (value := line.partition(",")[2])]


def test_completion_of_domain_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for name in ("web1", "web2", "db"):
        (state / "domains" / name).mkdir(parents=True)
    (state / "xen" / "domains" / "webx").mkdir(parents=True)  # the xen platform's store
    (state / "domains" / ".web3.123.staging").mkdir()  # a create under way: not a domain
    assert complete(state, "destroy", "we") == ["web1", "web2", "webx"]
    assert complete(state, "console", "") == ["db", "web1", "web2", "webx"]
    assert complete(state, "list", "d") == ["db"]
    assert complete(state, "block-attach", "web1", "") == []  # SPEC: not a domain name
    assert complete(state, "des") == ["destroy"]
    # cheap: nothing started, nothing made in the state directory
    assert sorted(p.name for p in state.iterdir()) == ["domains", "xen"]


def test_completion_without_a_state_directory(tmp_path: Path) -> None:
    assert complete(tmp_path / "none", "destroy", "") == []
    assert not (tmp_path / "none").exists()


def test_completion_script_for_bash() -> None:
    done = pvhvm(env={"_PVHVM_COMPLETE": "bash_source"})
    assert done.returncode == 0 and "complete -o nosort -F _pvhvm_completion pvhvm" in done.stdout


def test_every_name_argument_completes_domains() -> None:
    """Each argument called NAME (or NAMES) has the domain completion."""
    missing = []

    def walk(command: click.Command, ctx: click.Context) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, click.Context(sub, info_name=name, parent=ctx))
            return
        for param in command.params:
            if isinstance(param, click.Argument) and param.name in ("name", "names") \
                    and param._custom_shell_complete is None:
                missing.append(ctx.command_path)

    walk(cli, click.Context(cli, info_name="pvhvm"))
    assert missing == []


# --- man page ------------------------------------------------------------------------------


def test_man_page_is_up_to_date() -> None:
    """docs/pvhvm.1 is what the CLI makes now: run python -m pvhvm.cli.manpage docs/pvhvm.1
    after changing a command."""
    page = (ROOT / "docs" / "pvhvm.1").read_text(encoding="utf-8")
    assert page == manpage.render(), "docs/pvhvm.1 is stale: python -m pvhvm.cli.manpage " \
                                     "docs/pvhvm.1"
    for command in [*json_commands(), "destroy", "console", "shutdown"]:
        assert f'.SS "pvhvm {manpage.roff_text(command)} ' in page, command


def test_man_page_renders_without_warnings() -> None:
    done = subprocess.run(["groff", "-ww", "-z", "-man", str(ROOT / "docs" / "pvhvm.1")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_roff_escapes() -> None:
    assert manpage.roff_text(".x\n'y\na-b\\c") == "\\&.x\n\\&'y\na\\-b\\ec"


def test_results_only_e2e_runs_print_match_the_schema() -> None:
    """report, save and migrate --json need a running guest (the e2e tests check them
    through jsonout); their documents, made here from the same objects the CLI prints, match
    the schema too, so a field renamed in those objects fails here first."""
    validator = jsonout.validator()
    report = report_document("g", parse_report(hostile_log()))
    saved = SaveOutcome(path=Path("/s/g.save"), size=1 << 20, seconds=1.5, domain="destroyed")
    moved = MigrationOutcome(host="h", state="running", total_ms=900, qemu_total_ms=880,
                             downtime_ms=12, transferred=1 << 24, seconds=0.9)
    for command, result in (("report", report),
                            ("save", {**asdict(saved), "path": str(saved.path)}),
                            ("migrate", asdict(moved))):
        document = output.envelope(command, result)
        errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(document)))]
        assert errors == [], (command, errors)
