"""Shared test settings."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# These machines are noisy: no per-example deadline anywhere.
settings.register_profile(
    "pvhvm", deadline=None, suppress_health_check=[HealthCheck.too_slow],
    max_examples=int(os.environ.get("PVHVM_HYPOTHESIS_EXAMPLES", "200")),
)
settings.load_profile("pvhvm")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite golden files")
