"""`server.reply` without sockets: semantics and every error path."""

from __future__ import annotations

import pytest
from xs_harness import Harness, err, ok

from pvhvm.xenstore.quota import Quota
from pvhvm.xenstore.wire import Op


@pytest.fixture
def xs() -> Harness:
    return Harness(Quota(nodes_per_domain=20, watches_per_domain=2, transactions=1,
                         perms_per_node=3, entry_size=200, transaction_nodes=30))


def test_initial_tree(xs: Harness) -> None:
    c = xs.conn()
    assert xs.raw(c, Op.DIRECTORY, b"/\0").payload == b"tool\0"
    assert xs.raw(c, Op.DIRECTORY, b"/tool\0").payload == b"xenstored\0"
    assert xs.call(c, Op.GET_PERMS, "/") == (Op.GET_PERMS, "n0")


def test_write_read_and_implicit_parents(xs: Harness) -> None:
    c = xs.conn()
    assert xs.write(c, "/a/b/c", "v") == ok(Op.WRITE)
    assert xs.call(c, Op.READ, "/a/b/c") == (Op.READ, "v")
    assert xs.call(c, Op.READ, "/a/b") == (Op.READ, "")
    assert xs.raw(c, Op.DIRECTORY, b"/a\0").payload == b"b\0"
    # binary values survive, nul included
    xs.raw(c, Op.WRITE, b"/bin\0\x00\x01\xff")
    assert xs.raw(c, Op.READ, b"/bin\0").payload == b"\x00\x01\xff"


def test_relative_paths_for_socket_clients(xs: Harness) -> None:
    c = xs.conn()
    assert xs.write(c, "rel/x", "1") == ok(Op.WRITE)
    assert xs.call(c, Op.READ, "/local/domain/0/rel/x") == (Op.READ, "1")
    assert xs.call(c, Op.GET_DOMAIN_PATH, "7") == (Op.GET_DOMAIN_PATH, "/local/domain/7")


def test_children_keep_creation_order(xs: Harness) -> None:
    c = xs.conn()
    for name in ["z", "a", "m"]:
        xs.write(c, f"/d/{name}", "")
    xs.call(c, Op.RM, "/d/a")
    xs.write(c, "/d/a", "")
    assert xs.raw(c, Op.DIRECTORY, b"/d\0").payload == b"z\0m\0a\0"


@pytest.mark.parametrize("path", [
    "/a b", "/a//b", "/a/", "", "/ä", "/a:b", "/" + "x" * 2049,
    "/local/domain/1/" + "x" * 2049])
def test_bad_paths_are_einval(xs: Harness, path: str) -> None:
    c = xs.conn()
    for op in (Op.READ, Op.MKDIR, Op.RM, Op.DIRECTORY, Op.GET_PERMS):
        assert xs.call(c, op, path) == err("EINVAL"), op
    assert xs.write(c, path, "v") == err("EINVAL")


def test_long_path_inside_local_domain_is_allowed(xs: Harness) -> None:
    c = xs.conn()
    assert xs.write(c, "/local/domain/1/" + "x" * 2048, "") == ok(Op.WRITE)


