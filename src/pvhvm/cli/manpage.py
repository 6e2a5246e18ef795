"""pvhvm(1), made from the CLI itself: every command's usage, help and options as click has
them, written as roff with man(7)'s macros. ``python -m pvhvm.cli.manpage [FILE]`` (stdout
without FILE) writes it; ``docs/pvhvm.1`` is its output, and a test keeps it up to date.

The page carries no date and no path of this machine, so the same CLI gives the same bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from pvhvm import __version__
from pvhvm.cli.main import cli

#: sections after the commands: (title, paragraphs); each paragraph is text, or a tagged
#: paragraph as (tag, text)
TAIL: tuple[tuple[str, tuple[str | tuple[str, str], ...]], ...] = (
    ("JSON OUTPUT", (
        "With --json (and for list -l) a command prints one JSON document on stdout: "
        '{"pvhvm": 1, "command": "list", "ok": true, "result": ...} when it succeeds, '
        '{"pvhvm": 1, "command": ..., "ok": false, "error": {"message": ..., "where": ..., '
        '"kind": ...}} when it fails, with the same exit status as without --json. The JSON '
        "Schema is pvhvm/cli/schema/pvhvm-1.schema.json in the package; docs/json.md "
        "describes it.",
    )),
    ("EXIT STATUS", (
        ("0", "The command did what it was asked."),
        ("1", "Bad input (a config file, a spec, a value) or a failed operation: one line "
              "on stderr, naming the file and line:col where the mistake is inside it; "
              "nothing is left half-made. guest check also exits 1 for a guest that will "
              "not boot."),
        ("2", "A usage error: an unknown command or option, a missing argument, a choice "
              "not among those offered (as click and xl's getopt). guest check also exits 2 "
              "when it cannot tell whether the guest boots."),
        ("130", "Interrupted (Ctrl-C)."),
    )),
    ("ENVIRONMENT", (
        ("PVHVM_STATE_DIR", "The state directory: domain records, sockets, logs/ "
                            "(default $XDG_STATE_HOME/pvhvm, else ~/.local/state/pvhvm)."),
        ("PVHVM_HOSTD_LINGER", "Seconds the host supervisor stays after its last domain is "
                               "gone (default 60)."),
        ("COLUMNS", "The width of tables, on a terminal and when piped (default: the "
                    "terminal's, 120 columns for a pipe or file)."),
        ("NO_COLOR", "Present and not empty: no colour (https://no-color.org); bold stays."),
        ("_PVHVM_COMPLETE", "Shell completion (click's protocol): "
                            'eval "$(_PVHVM_COMPLETE=bash_source pvhvm)" in ~/.bashrc '
                            "(zsh_source, fish_source for those shells) completes commands, "
                            "options and domain names."),
    )),
    ("SEE ALSO", (
        "xl(1), xl.cfg(5), xl-disk-configuration(5), xl-network-configuration(5), virsh(1), "
        "qemu-system-x86_64(1). README.md for a quick start and reference.",
    )),
)


def roff_text(text: str) -> str:
    """``text`` safe in a roff text line: backslashes and hyphen-minus escaped, a line that
    would start with a control character (. or ') guarded."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line
                     for line in out.split("\n"))


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Context,
                                                                        click.Command]]:
    """Every command under ``group`` with its context, depth first in name order."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        if isinstance(command, click.Group):
            yield from _commands(command, sub)
        else:
            yield sub, command


def _paragraphs(text: str) -> list[str]:
    """click's help text as paragraphs (blank-line separated, lines joined)."""
    return [" ".join(line.strip() for line in block.strip().splitlines())
            for block in text.split("\n\n") if block.strip()]


def render() -> str:
    """The whole page."""
    # with the group's context settings (-h as well as --help), as a real invocation has
    root = click.Context(cli, info_name="pvhvm", **cli.context_settings)
    lines = [
        f'.TH PVHVM 1 "" "pvhvm {roff_text(__version__)}" "User Commands"',
        ".SH NAME",
        "pvhvm \\- run HVM guests under QEMU (or Xen, or libvirt) from xm/xl domain configs,",
        "each disk and NIC emulated or paravirtual as the config says",
        ".SH SYNOPSIS",
        ".B pvhvm",
        ".I COMMAND",
        "[\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        roff_text(" ".join(_paragraphs(cli.help or ""))),
        ".PP",
        roff_text("A domain config (xm/xl syntax, parsed, never executed) says per disk and "
                  "per NIC type=ioemu (emulated by the device model) or type=xenbus (a PV "
                  "device: virtio on QEMU). A guest with no emulated disk gets no IDE "
                  "controller at all. The verbs are xl's (create, list, console, shutdown, "
                  "destroy, save, restore, migrate, block-attach...) and act on the platform "
                  "that holds the domain."),
        ".SH COMMANDS",
    ]
    for ctx, command in _commands(cli, root):
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines.append(f'.SS "{roff_text(ctx.command_path)} {roff_text(usage)}"')
        for paragraph in _paragraphs(command.help or ""):
            lines += [roff_text(paragraph), ".PP"]
        if lines[-1] == ".PP":
            lines.pop()
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue
            names, help_text = record
            lines += [".TP", f"\\fB{roff_text(names)}\\fR", roff_text(help_text or "")]
    for title, paragraphs in TAIL:
        lines.append(f".SH {title}")
        for item in paragraphs:
            if isinstance(item, tuple):
                tag, text = item
                lines += [".TP", f"\\fB{roff_text(tag)}\\fR", roff_text(text)]
            else:
                lines += [roff_text(item), ".PP"]
        if lines[-1] == ".PP":
            lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    page = render()
    if argv:
        Path(argv[0]).write_text(page, encoding="utf-8")
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
