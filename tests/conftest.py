"""Shared test settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from pvhvm.guest.kit import Kit, build_kit

# These machines are noisy: no per-example deadline anywhere.
settings.register_profile(
    "pvhvm", deadline=None, suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("PVHVM_HYPOTHESIS_EXAMPLES", "200")),
)
settings.load_profile("pvhvm")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite golden files")


def kit_directory() -> Path:
    """Where tests keep the guest image kit: $PVHVM_IMAGE_DIR or ~/.cache/pvhvm/image."""
    configured = os.environ.get("PVHVM_IMAGE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "pvhvm" / "image"


@pytest.fixture(scope="session")
def kit() -> Kit:
    """The guest image kit, built once (a lock file serialises xdist workers' builds)."""
    return build_kit(kit_directory())
