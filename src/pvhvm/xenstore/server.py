"""The XenStore daemon as one function: ``reply(store, connection, request) -> effects``.

Semantics follow C xenstored of Xen 4.17 (tools/xenstore/xenstored_core.c, _domain.c,
_watch.c, _transaction.c) and docs/misc/xenstore.txt:

* paths: relative paths are taken relative to ``/local/domain/<domid>`` (dom0's for
  Unix-socket clients); WRITE and MKDIR create missing parents, which copy their
  parent's permissions, and an unprivileged creator becomes their owner;
* permissions: the first entry is the owner and the default for unlisted domains; the
  owner and dom0 may do anything; a domain targeting another (SET_TARGET) acts with its
  rights; a missing node's errno is ENOENT only if the closest existing ancestor would
  grant the access asked for, else EACCES;
* watches fire for the node and its subtree, once at registration, and on
  @introduceDomain / @releaseDomain (subject to their SET_PERMS permissions); they are
  indexed by path, so a write looks up the watches on its path and its ancestors only,
  never every watch in the store, and a connection marked ``stalled`` (its client is not
  reading, see `pvhvm.xenstore.daemon`) costs a write one dictionary step however many
  watches it holds: its events are counted in ``dropped_events`` and not built;
* transactions queue their watch events until commit and fail with EAGAIN on conflict;
* quotas bind unprivileged domains (see `pvhvm.xenstore.quota`, C xenstored's names);
  Unix-socket clients are capped too, higher, on watches and open transactions.

Nothing here does I/O: `reply` returns `Send`, `Close`, `DomainIntroduced` and
`DomainReleased` effects, which the socket adapter (`pvhvm.xenstore.daemon`) carries
out. Every failure is a XenStoreErrnoError, turned into an XS_ERROR packet in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pvhvm.xenstore.errors import XenStoreErrnoError, XenStoreProtocolError
from pvhvm.xenstore.quota import TRANSACTION_MEMORY, Domains, Quota, is_privileged
from pvhvm.xenstore.transaction import (
    GlobalView,
    Transaction,
    TransactionView,
    View,
    apply,
    check_conflicts,
)
from pvhvm.xenstore.tree import Node, Tree, basename, is_valid_path, parent_of
from pvhvm.xenstore.wire import (
    DOMID_SELF,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    Access,
    Op,
    Packet,
    Permission,
    c_atoi,
    error_payload,
    join_strings,
    one_arg,
    parse_permissions,
    permissions_payload,
    split_strings,
)

log = logging.getLogger(__name__)

_OK = b"OK\0"
_ALWAYS_VALID = 1 << 62


class _Perm:
    """XS_PERM_READ / WRITE / OWNER as checked by perm_for_conn(): plain ints, as these
    are combined on every request (an IntFlag costs a call per operator)."""

    NONE = 0
    READ = 1
    WRITE = 2
    OWNER = 4
    ALL = 7


@dataclass(slots=True)
class Watch:
    """One registered watch: absolute path (or ``@special``), token, and the base its
    relative path was given against, if it was relative."""

    path: str
    token: bytes
    relative_base: str | None = None
    #: registration order across the store
    seq: int = 0

    def event_path(self, path: str) -> str:
        """get_watch_path(): report relative events for relative watches."""
        if self.relative_base is None:
            return path
        rest = path[len(self.relative_base):]
        return rest[1:] if rest.startswith("/") else rest


@dataclass(eq=False, slots=True)
class Connection:
    """One client. Unix-socket clients are dom0 and privileged; a connection made as a
    domain (``as_domain=True``, as through a ring page) has that domain's rights."""

    domid: int = 0
    as_domain: bool = False
    name: str = ""
    #: (absolute path, token) -> watch, in registration order
    watches: dict[tuple[str, bytes], Watch] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 0
    closed: bool = False
    #: order of connection (events go out connection by connection, as in xenstored)
    seq: int = 0
    #: set by the transport while the client is not reading: no events are built for it
    stalled: bool = False
    #: watch events not built or not sent because the client was not reading
    dropped_events: int = 0

    @property
    def unprivileged(self) -> bool:
        """domain_is_unprivileged()."""
        return self.as_domain and not is_privileged(self.domid)

    @property
    def implicit_path(self) -> str:
        """get_implicit_path(): the base of relative paths."""
        return f"/local/domain/{self.domid}"


@dataclass(frozen=True, slots=True)
class Send:
    """Queue ``packet`` for ``connection``."""

    connection: Connection
    packet: Packet


