"""Shared test configuration: hypothesis profiles and float tolerances."""
from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# CI is deterministic (same examples every run); locally examples vary between runs.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

#: Relative tolerance of an invariance check by dtype (before conditioning factors).
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}
