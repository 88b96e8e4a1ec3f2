"""Shared pytest setup.

Hypothesis profiles: ``ci`` (selected when the environment has CI=true)
derandomizes, so a CI run is repeatable; ``dev`` is the default. Neither has
a deadline: gradchecks are slow by nature and tests never assert on time.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same minivit seed."""
    import minivit
    minivit.manual_seed(0)
    np.random.seed(0)
    yield
