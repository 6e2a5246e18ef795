"""``python -m pvhvm``."""

from pvhvm.cli.entry import run

run()