@dataclass(frozen=True, slots=True)
class Close:
    """Drop ``connection`` (its domain was released)."""

    connection: Connection


@dataclass(frozen=True, slots=True)
class DomainIntroduced:
    """A domain was introduced for the first time."""

    domid: int


@dataclass(frozen=True, slots=True)
class DomainReleased:
    """A domain was released."""

    domid: int


Effect = Send | Close | DomainIntroduced | DomainReleased

SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")


class XenStore:
    """Daemon state: the database, the domain table, connections and special-watch
    permissions."""

    def __init__(self, quota: Quota | None = None) -> None:
        self.quota = quota or Quota()
        self.tree = Tree()
        self.domains = Domains()
        #: connections in connection order (a dict, so that disconnecting is O(1))
        self._connections: dict[Connection, None] = {}
        self._next_seq = 0
        #: watch path -> connection -> its watches on that path, in registration order
        self.watch_index: dict[str, dict[Connection, list[Watch]]] = {}
        self.special_perms: dict[str, tuple[Permission, ...]] = {
            name: (Permission(0, Access.NONE),) for name in SPECIAL_PATHS}
        #: watch events dropped, over all connections, because their clients did not read
        self.dropped_events = 0
        #: recently checked valid paths (bounded, see _valid_path)
        self.valid_paths: set[str] = set()

    @property
    def connections(self) -> list[Connection]:
        """The open connections, in connection order."""
        return list(self._connections)

    def connect(self, domid: int = 0, *, as_domain: bool = False, name: str = "") -> Connection:
        """Register a new connection."""
        connection = Connection(domid=domid, as_domain=as_domain, name=name,
                                seq=self._next_seq)
        self._next_seq += 1
        self._connections[connection] = None
        return connection

    def disconnect(self, connection: Connection) -> None:
        """Forget a connection with its watches and transactions (destroy_conn())."""
        if connection.closed:
            return
        connection.closed = True
        self._reset(connection)
        self._connections.pop(connection, None)

    def add_watch(self, connection: Connection, watch: Watch) -> None:
        """Register ``watch`` for ``connection`` (and in the path index)."""
        watch.seq = self._next_seq
        self._next_seq += 1
        connection.watches[(watch.path, watch.token)] = watch
        self.watch_index.setdefault(watch.path, {}).setdefault(connection, []).append(watch)
        domain = self.domains.find(connection.domid) if connection.as_domain else None
        if domain is not None:
            domain.nbwatch += 1
            domain.memory += watch_memory(watch)

    def remove_watch(self, connection: Connection, key: tuple[str, bytes]) -> bool:
        """Unregister the watch on ``key`` = (path, token); False if there is none."""
        watch = connection.watches.pop(key, None)
        if watch is None:
            return False
        by_conn = self.watch_index.get(watch.path)
        if by_conn is not None:
            mine = by_conn.get(connection)
            if mine is not None:
                mine.remove(watch)
                if not mine:
                    del by_conn[connection]
            if not by_conn:
                del self.watch_index[watch.path]
        domain = self.domains.find(connection.domid) if connection.as_domain else None
        if domain is not None:
            domain.nbwatch = max(0, domain.nbwatch - 1)
            domain.memory = max(0, domain.memory - watch_memory(watch))
        return True

    def _reset(self, connection: Connection) -> None:
        """Delete all watches and transactions of a connection."""
        domain = self.domains.find(connection.domid) if connection.as_domain else None
        if domain is not None:
            domain.nbwatch = max(0, domain.nbwatch - len(connection.watches))
            domain.memory = max(0, domain.memory - sum(
                watch_memory(w) for w in connection.watches.values())
                - TRANSACTION_MEMORY * len(connection.transactions))
            domain.transactions = max(0, domain.transactions - len(connection.transactions))
        for path in {watch.path for watch in connection.watches.values()}:
            by_conn = self.watch_index.get(path)
            if by_conn is not None:
                by_conn.pop(connection, None)
                if not by_conn:
                    del self.watch_index[path]
        connection.watches.clear()
        connection.transactions.clear()

    def read(self, path: str) -> Node | None:
        """The node at an absolute path, without permission checks (for tests and tools)."""
        return self.tree.get(path)


# --- the request context --------------------------------------------------------------------

@dataclass(slots=True)
class _Request:
    store: XenStore
    conn: Connection
    packet: Packet
    tx: Transaction | None
    view: View
    before: list[Effect] = field(default_factory=list)
    after: list[Effect] = field(default_factory=list)


def _error(name: str, message: str | None = None, path: str | None = None) -> XenStoreErrnoError:
    return XenStoreErrnoError(name, message, path=path)


