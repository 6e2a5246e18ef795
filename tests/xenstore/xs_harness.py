"""A socket-less harness around `server.reply` for request/expected tables."""

from __future__ import annotations

from collections import defaultdict

from pvhvm.xenstore.quota import Quota
from pvhvm.xenstore.server import Connection, Send, XenStore, reply
from pvhvm.xenstore.wire import Op, Packet, join_strings


class Harness:
    """Drive a XenStore with packets; collect replies and watch events per connection."""

    def __init__(self, quota: Quota | None = None) -> None:
        self.store = XenStore(quota)
        self.events: dict[int, list[tuple[str, str]]] = defaultdict(list)
        self.req_id = 0

    def conn(self, domid: int = 0, *, as_domain: bool = False) -> Connection:
        return self.store.connect(domid, as_domain=as_domain)

    def domu(self, domid: int) -> Connection:
        """Introduce ``domid`` and connect as it."""
        dom0 = self.conn()
        assert self.call(dom0, Op.INTRODUCE, str(domid), "0", "1") == (Op.INTRODUCE, "OK")
        self.store.disconnect(dom0)
        return self.conn(domid, as_domain=True)

    def raw(self, conn: Connection, op: int, payload: bytes, tx: int = 0) -> Packet:
        self.req_id += 1
        effects = reply(self.store, conn, Packet(op, self.req_id, tx, payload))
        response: Packet | None = None
        for effect in effects:
            if not isinstance(effect, Send):
                continue
            packet = effect.packet
            if packet.op == Op.WATCH_EVENT:
                path, token = packet.payload.split(b"\0")[:2]
                self.events[id(effect.connection)].append((path.decode(), token.decode()))
            else:
                assert effect.connection is conn
                assert packet.req_id == self.req_id and packet.tx_id == tx
                response = packet
        assert response is not None
        return response

    def call(self, conn: Connection, op: int, *args: str | bytes, tx: int = 0,
             ) -> tuple[int, str]:
        """Send ``args`` as nul-terminated strings; (reply op, first reply string)."""
        packet = self.raw(conn, op, join_strings(*args), tx)
        return packet.op, packet.payload.split(b"\0")[0].decode("latin-1")

    def write(self, conn: Connection, path: str, value: str, tx: int = 0) -> tuple[int, str]:
        packet = self.raw(conn, Op.WRITE, path.encode() + b"\0" + value.encode(), tx)
        return packet.op, packet.payload.split(b"\0")[0].decode()

    def take_events(self, conn: Connection) -> list[tuple[str, str]]:
        events = self.events.pop(id(conn), [])
        return events


def err(name: str) -> tuple[int, str]:
    return (Op.ERROR, name)


def ok(op: int) -> tuple[int, str]:
    return (op, "OK")
