"""Hypothesis profiles for the fuzz targets: "ci" (the default, a short
derandomized run for `make test`) and "fuzz" (HYPOTHESIS_PROFILE=fuzz, many
examples). Every crash a long run finds is kept as an explicit @example."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("fuzz", max_examples=20_000, deadline=None,
                          suppress_health_check=list(HealthCheck), print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