# --- permissions ---------------------------------------------------------------------------

def _target_of(store: XenStore, conn: Connection) -> int | None:
    if not conn.as_domain:
        return None
    domain = store.domains.find(conn.domid)
    return domain.target if domain is not None else None


def _perm_for_conn(store: XenStore, conn: Connection, perms: tuple[Permission, ...],
                   generation: int = _ALWAYS_VALID) -> int:
    """perm_for_conn(): the access ``conn`` has under ``perms``."""
    target = _target_of(store, conn)
    owner = perms[0].domid
    if not conn.unprivileged or owner == conn.domid or (target is not None and owner == target):
        return _Perm.ALL
    for perm in perms[1:]:
        if not store.domains.perm_valid(perm.domid, generation):
            continue
        if perm.domid == conn.domid or (target is not None and perm.domid == target):
            return int(perm.access) & 3
    return int(perms[0].access) & 3


def _node_perm(req: _Request, node: Node) -> int:
    return _perm_for_conn(req.store, req.conn, node.perms, node.generation)


# --- node access ---------------------------------------------------------------------------

def _canonicalize(conn: Connection, raw: bytes | None) -> str | None:
    """canonicalize(): relative paths are under the connection's implicit path."""
    if raw is None:
        return None
    path = raw.decode("latin-1")
    if path.startswith("/") or path.startswith("@"):
        return path
    return f"{conn.implicit_path}/{path}"


def _parent_perm(req: _Request, path: str) -> int:
    """ask_parents(): the access granted by the closest existing ancestor."""
    name = path
    while name != "/":
        name = parent_of(name)
        node = req.view.read(name)
        if node is not None:
            return _node_perm(req, node)
    return _Perm.NONE


def _valid_path(req: _Request, path: str | None) -> str:
    """EINVAL unless ``path`` is a valid absolute path (is_valid_nodename())."""
    if path is None:
        raise _error("EINVAL", "invalid path", path)
    store = req.store
    if path in store.valid_paths:
        return path
    if not is_valid_path(path, store.quota.path_len):
        raise _error("EINVAL", "invalid path", path)
    if len(store.valid_paths) >= _VALID_PATH_CACHE:
        store.valid_paths.clear()
    store.valid_paths.add(path)
    return path


#: Paths remembered as valid (a request's path is checked once, not once per step).
_VALID_PATH_CACHE = 4096


def _get_node(req: _Request, path: str | None, perm: int) -> Node:
    """get_node(): read with a permission check; errors as xenstored reports them."""
    path = _valid_path(req, path)
    node = req.view.read(path)
    if node is not None:
        if (_node_perm(req, node) & perm) == perm:
            return node
        raise _error("EACCES", path=path)
    # errno_from_parents(): don't reveal whether an unreadable node exists.
    if _parent_perm(req, path) & perm:
        raise _error("ENOENT", path=path)
    raise _error("EACCES", path=path)


def _entry_delta(req: _Request, domid: int, delta: int) -> None:
    if req.tx is not None:
        req.tx.entry_delta(domid, delta)
    else:
        req.store.domains.entry_delta(domid, delta, req.store.tree.generation)


def _check_entry_size(req: _Request, path: str, node: Node) -> None:
    if req.conn.unprivileged and node.entry_size() >= req.store.quota.entry_size:
        if req.tx is not None:
            req.tx.failed = True
        raise _error("ENOSPC", "node too large", path)


def _write_node(req: _Request, path: str, node: Node, *, no_quota_check: bool = False) -> Node:
    """write_node(): store with the entry-size quota."""
    if not no_quota_check:
        _check_entry_size(req, path, node)
    return req.view.write(path, node)


