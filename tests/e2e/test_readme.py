"""The README's quick start, run as written (issue 21: someone new to pvhvm gets a PV-only
guest running and reaches its console without reading the reference): its commands after
``./dev/boot-example`` (which the kit fixture stands for), with the kit's images as
``$HOME/.cache/pvhvm/image``, a real guest under QEMU and its console on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import jsonout
from tests.e2e.conftest import BOOT_TIMEOUT, Pvhvm

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start_commands() -> list[list[str]]:
    """The commands of the quick start's second code block, comments dropped."""
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks[0].strip().startswith("./dev/boot-example"), blocks
    commands = []
    for line in blocks[1].splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands


def console_answers(pvhvm: Pvhvm, argv: list[str], timeout: float) -> bytes:
    """Run ``pvhvm console NAME`` on a pseudo-terminal as a person would, until the guest's
    shell answers a command; then ^] detaches. What the terminal showed."""
    main, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            env=pvhvm.env(), start_new_session=True)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while b"readme-42" not in seen and time.monotonic() < deadline:
            os.write(main, b"\recho readme-$((6*7))\r")
            until = time.monotonic() + 3
            while time.monotonic() < until:
                ready, _, _ = select.select([main], [], [], 0.5)
                if ready:
                    try:
                        seen += os.read(main, 65536)
                    except OSError:
                        break
        os.write(main, b"\x1d")  # ^]
        assert proc.wait(timeout=30) == 0, seen[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    return seen


def test_quick_start_reaches_the_guest_console(pvhvm: Pvhvm, imagedir: Path) -> None:
    commands = quick_start_commands()
    verbs = [words[1] for words in commands if words[0] == "pvhvm"]
    assert verbs == ["create", "console", "destroy"], commands
    name = next(words[2] for words in commands if words[:2] == ["pvhvm", "console"])
    try:
        for words in commands:
            if words[0] == ".":  # sourcing the venv: this interpreter is the venv's
                continue
            assert words[0] == "pvhvm", words
            argv = [sys.executable, "-m", "pvhvm",
                    *(w.replace("$HOME/.cache/pvhvm/image", str(imagedir)) for w in words[1:])]
            if words[1] == "console":
                shown = console_answers(pvhvm, argv, BOOT_TIMEOUT)
                assert b"readme-42" in shown, shown[-2000:]
                listed = jsonout.result(pvhvm.run("list", "--json").stdout, "list")
                assert [(r["name"], r["state"]) for r in listed] == [(name, "running")]
            else:
                done = subprocess.run(argv, capture_output=True, text=True, env=pvhvm.env(),
                                      timeout=300, check=False)
                assert done.returncode == 0, done.stderr
    finally:
        pvhvm.run("destroy", name, check=False)
    assert jsonout.result(pvhvm.run("list", "--json").stdout) == []
    assert not pvhvm.leftovers(name)
