"""Property test: random operation sequences leave the daemon's tree equal to a model's."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from xs_harness import Harness

from pvhvm.xenstore.tree import child_path, parent_of
from pvhvm.xenstore.wire import Op

Result = str  # "OK" or an errno name


@dataclass
class ModelNode:
    value: bytes = b""
    perms: tuple[str, ...] = ("n0",)
    children: list[str] = field(default_factory=list)


class Model:
    """The simplest tree that has xenstored's semantics for a privileged client."""

    def __init__(self) -> None:
        self.nodes: dict[str, ModelNode] = {
            "/": ModelNode(children=["tool"]), "/tool": ModelNode(children=["xenstored"]),
            "/tool/xenstored": ModelNode()}

    def _create(self, path: str, value: bytes) -> None:
        parent = parent_of(path)
        if parent not in self.nodes:
            self._create(parent, b"")
        self.nodes[parent].children.append(path.rsplit("/", 1)[1])
        self.nodes[path] = ModelNode(value, self.nodes[parent].perms)

    def write(self, path: str, value: bytes) -> Result:
        if path in self.nodes:
            self.nodes[path].value = value
        else:
            self._create(path, value)
        return "OK"

    def mkdir(self, path: str) -> Result:
        if path not in self.nodes:
            self._create(path, b"")
        return "OK"

    def rm(self, path: str) -> Result:
        if path not in self.nodes:
            return "OK" if parent_of(path) in self.nodes else "ENOENT"
        stack = [path]
        while stack:
            current = stack.pop()
            stack.extend(child_path(current, c) for c in self.nodes.pop(current).children)
        self.nodes[parent_of(path)].children.remove(path.rsplit("/", 1)[1])
        return "OK"

    def set_perms(self, path: str, perms: tuple[str, ...]) -> Result:
        if path not in self.nodes:
            return "ENOENT"
        self.nodes[path].perms = perms
        return "OK"

    def read(self, path: str) -> Result:
        return "OK" if path in self.nodes else "ENOENT"


paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))
values = st.binary(max_size=8)
perm_lists = st.lists(st.sampled_from(["n0", "r1", "w2", "b3", "n4"]), min_size=1,
                      max_size=3).map(tuple)
simple_ops = st.one_of(
    st.tuples(st.just("write"), paths, values),
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("rm"), paths),
    st.tuples(st.just("set_perms"), paths, perm_lists),
    st.tuples(st.just("read"), paths),
)
operations = st.one_of(
    simple_ops,
    st.tuples(st.just("tx"), st.lists(simple_ops, max_size=6), st.booleans()),
)


def apply_daemon(xs: Harness, conn: object, op: tuple[object, ...], tx: int = 0) -> Result:
    kind, path = op[0], str(op[1])
    if kind == "write":
        assert isinstance(op[2], bytes)
        packet = xs.raw(conn, Op.WRITE, path.encode() + b"\0" + op[2], tx)  # type: ignore[arg-type]
    elif kind == "set_perms":
        assert isinstance(op[2], tuple)
        payload = b"".join(s.encode() + b"\0" for s in (path, *op[2]))
        packet = xs.raw(conn, Op.SET_PERMS, payload, tx)  # type: ignore[arg-type]
    else:
        op_code = {"mkdir": Op.MKDIR, "rm": Op.RM, "read": Op.READ}[str(kind)]
        packet = xs.raw(conn, op_code, path.encode() + b"\0", tx)  # type: ignore[arg-type]
    if packet.op == Op.ERROR:
        return packet.payload.rstrip(b"\0").decode()
    return "OK"


def apply_model(model: Model, op: tuple[object, ...]) -> Result:
    kind, path = op[0], str(op[1])
    if kind == "write":
        assert isinstance(op[2], bytes)
        return model.write(path, op[2])
    if kind == "set_perms":
        assert isinstance(op[2], tuple)
        return model.set_perms(path, op[2])
    return {"mkdir": model.mkdir, "rm": model.rm, "read": model.read}[str(kind)](path)


def snapshot(xs: Harness) -> dict[str, tuple[bytes, tuple[str, ...], list[str]]]:
    return {path: (node.value, tuple(str(p) for p in node.perms), list(node.children))
            for path, node in xs.store.tree.nodes.items()}


def model_snapshot(model: Model) -> dict[str, tuple[bytes, tuple[str, ...], list[str]]]:
    return {path: (n.value, n.perms, list(n.children)) for path, n in model.nodes.items()}


@settings(max_examples=150)
@given(st.lists(operations, max_size=25))
def test_random_operations_match_model(ops: list[tuple[object, ...]]) -> None:
    xs = Harness()
    conn = xs.conn()
    model = Model()
    for op in ops:
        if op[0] == "tx":
            body, commit = op[1], op[2]
            assert isinstance(body, list)
            tx = int(xs.call(conn, Op.TRANSACTION_START, "")[1])
            shadow = copy.deepcopy(model)
            for inner in body:
                assert apply_daemon(xs, conn, inner, tx) == apply_model(shadow, inner), inner
            end = xs.call(conn, Op.TRANSACTION_END, "T" if commit else "F", tx=tx)
            assert end == (Op.TRANSACTION_END, "OK")
            if commit:
                model = shadow
        else:
            assert apply_daemon(xs, conn, op) == apply_model(model, op), op
        assert snapshot(xs) == model_snapshot(model)
    # entry accounting stays consistent with ownership
    owners: dict[int, int] = {}
    for node in xs.store.tree.nodes.values():
        owners[node.owner] = owners.get(node.owner, 0) + 1
    for domid, count in owners.items():
        if domid != 0:
            domain = xs.store.domains.find(domid)
            assert domain is not None and domain.nbentry == count
