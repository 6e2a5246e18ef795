"""Transactions, as xenstored_transaction.c does them (Xen 4.17).

A transaction records every node it touches with the node's generation count at first
access. Reads of an untouched node see the global database at that moment; later
reads of the same node see the transaction's copy. Commit fails with EAGAIN if any node
first touched by a read (including reads that found nothing) has since changed
globally; otherwise the modified nodes replace the global ones, each with a fresh
generation, and the watch events queued during the transaction fire.

Operations go through a `View`: `GlobalView` for requests outside a transaction and
`TransactionView` inside one, so each operation is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pvhvm.xenstore.errors import XenStoreErrnoError
from pvhvm.xenstore.tree import NO_GENERATION, Node, Tree
from pvhvm.xenstore.wire import Permission


class View(Protocol):
    """Node access for one request: global, or through a transaction."""

    def read(self, path: str) -> Node | None:
        """The node at ``path`` as this request sees it."""

    def write(self, path: str, node: Node) -> Node:
        """Store ``node`` with a fresh generation; returns the stored node."""

    def delete(self, path: str) -> None:
        """Remove the node at ``path``."""

    def queue_event(self, path: str, exact: bool) -> bool:
        """Queue a watch event until commit; False when outside a transaction."""


class GlobalView:
    """Direct access to the global database."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree

    def read(self, path: str) -> Node | None:
        """The node at ``path``."""
        return self.tree.get(path)

    def write(self, path: str, node: Node) -> Node:
        """Store ``node`` with a fresh generation."""
        stored = node.with_generation(self.tree.next_generation())
        self.tree.put(path, stored)
        return stored

    def delete(self, path: str) -> None:
        """Remove the node at ``path``."""
        self.tree.next_generation()
        self.tree.delete(path)

    def queue_event(self, path: str, exact: bool) -> bool:
        """Events fire at once outside transactions."""
        return False


@dataclass(slots=True)
class AccessedNode:
    """``struct accessed_node``: one node touched by a transaction."""

    node: Node | None
    generation: int
    check_gen: bool
    modified: bool = False
    perms: tuple[Permission, ...] | None = None
    fire_watch: bool = False
    watch_exact: bool = False


@dataclass(slots=True)
class Transaction:
    """``struct transaction``: an open transaction of one connection."""

    tx_id: int
    generation: int
    accessed: dict[str, AccessedNode] = field(default_factory=dict)
    #: Change in nodes owned, per domid, applied at commit.
    entry_deltas: dict[int, int] = field(default_factory=dict)
    node_created: bool = False
    failed: bool = False

    def entry_delta(self, domid: int, delta: int) -> None:
        """transaction_entry_inc/dec()."""
        self.entry_deltas[domid] = self.entry_deltas.get(domid, 0) + delta


class TransactionView:
    """Access through a transaction (access_node(), transaction_prepend())."""

    def __init__(self, tree: Tree, transaction: Transaction, *, node_limit: int | None) -> None:
        self.tree = tree
        self.transaction = transaction
        self.node_limit = node_limit

    def _introduce(self, path: str, *, for_read: bool) -> AccessedNode:
        tx = self.transaction
        if self.node_limit is not None and len(tx.accessed) >= self.node_limit:
            tx.failed = True
            raise XenStoreErrnoError("ENOSPC", "too many nodes in one transaction", path=path)
        current = self.tree.get(path)
        entry = AccessedNode(
            node=current if for_read else None,
            generation=current.generation if current is not None else NO_GENERATION,
            check_gen=for_read,
            perms=current.perms if current is not None else None,
        )
        tx.accessed[path] = entry
        return entry

    def read(self, path: str) -> Node | None:
        """The transaction's copy, or the global node (recorded for the conflict check)."""
        entry = self.transaction.accessed.get(path)
        if entry is None:
            entry = self._introduce(path, for_read=True)
        return entry.node

    def write(self, path: str, node: Node) -> Node:
        """Store in the transaction's copy."""
        entry = self.transaction.accessed.get(path)
        if entry is None:
            entry = self._introduce(path, for_read=False)
        stored = node.with_generation(self.tree.next_generation())
        entry.node = stored
        entry.modified = True
        return stored

    def delete(self, path: str) -> None:
        """Mark deleted in the transaction's copy."""
        entry = self.transaction.accessed.get(path)
        if entry is None:
            entry = self._introduce(path, for_read=False)
        self.tree.next_generation()
        entry.node = None
        entry.modified = True

    def queue_event(self, path: str, exact: bool) -> bool:
        """queue_watches(): a non-exact event replaces an exact one, not the reverse."""
        entry = self.transaction.accessed.get(path)
        if entry is None:
            self.transaction.failed = True
            return True
        if not entry.fire_watch:
            entry.fire_watch = True
            entry.watch_exact = exact
        elif not exact:
            entry.watch_exact = False
        return True


@dataclass(frozen=True, slots=True)
class CommittedEvent:
    """A watch event queued in a transaction, to fire after commit."""

    path: str
    exact: bool
    perms: tuple[Permission, ...] | None


def check_conflicts(tree: Tree, transaction: Transaction) -> None:
    """Raise EAGAIN if a node the transaction read has changed since (finalize_transaction())."""
    for path, entry in transaction.accessed.items():
        if entry.check_gen and tree.generation_of(path) != entry.generation:
            raise XenStoreErrnoError("EAGAIN", "transaction conflict", path=path)


def apply(tree: Tree, transaction: Transaction) -> list[CommittedEvent]:
    """Write the transaction's modified nodes to ``tree``; return the events to fire.

    Call `check_conflicts` first.
    """
    events: list[CommittedEvent] = []
    for path, entry in transaction.accessed.items():
        if not entry.modified:
            continue
        if entry.node is not None:
            tree.put(path, entry.node.with_generation(tree.next_generation()))
        elif tree.get(path) is not None:
            tree.next_generation()
            tree.delete(path)
        if entry.fire_watch:
            events.append(CommittedEvent(path, entry.watch_exact, entry.perms))
    return events
