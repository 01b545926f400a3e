"""Shared test settings: a hypothesis profile that does not time out on a loaded 2-core machine."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "rulefinder",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("rulefinder")

# Tests are small; many threads on a shared 2-core machine only add contention.
torch.set_num_threads(int(os.environ.get("RULEFINDER_TEST_THREADS", "1")))