def _create_node(req: _Request, path: str, value: bytes) -> Node:
    """construct_node() + create_node(): create ``path`` and missing parents."""
    store, conn = req.store, req.conn
    missing = [path]
    name = parent_of(path)
    while True:
        parent = req.view.read(name)
        if parent is not None:
            break
        if name == "/":
            raise _error("EIO", "no root node")
        missing.append(name)
        name = parent_of(name)
    parent_path = name
    # Walk down from the existing parent, inheriting permissions.
    planned: list[tuple[str, Node]] = []
    above = parent
    for new_path in reversed(missing):
        perms = above.perms
        if conn.unprivileged:
            perms = (Permission(conn.domid, perms[0].access), *perms[1:])
        node = Node(value=b"", perms=perms)
        planned.append((new_path, node))
        above = node
    # Children lists: each new node gains the next one as child.
    for index in range(len(planned) - 1):
        child_name = basename(planned[index + 1][0])
        planned[index] = (planned[index][0], planned[index][1].with_child(child_name))
    target_path, target = planned[-1]
    planned[-1] = (target_path, target.with_value(value))
    parent = parent.with_child(basename(planned[0][0]))
    if req.tx is not None:
        req.tx.node_created = True
    # Check quotas bottom up, as xenstored writes (and fails) in that order.
    bottom_up = list(reversed(planned))
    if conn.unprivileged:
        entries = store.domains.entries(conn.domid)
        for done, (new_path, node) in enumerate(bottom_up):
            counted = entries if req.tx is not None else entries + done
            if counted >= store.quota.nodes_per_domain:
                if req.tx is not None and done:
                    req.tx.failed = True
                raise _error("ENOSPC", "too many nodes for domain", new_path)
            _check_entry_size(req, new_path, node)
        _check_entry_size(req, parent_path, parent)
    stored = target
    for new_path, node in bottom_up:
        written = req.view.write(new_path, node)
        if new_path == target_path:
            stored = written
        _entry_delta(req, node.owner, +1)
    req.view.write(parent_path, parent)
    return stored


# --- watches -------------------------------------------------------------------------------

def _watch_permitted(store: XenStore, conn: Connection, path: str, node: Node | None,
                     perms: tuple[Permission, ...] | None) -> bool:
    """watch_permitted(): may ``conn`` see an event on ``path``?"""
    if not conn.unprivileged:
        return True
    if perms is not None and _perm_for_conn(store, conn, perms) & _Perm.READ:
        return True
    if node is None:
        node = store.tree.get(path)
        if node is None:
            return False
    if _perm_for_conn(store, conn, node.perms, node.generation) & _Perm.READ:
        return True
    parent = store.tree.get(parent_of(path))
    if parent is None:
        return False
    return bool(_perm_for_conn(store, conn, parent.perms, parent.generation) & _Perm.READ)


def _event(conn: Connection, path: str, token: bytes) -> Send | None:
    """send_event(): a WATCH_EVENT packet, or None if it would be over-long."""
    payload = path.encode("latin-1") + b"\0" + token + b"\0"
    if len(payload) > PAYLOAD_MAX:
        return None
    return Send(conn, Packet(Op.WATCH_EVENT, 0, 0, payload))


def watch_memory(watch: Watch) -> int:
    """What one watch costs its domain's memory quota (path, token, bookkeeping)."""
    return len(watch.path) + len(watch.token) + _WATCH_OVERHEAD


_WATCH_OVERHEAD = 64


def _watched_prefixes(path: str, exact: bool) -> list[str]:
    """The watch paths an event on ``path`` matches: the path itself and, unless
    ``exact``, every ancestor up to ``/`` (is_child() from the watch's side)."""
    if exact or path.startswith("@"):
        return [path]
    prefixes = [path]
    cut = path.rfind("/")
    while cut > 0:
        prefixes.append(path[:cut])
        cut = path.rfind("/", 0, cut)
    if path != "/":
        prefixes.append("/")
    return prefixes


def fire_watches(store: XenStore, path: str, node: Node | None, *, exact: bool,
                 perms: tuple[Permission, ...] | None = None) -> list[Effect]:
    """fire_watches() outside a transaction: the events every connection gets.

    Only the watches on ``path`` and its ancestors are looked at (the path index); events
    go out connection by connection, each connection's in registration order.
    """
    index = store.watch_index
    if not index:
        return []
    matched: dict[Connection, list[Watch]] = {}
    for prefix in _watched_prefixes(path, exact):
        by_conn = index.get(prefix)
        if not by_conn:
            continue
        for conn, watches in by_conn.items():
            if conn.stalled:
                conn.dropped_events += len(watches)
                store.dropped_events += len(watches)
                continue
            matched.setdefault(conn, []).extend(watches)
    if not matched:
        return []
    effects: list[Effect] = []
    special = path.startswith("@")
    many = len(matched) > 1
    for conn in sorted(matched, key=_conn_order) if many else matched:
        if special:
            special_perms = store.special_perms.get(path)
            if special_perms is None or not (
                    _perm_for_conn(store, conn, special_perms) & _Perm.READ):
                continue
        elif not _watch_permitted(store, conn, path, node, perms):
            continue
        watches = matched[conn]
        if len(watches) > 1:
            watches.sort(key=_watch_order)
        for watch in watches:
            event = _event(conn, watch.event_path(path), watch.token)
            if event is not None:
                effects.append(event)
    return effects


