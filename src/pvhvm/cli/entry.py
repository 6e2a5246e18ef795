"""The ``pvhvm`` console script and ``python -m pvhvm``.

The CLI takes a moment to import; a Ctrl-C in that moment ends the command quietly (exit
status 130, as after any Ctrl-C) instead of printing a traceback from the middle of an import.
"""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from pvhvm.cli.main import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()
