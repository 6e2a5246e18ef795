"""XenStore nodes, paths and the database that holds them.

The database is flat, as xenstored's TDB: a dict from absolute path to an immutable
`Node` that lists its children's names in creation order. Every modification stamps
the node with a fresh generation count; transactions compare those counts to detect
conflicts (xenstored_transaction.c).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from pvhvm.xenstore.wire import Access, Permission

#: ``NO_GENERATION``: the generation recorded for a node that does not exist.
NO_GENERATION = -1
#: ``sizeof(struct xs_tdb_record_hdr)`` and ``sizeof(struct xs_permissions)``: the entry
#: size quota counts them as xenstored does.
RECORD_HEADER_SIZE = 24
PERMISSION_SIZE = 8

_VALID_CHARS = re.compile(r"[A-Za-z0-9\-/_@]*")
_LOCAL_DOMAIN = re.compile(r"/local/domain/\d{1,5}/")


class Node(NamedTuple):
    """One node: its value, permissions (first entry = owner + default) and children.

    Immutable; a NamedTuple rather than a frozen dataclass because every write makes one
    and a frozen dataclass costs several times as much to build (profiled, issue 13)."""

    value: bytes = b""
    perms: tuple[Permission, ...] = (Permission(0, Access.NONE),)
    children: tuple[str, ...] = ()
    generation: int = 0

    @property
    def owner(self) -> int:
        """The owning domid (first permission entry)."""
        return self.perms[0].domid

    def entry_size(self) -> int:
        """Bytes of the node's TDB record, which the entry-size quota limits."""
        return (RECORD_HEADER_SIZE + PERMISSION_SIZE * len(self.perms) + len(self.value)
                + sum(len(child.encode()) + 1 for child in self.children))

    def with_child(self, name: str) -> Node:
        """A copy with ``name`` appended to the children."""
        return Node(self.value, self.perms, (*self.children, name), self.generation)

    def without_child(self, name: str) -> Node:
        """A copy with ``name`` removed from the children."""
        return Node(self.value, self.perms, tuple(c for c in self.children if c != name),
                    self.generation)

    def with_value(self, value: bytes) -> Node:
        """A copy holding ``value``."""
        return Node(value, self.perms, self.children, self.generation)

    def with_perms(self, perms: tuple[Permission, ...]) -> Node:
        """A copy with permissions ``perms``."""
        return Node(self.value, perms, self.children, self.generation)

    def with_generation(self, generation: int) -> Node:
        """A copy stamped with ``generation``."""
        return Node(self.value, self.perms, self.children, generation)


def is_valid_path(path: str, max_rel_len: int = 2048) -> bool:
    """xenstored's is_valid_nodename(): absolute, no ``//``, no trailing ``/`` except the
    root, only ``[A-Za-z0-9-/_@]``, and at most ``max_rel_len`` bytes after a
    ``/local/domain/<domid>/`` prefix (xenstore.txt, XENSTORE_*_PATH_MAX)."""
    if not path.startswith("/"):
        return False
    if path.endswith("/") and path != "/":
        return False
    if "//" in path:
        return False
    match = _LOCAL_DOMAIN.match(path)
    offset = match.end() if match else 0
    if len(path) > offset + max_rel_len:
        return False
    return _VALID_CHARS.fullmatch(path) is not None


def parent_of(path: str) -> str:
    """The parent path (``/`` for a top-level node)."""
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def basename(path: str) -> str:
    """The last component of a path."""
    return path[path.rfind("/") + 1:]


def child_path(parent: str, name: str) -> str:
    """``parent/name``, without doubling the root's slash."""
    return f"/{name}" if parent == "/" else f"{parent}/{name}"


def is_child(child: str, parent: str) -> bool:
    """xenstore.txt: ``child`` is a child of ``parent`` if equal, if parent is ``/``, or if
    ``parent/`` is a prefix of child."""
    if parent == "/":
        return True
    if not child.startswith(parent):
        return False
    return len(child) == len(parent) or child[len(parent)] == "/"


class Tree:
    """The global database: path -> Node, and the global generation counter."""

    def __init__(self) -> None:
        root_perms = (Permission(0, Access.NONE),)
        self.generation = 0
        self.nodes: dict[str, Node] = {}
        # setup_structure(): "/", "/tool", "/tool/xenstored", owned by dom0, mode n0.
        self.nodes["/"] = Node(perms=root_perms, children=("tool",),
                               generation=self.next_generation())
        self.nodes["/tool"] = Node(perms=root_perms, children=("xenstored",),
                                   generation=self.next_generation())
        self.nodes["/tool/xenstored"] = Node(perms=root_perms, generation=self.next_generation())

    def next_generation(self) -> int:
        """Increment and return the global generation count."""
        self.generation += 1
        return self.generation

    def get(self, path: str) -> Node | None:
        """The node at ``path`` or None."""
        return self.nodes.get(path)

    def generation_of(self, path: str) -> int:
        """The generation of the node at ``path``, or NO_GENERATION."""
        node = self.nodes.get(path)
        return NO_GENERATION if node is None else node.generation

    def put(self, path: str, node: Node) -> None:
        """Store ``node`` at ``path`` as is."""
        self.nodes[path] = node

    def delete(self, path: str) -> None:
        """Remove the node at ``path`` (not its children)."""
        self.nodes.pop(path, None)

    def walk(self, path: str = "/") -> Iterator[tuple[str, Node]]:
        """Every (path, node) under ``path``, pre-order, children in creation order."""
        stack = [path]
        while stack:
            current = stack.pop()
            node = self.nodes.get(current)
            if node is None:
                continue
            yield current, node
            stack.extend(child_path(current, c) for c in reversed(node.children))

    def __len__(self) -> int:
        return len(self.nodes)
