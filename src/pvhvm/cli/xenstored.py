"""``pvhvm xenstored``: run the XenStore daemon in the foreground."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import click

from pvhvm.xenstore.client import default_socket_path
from pvhvm.xenstore.daemon import run_daemon
from pvhvm.xenstore.quota import QUOTA_NAMES, Quota

_COUNT = click.IntRange(min=1)
_DEFAULT = Quota()


def _quota_pairs(ctx: click.Context, param: click.Parameter,
                 value: tuple[str, ...]) -> dict[str, int]:
    """``-Q what=nb`` as C xenstored takes it (transaction-nodes, memory, outstanding)."""
    pairs: dict[str, int] = {}
    for item in value:
        what, sep, number = item.partition("=")
        if not sep or what not in QUOTA_NAMES:
            raise click.BadParameter(
                f"{item!r}: want WHAT=NB with WHAT one of {', '.join(QUOTA_NAMES)}")
        try:
            pairs[QUOTA_NAMES[what]] = int(number, 0)
        except ValueError as err:
            raise click.BadParameter(f"{item!r}: {number!r} is not a number") from err
        if pairs[QUOTA_NAMES[what]] < 1:
            raise click.BadParameter(f"{item!r}: must be at least 1")
    return pairs


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
@click.option("-E", "--entry-nb", type=_COUNT, default=_DEFAULT.nodes_per_domain,
              show_default=True, help="Nodes per unprivileged domain.")
@click.option("-S", "--entry-size", type=_COUNT, default=_DEFAULT.entry_size, show_default=True,
              help="Bytes per node of an unprivileged domain.")
@click.option("-W", "--watch-nb", type=_COUNT, default=_DEFAULT.watches_per_domain,
              show_default=True, help="Watches per unprivileged domain.")
@click.option("-t", "--transaction", type=_COUNT, default=_DEFAULT.transactions,
              show_default=True, help="Open transactions per unprivileged domain.")
@click.option("-A", "--perm-nb", type=_COUNT, default=_DEFAULT.perms_per_node, show_default=True,
              help="Permissions per node set by an unprivileged domain.")
@click.option("-M", "--path-max", type=_COUNT, default=_DEFAULT.path_len, show_default=True,
              help="Path length below /local/domain/<domid>/.")
@click.option("-Q", "--quota", "quota_pairs", multiple=True, callback=_quota_pairs,
              metavar="WHAT=NB",
              help="transaction-nodes, memory (bytes) or outstanding (requests), per "
                   "unprivileged domain, as C xenstored's -Q.")
@click.option("--socket-watches", type=_COUNT, default=_DEFAULT.socket_watches,
              show_default=True, help="Watches per Unix-socket (dom0) connection.")
@click.option("--socket-transactions", type=_COUNT, default=_DEFAULT.socket_transactions,
              show_default=True, help="Open transactions per Unix-socket connection.")
@click.option("-v", "--verbose", is_flag=True, help="Log each request.")
def xenstored(socket_path: Path | None, pid_file: Path | None,
              domain_socket_dir: Path | None, entry_nb: int, entry_size: int, watch_nb: int,
              transaction: int, perm_nb: int, path_max: int, quota_pairs: dict[str, int],
              socket_watches: int, socket_transactions: int, verbose: bool) -> None:
    """Serve XenStore on a Unix socket until SIGTERM or SIGINT (Xen 4.17 wire protocol).

    Quota options have C xenstored's names and defaults; they bind unprivileged domains,
    and --socket-* cap each Unix-socket client."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="xenstored: %(message)s")
    path = socket_path if socket_path is not None else Path(default_socket_path())
    quota = dataclasses.replace(
        _DEFAULT, nodes_per_domain=entry_nb, entry_size=entry_size,
        watches_per_domain=watch_nb, transactions=transaction, perms_per_node=perm_nb,
        path_len=path_max, socket_watches=socket_watches,
        socket_transactions=socket_transactions, **quota_pairs)
    run_daemon(path, pid_file=pid_file, domain_socket_dir=domain_socket_dir, quota=quota)
