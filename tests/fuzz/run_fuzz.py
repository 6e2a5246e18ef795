"""Run the fuzz targets of harness.py for a while and print the figures.

    .venv/bin/python -m tests.fuzz.run_fuzz [--seconds 60] [--target disk ...] [--random]

For each target: inputs run, inputs per second, and each distinct finding (first
occurrence, with the input that caused it). Exit status 1 if there was any finding.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz.harness import RANDOM_INPUTS, TARGETS


class _Enough(Exception):
    """Time is up for this target."""


def fuzz(name: str, seconds: float) -> tuple[int, dict[str, str]]:
    target, strategy = TARGETS[name]
    findings: dict[str, str] = {}
    count = 0
    stop = time.monotonic() + seconds

    @settings(max_examples=10**9, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value: Any) -> None:
        nonlocal count
        if time.monotonic() > stop:
            raise _Enough
        count += 1
        finding = target(value)
        if finding is not None:
            findings.setdefault(finding[:60], f"{finding} <- {value!r}"[:400])

    try:
        run()
    except _Enough:
        pass
    return count, findings


def fuzz_random(name: str, seconds: float, seed: int) -> tuple[int, dict[str, str]]:
    """The same target on plain random inputs (no hypothesis): many more per second."""
    target = TARGETS[name][0]
    make = RANDOM_INPUTS[name]
    rng = random.Random(seed)
    findings: dict[str, str] = {}
    count = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for _ in range(100):
            value = make(rng)
            count += 1
            finding = target(value)
            if finding is not None:
                findings.setdefault(finding[:60], f"{finding} <- {value!r}"[:400])
    return count, findings


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    parser.add_argument("--random", action="store_true",
                        help="plain random inputs instead of hypothesis (faster)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    found = False
    print(f"{'target':>24} {'inputs':>9} {'per s':>7} findings")
    for name in args.target or list(TARGETS):
        started = time.monotonic()
        count, findings = (fuzz_random(name, args.seconds, args.seed) if args.random
                           else fuzz(name, args.seconds))
        rate = count / (time.monotonic() - started)
        print(f"{name:>24} {count:>9} {rate:>7.0f} {len(findings)}", flush=True)
        for text in findings.values():
            print(f"{'':>26}- {text}")
        found = found or bool(findings)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
