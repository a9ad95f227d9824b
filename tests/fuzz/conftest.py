"""Hypothesis profiles for the fuzz targets in this folder.

The normal test suite runs each target briefly ("short", the default: few,
derandomized examples, so a run is repeatable). `make fuzz` selects "fuzz"
(HYPOTHESIS_PROFILE=fuzz): each target then runs again and again with fresh
random examples until FUZZ_SECONDS (default 600) have passed. Every crash a
long run finds is kept in its target as an explicit @example.
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "short",
    max_examples=150,
    derandomize=True,
    deadline=None,  # a loaded CI machine must not turn slowness into a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=1_000,  # per round; rounds repeat until FUZZ_SECONDS are over
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "short")
settings.load_profile(PROFILE)
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "600"))


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Under the fuzz profile, repeat a Hypothesis test (each call draws new
    examples) until its time is up: a time bound Hypothesis has no setting for."""
    test = pyfuncitem.obj
    if PROFILE != "fuzz" or not getattr(test, "is_hypothesis_test", False):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = 0
    while True:
        test(**args)
        rounds += 1
        if time.monotonic() >= deadline:
            break
    print(f"{pyfuncitem.nodeid}: {rounds} rounds in {FUZZ_SECONDS:.0f}s")
    return True
