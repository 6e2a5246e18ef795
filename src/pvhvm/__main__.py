"""``python -m pvhvm``."""

from pvhvm.cli.main import main

main()