def test_malformed_payloads(xs: Harness) -> None:
    c = xs.conn()
    assert xs.raw(c, Op.READ, b"/a").op == Op.ERROR  # no nul
    assert xs.raw(c, Op.READ, b"/tool\0\0").payload == b"EINVAL\0"  # two nuls
    assert xs.raw(c, Op.WRITE, b"/nonul").payload == b"EINVAL\0"
    assert xs.raw(c, Op.WATCH, b"/a\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.SET_PERMS, b"/tool\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.SET_PERMS, b"/tool\0x1\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.TRANSACTION_END, b"X\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.INTRODUCE, b"1\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.INTRODUCE, b"1\x000\x000\0").payload == b"EINVAL\0"
    assert xs.raw(c, Op.DIRECTORY_PART, b"/\0").payload == b"EINVAL\0"


def test_missing_nodes(xs: Harness) -> None:
    c = xs.conn()
    assert xs.call(c, Op.READ, "/nope") == err("ENOENT")
    assert xs.call(c, Op.DIRECTORY, "/nope") == err("ENOENT")
    assert xs.call(c, Op.GET_PERMS, "/nope") == err("ENOENT")
    assert xs.call(c, Op.SET_PERMS, "/nope", "n0") == err("ENOENT")
    assert xs.call(c, Op.RM, "/nope") == ok(Op.RM)  # parent exists
    assert xs.call(c, Op.RM, "/nope/deeper") == err("ENOENT")
    assert xs.call(c, Op.RM, "/") == err("EINVAL")


@pytest.mark.parametrize("op", [Op.CONTROL, Op.WATCH_EVENT, Op.ERROR, 20, Op.GET_FEATURE,
                                Op.SET_QUOTA, 27, 0xFFFF, 0xFFFFFFFF])
def test_unknown_types_are_enosys(xs: Harness, op: int) -> None:
    assert xs.raw(xs.conn(), op, b"").payload == b"ENOSYS\0"


def test_unknown_transaction_is_enoent(xs: Harness) -> None:
    c = xs.conn()
    assert xs.call(c, Op.READ, "/tool", tx=42) == err("ENOENT")
    # WATCH ignores tx_id
    assert xs.call(c, Op.WATCH, "/tool", "t", tx=42) == ok(Op.WATCH)


# --- permissions ---------------------------------------------------------------------------

def test_unprivileged_access(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.write(dom0, "/secret/x", "s")
    xs.write(dom0, "/shared/x", "s")
    xs.call(dom0, Op.SET_PERMS, "/shared", "n0", "r5")
    xs.call(dom0, Op.SET_PERMS, "/shared/x", "n0", "r5")
    d5 = xs.domu(5)
    assert xs.call(d5, Op.READ, "/secret/x") == err("EACCES")
    assert xs.call(d5, Op.READ, "/secret/missing") == err("EACCES")  # parent unreadable
    assert xs.call(d5, Op.READ, "/shared/x") == (Op.READ, "s")
    assert xs.call(d5, Op.READ, "/shared/missing") == err("ENOENT")  # parent readable
    assert xs.write(d5, "/shared/x", "w") == err("EACCES")
    assert xs.write(d5, "/shared/new", "w") == err("EACCES")  # parent not writable
    assert xs.call(d5, Op.RM, "/shared/x") == err("EACCES")
    assert xs.call(d5, Op.SET_PERMS, "/shared/x", "b5") == err("EACCES")
    assert xs.call(d5, Op.GET_PERMS, "/secret/x") == err("EACCES")
    for op, args in [(Op.INTRODUCE, ("6", "0", "1")), (Op.RELEASE, ("5",)),
                     (Op.IS_DOMAIN_INTRODUCED, ("5",)), (Op.RESUME, ("5",)),
                     (Op.SET_TARGET, ("5", "6"))]:
        assert xs.call(d5, op, *args) == err("EACCES"), op
    assert xs.call(d5, Op.GET_DOMAIN_PATH, "5") == (Op.GET_DOMAIN_PATH, "/local/domain/5")


def test_unprivileged_creation_owns_new_nodes(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.call(dom0, Op.MKDIR, "/local/domain/5")
    xs.call(dom0, Op.SET_PERMS, "/local/domain/5", "n0", "b5")
    d5 = xs.domu(5)
    assert xs.write(d5, "data/x", "1") == ok(Op.WRITE)  # relative to /local/domain/5
    assert xs.call(dom0, Op.GET_PERMS, "/local/domain/5/data") == (Op.GET_PERMS, "n5")
    assert xs.raw(dom0, Op.GET_PERMS, b"/local/domain/5/data/x\0").payload == b"n5\0b5\0"
    # dom0-created children inherit the parent's list unchanged
    xs.write(dom0, "/local/domain/5/by0", "")
    assert xs.raw(dom0, Op.GET_PERMS, b"/local/domain/5/by0\0").payload == b"n0\0b5\0"
    # the owner may change perms but not the owner
    assert xs.call(d5, Op.SET_PERMS, "data", "n5", "r0") == ok(Op.SET_PERMS)
    assert xs.call(d5, Op.SET_PERMS, "data", "n6") == err("EPERM")
    assert xs.call(dom0, Op.SET_PERMS, "/local/domain/5/data", "n6") == ok(Op.SET_PERMS)
    assert xs.call(d5, Op.READ, "data") == err("EACCES")


def test_set_target_grants_targets_rights(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.write(dom0, "/vm3/x", "1")
    xs.call(dom0, Op.SET_PERMS, "/vm3", "n3")
    xs.call(dom0, Op.SET_PERMS, "/vm3/x", "n3")
    d2 = xs.domu(2)
    xs.domu(3)
    assert xs.call(d2, Op.READ, "/vm3/x") == err("EACCES")
    assert xs.call(dom0, Op.SET_TARGET, "2", "3") == ok(Op.SET_TARGET)
    assert xs.call(d2, Op.READ, "/vm3/x") == (Op.READ, "1")
    assert xs.call(dom0, Op.SET_TARGET, "2", "9") == err("ENOENT")


def test_released_domains_grants_are_ignored(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.write(dom0, "/g/x", "1")
    xs.call(dom0, Op.SET_PERMS, "/g/x", "n0", "r4")
    d4 = xs.domu(4)
    assert xs.call(d4, Op.READ, "/g/x") == (Op.READ, "1")
    assert xs.call(dom0, Op.RELEASE, "4") == ok(Op.RELEASE)
    assert d4.closed
    xs.write(dom0, "/unrelated", "")  # time passes (the generation count moves on)
    d4 = xs.domu(4)  # a new domain with the same domid
    assert xs.call(d4, Op.READ, "/g/x") == err("EACCES")


# --- transactions --------------------------------------------------------------------------

def test_transaction_isolation_and_commit(xs: Harness) -> None:
    a, b = xs.conn(), xs.conn()
    xs.write(a, "/t/x", "a")
    op, tx = xs.call(a, Op.TRANSACTION_START, "")
    assert (op, tx) == (Op.TRANSACTION_START, "1")
    assert xs.write(a, "/t/x", "b", tx=1) == ok(Op.WRITE)
    assert xs.call(a, Op.READ, "/t/x", tx=1) == (Op.READ, "b")
    assert xs.call(b, Op.READ, "/t/x") == (Op.READ, "a")
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == ok(Op.TRANSACTION_END)
    assert xs.call(b, Op.READ, "/t/x") == (Op.READ, "b")
    assert xs.call(a, Op.READ, "/t/x", tx=1) == err("ENOENT")  # gone after END


def test_transaction_conflict_is_eagain(xs: Harness) -> None:
    a, b = xs.conn(), xs.conn()
    xs.write(a, "/t/x", "a")
    xs.call(a, Op.TRANSACTION_START, "")
    assert xs.call(a, Op.READ, "/t/x", tx=1) == (Op.READ, "a")
    xs.write(b, "/t/x", "other")
    assert xs.call(a, Op.READ, "/t/x", tx=1) == (Op.READ, "a")  # repeatable read
    xs.write(a, "/t/y", "1", tx=1)
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == err("EAGAIN")
    assert xs.call(b, Op.READ, "/t/y") == err("ENOENT")
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == err("ENOENT")


def test_creating_a_sibling_conflicts_through_the_shared_parent(xs: Harness) -> None:
    # As in xenstored: both creations rewrite "/" (its child list).
    a, b = xs.conn(), xs.conn()
    xs.call(a, Op.TRANSACTION_START, "")
    xs.write(a, "/p1", "1", tx=1)
    xs.write(b, "/q1", "1")
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == err("EAGAIN")


def test_transaction_conflict_on_created_node(xs: Harness) -> None:
    a, b = xs.conn(), xs.conn()
    xs.call(a, Op.TRANSACTION_START, "")
    assert xs.call(a, Op.READ, "/new", tx=1) == err("ENOENT")
    xs.write(b, "/new", "x")
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == err("EAGAIN")


def test_unrelated_write_does_not_conflict(xs: Harness) -> None:
    a, b = xs.conn(), xs.conn()
    xs.write(a, "/p", "")
    xs.write(a, "/q", "")
    xs.call(a, Op.TRANSACTION_START, "")
    xs.write(a, "/p/x", "1", tx=1)
    xs.write(b, "/q/y", "1")
    assert xs.call(a, Op.TRANSACTION_END, "T", tx=1) == ok(Op.TRANSACTION_END)
    assert xs.call(b, Op.READ, "/p/x") == (Op.READ, "1")


def test_abort_discards(xs: Harness) -> None:
    a = xs.conn()
    xs.call(a, Op.TRANSACTION_START, "")
    xs.write(a, "/gone", "1", tx=1)
    assert xs.call(a, Op.TRANSACTION_END, "F", tx=1) == ok(Op.TRANSACTION_END)
    assert xs.call(a, Op.READ, "/gone") == err("ENOENT")


def test_transaction_errors(xs: Harness) -> None:
    a = xs.conn()
    assert xs.call(a, Op.TRANSACTION_END, "T") == err("ENOENT")
    xs.call(a, Op.TRANSACTION_START, "")
    assert xs.call(a, Op.TRANSACTION_START, "", tx=1) == err("EBUSY")
    op, second = xs.call(a, Op.TRANSACTION_START, "")
    assert (op, second) == (Op.TRANSACTION_START, "2")


def test_transaction_events_wait_for_commit(xs: Harness) -> None:
    a, w = xs.conn(), xs.conn()
    xs.call(w, Op.WATCH, "/ev", "tok")
    assert xs.take_events(w) == [("/ev", "tok")]
    xs.call(a, Op.TRANSACTION_START, "")
    xs.write(a, "/ev/x", "1", tx=1)
    assert xs.take_events(w) == []
    xs.call(a, Op.TRANSACTION_END, "T", tx=1)
    assert xs.take_events(w) == [("/ev/x", "tok")]
    xs.call(a, Op.TRANSACTION_START, "")
    xs.write(a, "/ev/y", "1", tx=2)
    xs.call(a, Op.TRANSACTION_END, "F", tx=2)
    assert xs.take_events(w) == []


def test_rm_inside_transaction(xs: Harness) -> None:
    a = xs.conn()
    xs.write(a, "/r/a/b", "1")
    xs.call(a, Op.TRANSACTION_START, "")
    assert xs.call(a, Op.RM, "/r/a", tx=1) == ok(Op.RM)
    assert xs.call(a, Op.READ, "/r/a/b", tx=1) == err("ENOENT")
    assert xs.call(a, Op.READ, "/r/a/b") == (Op.READ, "1")
    xs.call(a, Op.TRANSACTION_END, "T", tx=1)
    assert xs.call(a, Op.READ, "/r/a/b") == err("ENOENT")
    assert xs.raw(a, Op.DIRECTORY, b"/r\0").payload == b""


# --- watches -------------------------------------------------------------------------------

def test_watch_events(xs: Harness) -> None:
    w, c = xs.conn(), xs.conn()
    assert xs.call(w, Op.WATCH, "/w", "t") == ok(Op.WATCH)
    assert xs.take_events(w) == [("/w", "t")]
    xs.write(c, "/w/a/b", "1")
    xs.write(c, "/wx", "1")  # not a child of /w
    xs.call(c, Op.SET_PERMS, "/w/a", "n0")
    assert xs.take_events(w) == [("/w/a/b", "t"), ("/w/a", "t")]
    xs.call(c, Op.RM, "/w")
    assert xs.take_events(w) == [("/w", "t")]
    assert xs.call(w, Op.WATCH, "/w", "t") == err("EEXIST")
    assert xs.call(w, Op.UNWATCH, "/w", "t") == ok(Op.UNWATCH)
    assert xs.call(w, Op.UNWATCH, "/w", "t") == err("ENOENT")


def test_watch_below_removed_node_fires_exactly(xs: Harness) -> None:
    w, c = xs.conn(), xs.conn()
    xs.write(c, "/p/q/r", "1")
    xs.call(w, Op.WATCH, "/p/q/r", "deep")
    xs.take_events(w)
    xs.call(c, Op.RM, "/p")
    assert xs.take_events(w) == [("/p/q/r", "deep")]


def test_relative_watch_reports_relative_paths(xs: Harness) -> None:
    w = xs.conn()
    xs.call(w, Op.WATCH, "dev", "rel")
    assert xs.take_events(w) == [("dev", "rel")]
    xs.write(w, "/local/domain/0/dev/vbd", "1")
    assert xs.take_events(w) == [("dev/vbd", "rel")]


def test_unprivileged_watch_needs_read(xs: Harness) -> None:
    dom0 = xs.conn()
    d5 = xs.domu(5)
    xs.call(d5, Op.WATCH, "/hidden", "t")
    xs.take_events(d5)
    xs.write(dom0, "/hidden/x", "1")
    assert xs.take_events(d5) == []


def test_special_watches(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.call(dom0, Op.WATCH, "@introduceDomain", "i")
    xs.call(dom0, Op.WATCH, "@releaseDomain", "r")
    assert xs.take_events(dom0) == [("@introduceDomain", "i"), ("@releaseDomain", "r")]
    d5 = xs.domu(5)
    assert xs.take_events(dom0) == [("@introduceDomain", "i")]
    xs.call(d5, Op.WATCH, "@releaseDomain", "mine")
    xs.take_events(d5)
    xs.domu(6)
    assert xs.call(dom0, Op.IS_DOMAIN_INTRODUCED, "6") == (Op.IS_DOMAIN_INTRODUCED, "T")
    assert xs.call(dom0, Op.RELEASE, "6") == ok(Op.RELEASE)
    assert xs.call(dom0, Op.IS_DOMAIN_INTRODUCED, "6") == (Op.IS_DOMAIN_INTRODUCED, "F")
    assert ("@releaseDomain", "r") in xs.take_events(dom0)
    assert xs.take_events(d5) == []  # no permission on @releaseDomain
    assert xs.call(d5, Op.SET_PERMS, "@releaseDomain", "n0", "r5") == err("EACCES")
    assert xs.call(dom0, Op.SET_PERMS, "@releaseDomain", "n0", "r5") == ok(Op.SET_PERMS)
    assert xs.call(dom0, Op.SET_PERMS, "@other", "n0") == err("EINVAL")
    xs.domu(7)
    xs.call(dom0, Op.RELEASE, "7")
    assert xs.take_events(d5) == [("@releaseDomain", "mine")]
    assert xs.call(dom0, Op.RELEASE, "7") == err("ENOENT")
    assert xs.call(dom0, Op.RELEASE, "0") == err("EINVAL")


def test_release_removes_domain_owned_nodes(xs: Harness) -> None:
    dom0 = xs.conn()
    xs.write(dom0, "/local/domain/8/name", "guest")
    xs.call(dom0, Op.SET_PERMS, "/local/domain/8", "n8")
    xs.write(dom0, "/kept", "1")
    xs.domu(8)
    xs.call(dom0, Op.RELEASE, "8")
    assert xs.call(dom0, Op.READ, "/local/domain/8/name") == err("ENOENT")
    assert xs.call(dom0, Op.READ, "/local/domain") == (Op.READ, "")
    assert xs.call(dom0, Op.READ, "/kept") == (Op.READ, "1")


def test_reset_watches(xs: Harness) -> None:
    c = xs.conn()
    xs.call(c, Op.WATCH, "/a", "t")
    xs.call(c, Op.TRANSACTION_START, "")
    assert xs.call(c, Op.RESET_WATCHES) == ok(Op.RESET_WATCHES)
    assert xs.call(c, Op.UNWATCH, "/a", "t") == err("ENOENT")
    assert xs.call(c, Op.READ, "/tool", tx=1) == err("ENOENT")


# --- quotas --------------------------------------------------------------------------------

def _own_dir(xs: Harness, domid: int) -> None:
    dom0 = xs.conn()
    xs.call(dom0, Op.MKDIR, f"/local/domain/{domid}")
    xs.call(dom0, Op.SET_PERMS, f"/local/domain/{domid}", f"n{domid}")


def test_quota_nodes_per_domain(xs: Harness) -> None:
    _own_dir(xs, 5)  # owns 1 node; quota 20
    d5 = xs.domu(5)
    results = [xs.write(d5, f"n{i}", "") for i in range(25)]
    assert results[:19] == [ok(Op.WRITE)] * 19
    assert results[19:] == [err("ENOSPC")] * 6
    dom0 = xs.conn()
    assert xs.write(dom0, "/local/domain/5/by-dom0", "") == ok(Op.WRITE)  # dom0 is exempt


def test_quota_entry_size(xs: Harness) -> None:
    _own_dir(xs, 5)
    d5 = xs.domu(5)
    # 24 header + 8 per permission + value: the entry_size limit is 200
    assert xs.write(d5, "small", "x" * (200 - 24 - 8 - 1)) == ok(Op.WRITE)
    assert xs.write(d5, "big", "x" * (200 - 24 - 8)) == err("ENOSPC")
    assert xs.write(xs.conn(), "/local/domain/5/dom0big", "x" * 1000) == ok(Op.WRITE)


def test_quota_watches_transactions_perms(xs: Harness) -> None:
    _own_dir(xs, 5)
    d5 = xs.domu(5)
    assert [xs.call(d5, Op.WATCH, f"w{i}", "t")[0] for i in range(4)] == [
        Op.WATCH, Op.WATCH, Op.WATCH, Op.ERROR]
    assert xs.call(d5, Op.WATCH, "w9", "t") == err("E2BIG")
    assert [xs.call(d5, Op.TRANSACTION_START, "")[0] for i in range(3)] == [
        Op.TRANSACTION_START, Op.TRANSACTION_START, Op.ERROR]
    assert xs.call(d5, Op.TRANSACTION_START, "") == err("ENOSPC")
    xs.write(d5, "p", "")
    assert xs.call(d5, Op.SET_PERMS, "p", "n5", "r1", "r2", "r3") == err("ENOSPC")
    assert xs.call(d5, Op.SET_PERMS, "p", "n5", "r1", "r2") == ok(Op.SET_PERMS)


def test_quota_nodes_in_transaction(xs: Harness) -> None:
    _own_dir(xs, 5)
    d5 = xs.domu(5)
    xs.call(d5, Op.TRANSACTION_START, "")
    for i in range(30):
        if xs.write(d5, f"t{i}", "", tx=1) != ok(Op.WRITE):
            break
    assert xs.call(d5, Op.TRANSACTION_END, "T", tx=1)[0] == Op.ERROR


def test_reply_over_payload_max_is_e2big(xs: Harness) -> None:
    c = xs.conn()
    for i in range(300):
        xs.write(c, f"/big/child-with-a-long-name-{i:04}", "")
    assert xs.call(c, Op.DIRECTORY, "/big") == err("E2BIG")
    # DIRECTORY_PART pages through it
    names: list[bytes] = []
    offset = 0
    while True:
        payload = xs.raw(c, Op.DIRECTORY_PART, f"/big\0{offset}\0".encode()).payload
        gen, _, rest = payload.partition(b"\0")
        assert len(payload) <= 4096 and gen.isdigit()
        if rest == b"\0":
            break
        chunk = rest[:-1] if rest.endswith(b"\0\0") else rest
        parts = chunk.split(b"\0")[:-1]
        names += parts
        offset += len(chunk)
        if rest.endswith(b"\0\0"):
            break
    assert len(names) == 300 and names[0] == b"child-with-a-long-name-0000"
