"""The ``pvhvm`` console script and ``python -m pvhvm``.

The CLI takes a moment to import; a Ctrl-C in that moment ends the command quietly (exit
status 130, as after any Ctrl-C) instead of printing a traceback from the middle of an import.

The import makes tens of thousands of objects (classes, functions, click's commands) that live
until the process exits. The cyclic garbage collector would walk them again and again while they
are made and once more at exit, freeing nothing: about a tenth of ``create --dry-run``'s time.
So it is off during the import, and what the import made is then moved out of its sight
(``gc.freeze``, as the gc documentation suggests for long-lived objects); everything made after
that, by the command itself, is collected as usual. (The import leaves about 500 objects of
cyclic garbage, tens of KB, which freezing keeps for the life of the process.)
"""

from __future__ import annotations

import gc
import sys


def run() -> None:
    gc.disable()
    try:
        from pvhvm.cli.main import main
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        gc.freeze()
        gc.enable()
    main()
