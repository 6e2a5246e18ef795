"""The sync and asyncio clients against an in-process daemon."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pvhvm.xenstore.client import (
    AsyncTransaction,
    AsyncXenStoreClient,
    Transaction,
    WatchEvent,
    XenStoreClient,
    default_socket_path,
)
from pvhvm.xenstore.daemon import ThreadedDaemon
from pvhvm.xenstore.errors import (
    XenStoreConflictError,
    XenStoreConnectionError,
    XenStoreErrnoError,
)
from pvhvm.xenstore.wire import Access, Permission


def test_default_socket_path() -> None:
    assert default_socket_path({"XENSTORED_PATH": "/x/s"}) == "/x/s"
    assert default_socket_path({"XENSTORED_RUNDIR": "/run/xs"}) == "/run/xs/socket"
    assert default_socket_path({}) == "/var/run/xenstored/socket"


def test_connect_failure(short_dir: object) -> None:
    with pytest.raises(XenStoreConnectionError, match="cannot connect"):
        XenStoreClient(f"{short_dir}/nothing")


def test_node_operations(client: XenStoreClient) -> None:
    client.write("/vm/1/name", "guest")
    assert client.read("/vm/1/name") == b"guest"
    assert client.directory("/vm") == ["1"]
    assert client.exists("/vm/1") and not client.exists("/vm/2")
    client.mkdir("/vm/1/device")
    client.set_perms("/vm/1", ["n1", "r0"])
    assert client.get_perms("/vm/1") == [Permission(1, Access.NONE), Permission(0, Access.READ)]
    client.set_perms("/vm/1", [Permission(0), Permission(1, Access.BOTH)])
    assert [str(p) for p in client.get_perms("/vm/1")] == ["n0", "b1"]
    client.rm("/vm")
    assert not client.exists("/vm")
    with pytest.raises(XenStoreErrnoError) as info:
        client.read("/vm")
    assert info.value.errno_name == "ENOENT" and info.value.path == "/vm"
    assert client.get_domain_path(3) == "/local/domain/3"


def test_transaction_context_and_retry(client: XenStoreClient, daemon: ThreadedDaemon) -> None:
    with client.transaction() as t:
        t.write("/be/vbd/5/768/state", "1")
        t.set_perms("/be/vbd/5/768", ["n0", "r5"])
    assert client.read("/be/vbd/5/768/state") == b"1"
    assert [str(p) for p in client.get_perms("/be/vbd/5/768")] == ["n0", "r5"]

    with pytest.raises(RuntimeError), client.transaction() as t:
        t.write("/aborted", "1")
        raise RuntimeError("boom")
    assert not client.exists("/aborted")

    client.write("/counter", "0")
    other = XenStoreClient(daemon.socket_path)
    calls = 0

    def increment(t: Transaction) -> int:
        nonlocal calls
        calls += 1
        value = int(t.read("/counter"))
        if calls == 1:
            other.write("/counter", "10")  # a conflicting write: the first try gets EAGAIN
        t.write("/counter", str(value + 1))
        return value + 1

    assert client.run_transaction(increment) == 11
    assert calls == 2
    assert client.read("/counter") == b"11"
    other.close()

    with pytest.raises(XenStoreConflictError):
        client.run_transaction(lambda t: (t.read("/counter"), other_write()), attempts=2)


def other_write() -> None:
    raise XenStoreConflictError("EAGAIN")


def test_concurrent_increments_from_threads(daemon: ThreadedDaemon) -> None:
    with XenStoreClient(daemon.socket_path) as setup:
        setup.write("/n", "0")

    def worker() -> None:
        with XenStoreClient(daemon.socket_path) as xs:
            for _ in range(20):
                xs.run_transaction(lambda t: t.write("/n", str(int(t.read("/n")) + 1)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with XenStoreClient(daemon.socket_path) as xs:
        assert xs.read("/n") == b"80"


def test_watches(client: XenStoreClient, daemon: ThreadedDaemon) -> None:
    client.watch("/w", "tok")
    assert client.read_watch(5) == WatchEvent("/w", "tok")
    with XenStoreClient(daemon.socket_path) as other:
        other.write("/w/x", "1")
    assert client.read_watch(5) == WatchEvent("/w/x", "tok")
    client.unwatch("/w", "tok")
    assert client.read_watch(0.1) is None
    with pytest.raises(XenStoreErrnoError, match="ENOENT"):
        client.unwatch("/w", "tok")


def test_domains(client: XenStoreClient) -> None:
    client.watch("@introduceDomain", "i")
    client.watch("@releaseDomain", "r")
    assert {client.read_watch(5), client.read_watch(5)} == {
        WatchEvent("@introduceDomain", "i"), WatchEvent("@releaseDomain", "r")}
    assert not client.is_domain_introduced(9)
    client.introduce(9, 1234, 5)
    assert client.read_watch(5) == WatchEvent("@introduceDomain", "i")
    assert client.is_domain_introduced(9)
    client.resume(9)
    client.release(9)
    assert client.read_watch(5) == WatchEvent("@releaseDomain", "r")
    with pytest.raises(XenStoreErrnoError, match="ENOENT"):
        client.release(9)


def test_async_client(daemon: ThreadedDaemon) -> None:
    async def main() -> None:
        async with await AsyncXenStoreClient.connect(daemon.socket_path) as xs:
            await xs.watch("/aw", "t")
            assert await xs.read_watch(5) == WatchEvent("/aw", "t")
            await asyncio.gather(*(xs.write(f"/aw/{i}", str(i)) for i in range(20)))
            assert sorted(await xs.directory("/aw"), key=int) == [str(i) for i in range(20)]
            assert await xs.read("/aw/7") == b"7"
            async with xs.transaction() as t:
                await t.write("/aw/tx", "1")
                await t.set_perms("/aw/tx", ["n0", "r3"])
            assert [str(p) for p in await xs.get_perms("/aw/tx")] == ["n0", "r3"]

            async def bump(t: AsyncTransaction) -> None:
                await t.write("/aw/tx", str(int(await t.read("/aw/tx")) + 1))

            await xs.run_transaction(bump)
            assert await xs.read("/aw/tx") == b"2"
            assert await xs.exists("/aw/tx") and not await xs.exists("/aw/none")
            assert await xs.get_domain_path(2) == "/local/domain/2"
            await xs.introduce(4, 1, 1)
            assert await xs.is_domain_introduced(4)
            await xs.release(4)
            with pytest.raises(XenStoreErrnoError, match="ENOENT"):
                await xs.read("/missing")
            await xs.rm("/aw")
            events = []
            while (event := await xs.read_watch(0.5)) is not None:
                events.append(event)
            assert WatchEvent("/aw/7", "t") in events and WatchEvent("/aw", "t") in events

    asyncio.run(main())
