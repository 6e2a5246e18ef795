"""``python -m pvhvm.xenstore``: the daemon (same options as ``pvhvm xenstored``)."""

from pvhvm.cli.xenstored import xenstored

if __name__ == "__main__":
    xenstored(prog_name="python -m pvhvm.xenstore")
