"""Fixtures for the XenStore tests: daemons in a thread or a subprocess, clients, and
Xen's own test-xenstore program."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fetch_test_xenstore import DEFAULT_CACHE, FetchError, XenTestProgram, fetch

from pvhvm.hostfs import directory_lock
from pvhvm.xenstore.client import XenStoreClient
from pvhvm.xenstore.daemon import ThreadedDaemon, run_in_thread
from pvhvm.xenstore.quota import Quota


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds only 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xs", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[ThreadedDaemon]:
    """An in-process daemon with domain sockets; stopped after the test."""
    with run_in_thread(short_dir / "socket", domain_socket_dir=short_dir / "dom",
                       quota=Quota(nodes_per_domain=50, watches_per_domain=4,
                                   transactions=2)) as handle:
        yield handle


@pytest.fixture
def client(daemon: ThreadedDaemon) -> Iterator[XenStoreClient]:
    """A dom0 client of `daemon`."""
    with XenStoreClient(daemon.socket_path, timeout=10) as xs:
        yield xs


@pytest.fixture(scope="session")
def test_xenstore(tmp_path_factory: pytest.TempPathFactory) -> XenTestProgram:
    """Xen 4.17's test-xenstore, fetched with apt-get download (skips if that fails)."""
    try:
        with directory_lock(DEFAULT_CACHE):  # xdist workers share the cache: one fetches
            return fetch()
    except FetchError as err:
        pytest.skip(f"cannot fetch test-xenstore from Debian's xen-utils-4.17: {err}")
