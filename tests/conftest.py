"""Shared test configuration, in the style of equinox's conftest.

* Rank promotion raises everywhere: an accidental broadcast of a per-layer vector against an
  array is a bug, not a feature.
* Dtype promotion is strict for the modules that test ggr_jax's own code only. It cannot be strict
  globally: optax itself is not strict-clean (``adam``'s bias correction computes
  ``decay ** count`` with an int32 ``count``, ``inject_hyperparams`` and the schedules mix float
  and int32 too, and all of them raise ``TypePromotionError`` under strict). Modules whose tests
  go through optax set ``pytestmark = pytest.mark.standard_dtype_promotion``; their tests of
  ggr_jax code alone still enter ``jax.numpy_dtype_promotion("strict")`` locally.
* ``filterwarnings = error`` comes from pyproject.toml.

The optimizer list below is the one shared list of configurations that the optimizer-state,
transform and framework tests all push through the same battery.
"""

from __future__ import annotations

import itertools

import chex
import jax
import optax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "standard_dtype_promotion: run the module under jax's standard dtype promotion "
        "(its tests go through optax, which raises under strict promotion)",
    )


@pytest.fixture(autouse=True, scope="module")
def _dtype_promotion(request):
    # Module-scoped so that hypothesis tests (which refuse function-scoped fixtures) get it too.
    strict = request.node.get_closest_marker("standard_dtype_promotion") is None
    with jax.numpy_dtype_promotion("strict" if strict else "standard"):
        yield


@pytest.fixture(autouse=True)
def _fresh_trace_counters():
    # chex.assert_max_traces counts per function definition: parametrized tests define the same
    # function again for each case, so every test starts from zero.
    chex.clear_trace_counter()


@pytest.fixture
def getkey():
    """A function returning a fresh PRNG key on every call (deterministic per test)."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))


# The optimizers whose per-weight state must be reset for pruned and regrown weights.
OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "lion": lambda: optax.lion(1e-3),
    "inject_hyperparams_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
    "clip_then_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
}


@pytest.fixture(params=sorted(OPTIMIZERS))
def optimizer(request) -> optax.GradientTransformation:
    """Each optimizer of :data:`OPTIMIZERS`, freshly built."""
    return OPTIMIZERS[request.param]()
