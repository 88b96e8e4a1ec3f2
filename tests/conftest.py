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


def _train_steps(model, x, y, steps=40, lr=1e-2, loss=None):
    """AdamW on one fixed batch for ``steps`` steps; returns the loss after each.

    The models' "loss falls on a fixed batch" tests share it. ``loss(model)``
    defaults to the cross-entropy of ``model(x)`` against ``y``."""
    import minivit
    from minivit import functional as F, optim
    xt = x if isinstance(x, minivit.Tensor) else minivit.tensor(x)
    loss = loss or (lambda m: F.cross_entropy(m(xt), y))
    opt = optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        value = loss(model)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(float(value.data))
    return losses


@pytest.fixture
def train_steps():
    """The shared training loop of the "loss falls" tests (see _train_steps)."""
    return _train_steps
