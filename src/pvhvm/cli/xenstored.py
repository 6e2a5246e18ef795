"""``pvhvm xenstored``: run the XenStore daemon in the foreground."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from pvhvm.xenstore.client import default_socket_path
from pvhvm.xenstore.daemon import run_daemon


@click.command("xenstored")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="Unix socket to listen on (default: as libxenstore finds it: "
                   "$XENSTORED_PATH, $XENSTORED_RUNDIR/socket, /var/run/xenstored/socket).")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the daemon's pid here; removed on exit.")
@click.option("--domain-socket-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Give each introduced domain a socket DIR/domain-<domid> whose clients "
                   "act as that domain (for tests without a hypervisor).")
@click.option("-v", "--verbose", is_flag=True, help="Log each request.")
def xenstored(socket_path: Path | None, pid_file: Path | None,
              domain_socket_dir: Path | None, verbose: bool) -> None:
    """Serve XenStore on a Unix socket until SIGTERM or SIGINT (Xen 4.17 wire protocol)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="xenstored: %(message)s")
    path = socket_path if socket_path is not None else Path(default_socket_path())
    run_daemon(path, pid_file=pid_file, domain_socket_dir=domain_socket_dir)
