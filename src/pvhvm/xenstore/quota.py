"""Per-domain quotas and the domain table.

Defaults are those of C xenstored (xenstored_core.c, Xen 4.17): 1000 nodes per domain,
128 watches, 10 transactions, 2048-byte entries, 5 permissions per node, 1024 nodes
touched by one transaction, 2048-byte relative paths, 20 outstanding requests and 2 MiB
of memory per domain (``-Q outstanding=``, ``-Q memory=``). Those quotas bind
unprivileged domains. Unix-socket clients (dom0) are exempt from them, as in C, but each
such connection is capped on watches and open transactions (pvhvm's own, high limits;
C xenstored has none), so one dom0 client cannot grow the daemon without bound.

Memory per domain counts what the domain holds beyond its nodes (which the node-count
and entry-size quotas already bound, 1000 x 2048 bytes): its watches (path, token and
bookkeeping), its open transactions, and, in the socket daemon, the replies and events
queued for it. Over the quota a WATCH or TRANSACTION_START fails with ENOMEM, as C's
domain_memory_add_chk() makes it, and watch events for it are dropped.

Domains are known to the daemon when introduced (INTRODUCE), when named in a
permission (SET_PERMS; without a hypervisor to ask, every domid is taken to exist) or
when they own a node. A permission entry naming a domain that was created after the
node was last written is ignored (domain_adjust_node_perms()), so a domid that is
reused does not inherit old grants.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits: ``xenstored -E -W -S -t -A -M`` and ``-Q transaction-nodes= memory=
    outstanding=``, all for unprivileged domains; ``socket_*`` for Unix-socket clients."""

    nodes_per_domain: int = 1000        # -E, --entry-nb
    watches_per_domain: int = 128       # -W, --watch-nb
    entry_size: int = 2048              # -S, --entry-size
    transactions: int = 10              # -t, --transaction
    perms_per_node: int = 5             # -A, --perm-nb
    transaction_nodes: int = 1024       # -Q transaction-nodes=
    path_len: int = 2048                # -M, --path-max
    memory: int = 2 * 1024 * 1024       # -Q memory=
    outstanding: int = 20               # -Q outstanding=
    socket_watches: int = 65536         # pvhvm: watches per Unix-socket connection
    socket_transactions: int = 1024     # pvhvm: open transactions per Unix-socket connection


#: ``-Q WHAT=NB`` names of C xenstored -> Quota fields.
QUOTA_NAMES = {"transaction-nodes": "transaction_nodes", "memory": "memory",
               "outstanding": "outstanding"}

#: What an open transaction costs its domain's memory quota (its bookkeeping).
TRANSACTION_MEMORY = 1024


@dataclass(slots=True)
class Domain:
    """xenstored's ``struct domain``: accounting for one domid."""

    domid: int
    generation: int
    introduced: bool = False
    shutdown: bool = False
    nbentry: int = 0
    nbwatch: int = 0
    target: int | None = None
    port: int = 0
    #: Transactions open over all connections of this domain.
    transactions: int = 0
    #: Bytes held for the domain's watches and transactions (the memory quota).
    memory: int = 0


def is_privileged(domid: int) -> bool:
    """Domain 0 is the control domain (domid_is_unprivileged())."""
    return domid == 0


@dataclass(slots=True)
class Domains:
    """The domain table."""

    table: dict[int, Domain] = field(default_factory=dict)

    def find(self, domid: int) -> Domain | None:
        """The domain struct for ``domid``, if any."""
        return self.table.get(domid)

    def find_or_alloc(self, domid: int, generation: int) -> Domain:
        """The domain struct for ``domid``, created at ``generation`` when missing."""
        domain = self.table.get(domid)
        if domain is None:
            domain = Domain(domid, generation)
            self.table[domid] = domain
        return domain

    def introduced(self, domid: int) -> Domain | None:
        """The domain if it is introduced."""
        domain = self.table.get(domid)
        return domain if domain is not None and domain.introduced else None

    def remove(self, domid: int) -> None:
        """Forget ``domid``."""
        self.table.pop(domid, None)

    def entry_delta(self, domid: int, delta: int, generation: int) -> None:
        """Add ``delta`` to the nodes owned by ``domid``."""
        self.find_or_alloc(domid, generation).nbentry += delta

    def entries(self, domid: int) -> int:
        """Nodes owned by ``domid``, as counted for its quota (0 for dom0)."""
        if is_privileged(domid):
            return 0
        domain = self.table.get(domid)
        return domain.nbentry if domain else 0

    def perm_valid(self, domid: int, node_generation: int) -> bool:
        """chk_domain_generation(): does a permission entry for ``domid`` on a node last
        written at ``node_generation`` still count?"""
        if domid == 0:
            return True
        domain = self.table.get(domid)
        return domain is not None and domain.generation <= node_generation