def _conn_order(conn: Connection) -> int:
    return conn.seq


def _watch_order(watch: Watch) -> int:
    return watch.seq


def _fire(req: _Request, path: str, node: Node | None, *, exact: bool,
          perms: tuple[Permission, ...] | None = None) -> None:
    if req.view.queue_event(path, exact):
        return
    req.before.extend(fire_watches(req.store, path, node, exact=exact, perms=perms))


# --- operations ----------------------------------------------------------------------------

def _do_read(req: _Request) -> bytes:
    path = _canonicalize(req.conn, one_arg(req.packet.payload))
    return _get_node(req, path, _Perm.READ).value


def _do_directory(req: _Request) -> bytes:
    path = _canonicalize(req.conn, one_arg(req.packet.payload))
    return join_strings(*_get_node(req, path, _Perm.READ).children)


def _do_directory_part(req: _Request) -> bytes:
    """send_directory_part(): children from a byte offset, prefixed by the generation."""
    payload = req.packet.payload
    if payload.count(b"\0") != 2:
        raise _error("EINVAL")
    raw_path, raw_offset = split_strings(payload)
    node = _get_node(req, _canonicalize(req.conn, raw_path), _Perm.READ)
    offset = c_atoi(raw_offset)
    gen = str(node.generation).encode() + b"\0"
    children = join_strings(*node.children)
    if offset >= len(children):
        return gen + b"\0"
    maxlen = PAYLOAD_MAX - len(gen) - 1
    length = 0
    position = offset
    while True:
        end = children.index(b"\0", position)
        name_len = end - position
        if length + name_len >= maxlen:
            break
        length += name_len + 1
        position = end + 1
        if offset + length == len(children):
            break
    data = gen + children[offset:offset + length]
    if offset + length == len(children):
        data += b"\0"
    return data


def _do_get_perms(req: _Request) -> bytes:
    path = _canonicalize(req.conn, one_arg(req.packet.payload))
    return permissions_payload(_get_node(req, path, _Perm.READ).perms)


def _do_write(req: _Request) -> bytes:
    payload = req.packet.payload
    cut = payload.find(b"\0")
    if cut < 0:
        raise _error("EINVAL", "WRITE without a path")
    value = payload[cut + 1:]
    path = _valid_path(req, _canonicalize(req.conn, payload[:cut]))
    try:
        node = _get_node(req, path, _Perm.WRITE)
    except XenStoreErrnoError as err:
        if err.errno_name != "ENOENT":
            raise
        node = _create_node(req, path, value)
    else:
        node = _write_node(req, path, node.with_value(value))
    _fire(req, path, node, exact=False)
    return _OK


def _do_mkdir(req: _Request) -> bytes:
    path = _valid_path(req, _canonicalize(req.conn, one_arg(req.packet.payload)))
    try:
        _get_node(req, path, _Perm.WRITE)
    except XenStoreErrnoError as err:
        if err.errno_name != "ENOENT":
            raise
        node = _create_node(req, path, b"")
        _fire(req, path, node, exact=False)
    return _OK


def _rm_node(req: _Request, path: str) -> None:
    """rm_node(): delete ``path`` and its subtree, children first, firing watches."""
    parent_path = parent_of(path)
    parent = req.view.read(parent_path)
    if parent is None:
        raise _error("EINVAL", path=path)
    order: list[tuple[str, Node]] = []
    stack: list[tuple[str, bool]] = [(path, False)]
    nodes: dict[str, Node] = {}
    while stack:
        name, expanded = stack.pop()
        if expanded:
            order.append((name, nodes[name]))
            continue
        node = req.view.read(name)
        if node is None:
            continue
        nodes[name] = node
        stack.append((name, True))
        prefix = "" if name == "/" else name
        stack.extend((f"{prefix}/{child}", False) for child in reversed(node.children))
    for name, node in order:
        req.view.delete(name)
        _fire(req, name, node, exact=name != path)
        _entry_delta(req, node.owner, -1)
    _write_node(req, parent_path, parent.without_child(basename(path)), no_quota_check=True)


def _do_rm(req: _Request) -> bytes:
    path = _valid_path(req, _canonicalize(req.conn, one_arg(req.packet.payload)))
    try:
        _get_node(req, path, _Perm.WRITE)
    except XenStoreErrnoError as err:
        if err.errno_name != "ENOENT":
            raise
        if req.view.read(parent_of(path)) is not None:
            return _OK
        raise
    if path == "/":
        raise _error("EINVAL", "cannot remove the root", path)
    _rm_node(req, path)
    return _OK


