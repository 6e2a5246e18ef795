"""Shared test settings."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pvhvm.guest.kit import Kit, build_kit
from pvhvm.hostfs import cache_home
from tests.hosts import NetnsHost

# These machines are noisy: no per-example deadline anywhere.
settings.register_profile(
    "pvhvm", deadline=None, suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("PVHVM_HYPOTHESIS_EXAMPLES", "200")),
)
settings.load_profile("pvhvm")

# A host supervisor stays 1 s after its last domain in the tests (10 s by default), so that
# each test's own state directory is left with no process soon after it ends.
os.environ.setdefault("PVHVM_HOSTD_LINGER", "1")

# pvhvm's tables are as wide as COLUMNS says (cli/output.py); pytest-xdist's workers are given
# COLUMNS=80 and LINES=24, a shell may export its own: every test starts without them, so the
# output a test reads is the same with or without -n and whatever the terminal (a test that is
# about COLUMNS sets it itself).
for _variable in ("COLUMNS", "LINES"):
    os.environ.pop(_variable, None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under ``-n N --dist loadgroup`` (./dev/test), a test of an ``xdist_group`` must carry
    its group in its id: that is how pytest-xdist keeps a group on one worker (one Xen host
    boot, one installed guest at a time). pytest 9.2 made xdist 3.8's renaming a no-op,
    silently; such a test fails here, saying so, instead of booting every shared fixture once
    per worker."""
    if (getattr(item.config.option, "loadgroup", False)
            and item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid):
        pytest.fail(f"pytest-xdist's --dist loadgroup does not group {item.nodeid} with pytest "
                    f"{pytest.__version__}: its xdist_group would run on every worker (see the "
                    "pytest pin in pyproject.toml)", pytrace=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite golden files")


def kit_directory() -> Path:
    """Where tests keep the guest image kit: $PVHVM_IMAGE_DIR or pvhvm's cache's ``image``
    (``$XDG_CACHE_HOME/pvhvm/image``, ``~/.cache/pvhvm/image`` by default)."""
    configured = os.environ.get("PVHVM_IMAGE_DIR")
    return Path(configured) if configured else cache_home() / "image"


@pytest.fixture(scope="session")
def kit() -> Kit:
    """The guest image kit, built once (a lock file serialises xdist workers' builds)."""
    return build_kit(kit_directory())


def _cannot_make_netns() -> str | None:
    """Why this machine cannot make a network namespace, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("nsenter"):
        return "ip (iproute2) or nsenter (util-linux) is missing: run dev/setup"
    probe = f"pvh-probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          check=False)
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None if done.returncode == 0 else f"cannot make a network namespace: {done.stderr}"


@pytest.fixture
def second_host() -> Iterator[NetnsHost]:
    """A second host: a network namespace with its own address, hostname and pvhvm state
    directory (tests/hosts.py), removed at the end whatever the test did."""
    reason = _cannot_make_netns()
    if reason:
        pytest.skip(reason)
    with NetnsHost() as host:
        yield host
