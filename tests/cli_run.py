"""Run the pvhvm CLI in-process for a test: (exit status, stdout, stderr)."""

from __future__ import annotations

import pytest

from pvhvm.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``pvhvm ARGV...`` through click's main: its exit status (1 for a non-integer one) and
    what it printed."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err