def _parse_set_perms(req: _Request) -> tuple[bytes, tuple[Permission, ...]]:
    payload = req.packet.payload
    count = payload.count(b"\0")
    if count < 2:
        raise _error("EINVAL", "SET_PERMS needs a path and permissions")
    if req.conn.unprivileged and count - 1 > req.store.quota.perms_per_node:
        raise _error("ENOSPC", "too many permissions")
    strings = split_strings(payload)
    try:
        perms = parse_permissions(strings[1:count])
    except XenStoreProtocolError as err:
        raise _error("EINVAL", str(err)) from err
    return strings[0], perms


def _do_set_perms(req: _Request) -> bytes:
    store, conn = req.store, req.conn
    raw_path, perms = _parse_set_perms(req)
    # domain_alloc_permrefs(): every domid is taken to exist.
    for perm in perms:
        store.domains.find_or_alloc(perm.domid, store.tree.generation)
    if raw_path.startswith(b"@"):
        name = raw_path.decode("latin-1")
        current = store.special_perms.get(name)
        if current is None:
            raise _error("EINVAL", "no such special path", name)
        if (_perm_for_conn(store, conn, current) & (_Perm.WRITE | _Perm.OWNER)) != (
                _Perm.WRITE | _Perm.OWNER):
            raise _error("EACCES", path=name)
        store.special_perms[name] = perms
        return _OK
    path = _valid_path(req, _canonicalize(conn, raw_path))
    node = _get_node(req, path, _Perm.WRITE | _Perm.OWNER)
    if conn.unprivileged and perms[0].domid != node.owner:
        raise _error("EPERM", "only dom0 may change the owner", path)
    old_perms = node.perms
    updated = node.with_perms(perms)
    updated = _write_node(req, path, updated)
    _entry_delta(req, node.owner, -1)
    _entry_delta(req, updated.owner, +1)
    _fire(req, path, updated, exact=False, perms=old_perms)
    return _OK


def _do_watch(req: _Request) -> bytes:
    store, conn = req.store, req.conn
    payload = req.packet.payload
    if payload.count(b"\0") != 2:
        raise _error("EINVAL", "WATCH needs a path and a token")
    raw_path, token = split_strings(payload)
    relative_base: str | None = None
    if raw_path.startswith(b"@"):
        path = raw_path.decode("latin-1")
        if len(raw_path) > REL_PATH_MAX:
            raise _error("EINVAL", "path too long")
    else:
        if not raw_path.startswith(b"/"):
            relative_base = conn.implicit_path
        path = _canonicalize(conn, raw_path) or ""
        if not is_valid_path(path, store.quota.path_len):
            raise _error("EINVAL", "invalid path", path)
    if (path, token) in conn.watches:
        raise _error("EEXIST", "watch exists", path)
    domain = store.domains.find_or_alloc(conn.domid, store.tree.generation) \
        if conn.as_domain else None
    watch = Watch(path, token, relative_base)
    if conn.unprivileged and domain is not None:
        if domain.nbwatch > store.quota.watches_per_domain:
            raise _error("E2BIG", "too many watches")
        if domain.memory + watch_memory(watch) > store.quota.memory:
            raise _error("ENOMEM", "domain memory quota")
    elif not conn.unprivileged and len(conn.watches) >= store.quota.socket_watches:
        raise _error("E2BIG", "too many watches on this connection")
    store.add_watch(conn, watch)
    # "When a watch is first set up it is triggered once straight away."
    event = _event(conn, watch.event_path(path), token)
    if event is not None:
        req.after.append(event)
    return _OK


def _do_unwatch(req: _Request) -> bytes:
    store, conn = req.store, req.conn
    payload = req.packet.payload
    if payload.count(b"\0") != 2:
        raise _error("EINVAL", "UNWATCH needs a path and a token")
    raw_path, token = split_strings(payload)
    path = _canonicalize(conn, raw_path) or ""
    if store.remove_watch(conn, (path, token)):
        return _OK
    raise _error("ENOENT", "no such watch", path)


def _do_transaction_start(req: _Request) -> bytes:
    store, conn = req.store, req.conn
    if req.tx is not None:
        raise _error("EBUSY", "nested transactions are not supported")
    domain = store.domains.find_or_alloc(conn.domid, store.tree.generation) \
        if conn.as_domain else None
    if conn.unprivileged:
        if len(conn.transactions) > store.quota.transactions:
            raise _error("ENOSPC", "too many transactions")
        if domain is not None and domain.memory + TRANSACTION_MEMORY > store.quota.memory:
            raise _error("ENOMEM", "domain memory quota")
    elif len(conn.transactions) >= store.quota.socket_transactions:
        raise _error("ENOSPC", "too many transactions on this connection")
    if domain is not None:
        domain.transactions += 1
        domain.memory += TRANSACTION_MEMORY
    while True:
        tx_id = conn.next_tx_id
        conn.next_tx_id = (conn.next_tx_id + 1) & 0xFFFFFFFF
        if tx_id != 0 and tx_id not in conn.transactions:
            break
    conn.transactions[tx_id] = Transaction(tx_id, store.tree.next_generation())
    return str(tx_id).encode() + b"\0"


def _do_transaction_end(req: _Request) -> bytes:
    store, conn, tx = req.store, req.conn, req.tx
    arg = one_arg(req.packet.payload)
    if arg not in (b"T", b"F"):
        raise _error("EINVAL", "TRANSACTION_END takes T or F")
    if tx is None:
        raise _error("ENOENT", "no transaction")
    del conn.transactions[tx.tx_id]
    domain = store.domains.find(conn.domid) if conn.as_domain else None
    if domain is not None:
        domain.transactions = max(0, domain.transactions - 1)
        domain.memory = max(0, domain.memory - TRANSACTION_MEMORY)
    if arg == b"F":
        return _OK
    if tx.failed:
        raise _error("ENOMEM", "transaction failed")
    if tx.node_created and conn.unprivileged:
        for domid, delta in tx.entry_deltas.items():
            if is_privileged(domid):
                continue
            count = max(0, store.domains.entries(domid) + delta)
            if count >= store.quota.nodes_per_domain:
                raise _error("ENOSPC", "too many nodes for domain")
    check_conflicts(store.tree, tx)
    events = apply(store.tree, tx)
    for domid, delta in tx.entry_deltas.items():
        store.domains.entry_delta(domid, delta, store.tree.generation)
    for event in events:
        req.before.extend(fire_watches(store, event.path, None, exact=event.exact,
                                       perms=event.perms))
    return _OK


def _domain_connections(store: XenStore, domid: int) -> list[Connection]:
    return [c for c in store.connections if c.as_domain and c.domid == domid]


def _do_introduce(req: _Request) -> bytes:
    store = req.store
    strings = split_strings(req.packet.payload)
    if len(strings) < 3:
        raise _error("EINVAL", "INTRODUCE needs domid, gfn and event channel")
    domid = c_atoi(strings[0])
    port = c_atoi(strings[2])
    if port == 0:
        raise _error("EINVAL", "bad event channel")
    if is_privileged(domid):
        return _OK
    domain = store.domains.find_or_alloc(domid, store.tree.generation)
    domain.port = port
    for conn in _domain_connections(store, domid):
        store._reset(conn)
    if not domain.introduced:
        domain.introduced = True
        req.before.append(DomainIntroduced(domid))
        req.before.extend(fire_watches(store, "@introduceDomain", None, exact=True))
    return _OK


def _onearg_domain(req: _Request) -> int:
    arg = one_arg(req.packet.payload)
    if arg is None:
        raise _error("EINVAL", "needs a domid")
    domid = c_atoi(arg)
    if domid == 0:
        raise _error("EINVAL", "not for dom0")
    if req.store.domains.introduced(domid) is None:
        raise _error("ENOENT", f"domain {domid} is not introduced")
    return domid


def release_domain(store: XenStore, domid: int) -> list[Effect]:
    """destroy_domain(): drop the domain's connections, delete the nodes it owns, take it
    out of the special permissions and fire @releaseDomain."""
    effects: list[Effect] = []
    for conn in _domain_connections(store, domid):
        effects.append(Close(conn))
        store.disconnect(conn)
    owned = [path for path, node in store.tree.walk("/")
             if node.owner == domid and path != "/"]
    for path in owned:
        if store.tree.get(path) is None:
            continue  # already gone with an owned ancestor
        conn = Connection()
        req = _Request(store, conn, Packet(Op.RM, 0, 0, b""), None, GlobalView(store.tree))
        _rm_node(req, path)
        effects.extend(req.before)
    for name, perms in store.special_perms.items():
        owner = perms[0]
        if owner.domid == domid:
            owner = Permission(0, owner.access)
        store.special_perms[name] = (owner, *(p for p in perms[1:] if p.domid != domid))
    store.domains.remove(domid)
    effects.append(DomainReleased(domid))
    effects.extend(fire_watches(store, "@releaseDomain", None, exact=True))
    return effects


def _do_release(req: _Request) -> bytes:
    domid = _onearg_domain(req)
    req.before.extend(release_domain(req.store, domid))
    return _OK


def _do_resume(req: _Request) -> bytes:
    domain = req.store.domains.find(_onearg_domain(req))
    if domain is not None:
        domain.shutdown = False
    return _OK


def _do_set_target(req: _Request) -> bytes:
    strings = split_strings(req.packet.payload)
    if len(strings) < 2:
        raise _error("EINVAL", "SET_TARGET needs two domids")
    domid, target = c_atoi(strings[0]), c_atoi(strings[1])
    domain = req.store.domains.introduced(domid)
    if domain is None or req.store.domains.introduced(target) is None:
        raise _error("ENOENT", "domain not introduced")
    domain.target = target
    return _OK


def _do_get_domain_path(req: _Request) -> bytes:
    arg = one_arg(req.packet.payload)
    if arg is None:
        raise _error("EINVAL", "needs a domid")
    return f"/local/domain/{c_atoi(arg)}".encode() + b"\0"


def _do_is_domain_introduced(req: _Request) -> bytes:
    arg = one_arg(req.packet.payload)
    if arg is None:
        raise _error("EINVAL", "needs a domid")
    domid = c_atoi(arg)
    introduced = domid in (0, DOMID_SELF) or req.store.domains.introduced(domid) is not None
    return b"T\0" if introduced else b"F\0"


def _do_reset_watches(req: _Request) -> bytes:
    req.store._reset(req.conn)
    return _OK


_Handler = Callable[[_Request], bytes]

#: wire_funcs[] of xenstored_core.c: handler, privileged-only, ignores tx_id.
_HANDLERS: dict[int, tuple[_Handler, bool, bool]] = {
    Op.DIRECTORY: (_do_directory, False, False),
    Op.READ: (_do_read, False, False),
    Op.GET_PERMS: (_do_get_perms, False, False),
    Op.WATCH: (_do_watch, False, True),
    Op.UNWATCH: (_do_unwatch, False, True),
    Op.TRANSACTION_START: (_do_transaction_start, False, False),
    Op.TRANSACTION_END: (_do_transaction_end, False, False),
    Op.INTRODUCE: (_do_introduce, True, False),
    Op.RELEASE: (_do_release, True, False),
    Op.GET_DOMAIN_PATH: (_do_get_domain_path, False, False),
    Op.WRITE: (_do_write, False, False),
    Op.MKDIR: (_do_mkdir, False, False),
    Op.RM: (_do_rm, False, False),
    Op.SET_PERMS: (_do_set_perms, False, False),
    Op.IS_DOMAIN_INTRODUCED: (_do_is_domain_introduced, True, False),
    Op.RESUME: (_do_resume, True, False),
    Op.SET_TARGET: (_do_set_target, True, False),
    Op.RESET_WATCHES: (_do_reset_watches, False, False),
    Op.DIRECTORY_PART: (_do_directory_part, False, False),
}


def reply(store: XenStore, connection: Connection, request: Packet) -> list[Effect]:
    """Process one request (process_message()); return what to send and do, in order.

    The reply (or XS_ERROR with the errno name) echoes the request's type, req_id and
    tx_id; watch events for any connection come before it, except the initial event of
    a new watch, which follows its ack.
    """
    entry = _HANDLERS.get(request.op)

    def error(name: str) -> list[Effect]:
        packet = Packet(Op.ERROR, request.req_id, request.tx_id, error_payload(name))
        return [Send(connection, packet)]

    if entry is None:
        return error("ENOSYS")
    handler, privileged_only, no_tx = entry
    if privileged_only and connection.unprivileged:
        return error("EACCES")
    tx: Transaction | None = None
    if not no_tx and request.tx_id != 0:
        tx = connection.transactions.get(request.tx_id)
        if tx is None:
            return error("ENOENT")
    view: View
    if tx is None:
        view = GlobalView(store.tree)
    else:
        limit = store.quota.transaction_nodes if connection.unprivileged else None
        view = TransactionView(store.tree, tx, node_limit=limit)
    req = _Request(store, connection, request, tx, view)
    try:
        payload = handler(req)
    except XenStoreErrnoError as err:
        log.debug("%s %s: %s", connection.name or "conn", Op(request.op).name, err)
        return [*req.before, *error(err.errno_name)]
    if len(payload) > PAYLOAD_MAX:
        return [*req.before, *error("E2BIG")]
    response = Packet(request.op, request.req_id, request.tx_id, payload)
    return [*req.before, Send(connection, response), *req.after]
