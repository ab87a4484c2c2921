"""reset_optimizer_state for the optimizers of conftest.OPTIMIZERS, and gradient accumulation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import ggr_jax as gj

pytestmark = pytest.mark.standard_dtype_promotion  # optax's adam & co. are not strict-clean

# Distinct shapes, so that every params-shaped leaf of any optimizer state can be told apart by
# its shape alone (independently of how the library finds them).
SHAPES = {"w": (5, 4), "v": (3, 2, 4), "b": (4,)}


def setup(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}
    masks = {
        "w": jnp.asarray(rng.random(SHAPES["w"]) < 0.5),
        "v": jnp.asarray(rng.random(SHAPES["v"]) < 0.5),
        "b": None,
    }
    new_masks = {
        "w": jnp.asarray(rng.random(SHAPES["w"]) < 0.5),
        "v": jnp.asarray(rng.random(SHAPES["v"]) < 0.5),
        "b": None,
    }
    return params, masks, new_masks


def dense_steps(tx, params, n=3, seed=1):
    """A state whose moments are non-zero everywhere (dense, unmasked steps)."""
    state = tx.init(params)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        _, state = tx.update(grads, state, params)
    return state


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_reset_zeroes_pruned_and_regrown_state(optimizer, dtype):
    params, masks, new_masks = setup(dtype)
    state = dense_steps(optimizer, params)
    keep = {k: masks[k] & new_masks[k] for k in ("w", "v")}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def reset(pred, state, masks, new_masks):
        # inside lax.cond: any change of structure, dtype or weak type fails to trace
        return lax.cond(
            pred,
            lambda s: gj.reset_optimizer_state(optimizer, s, masks, new_masks),
            lambda s: s,
            state,
        )

    new_state = reset(True, state, masks, new_masks)
    same = reset(False, state, masks, new_masks)  # second call: no retrace
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    params_shaped = 0
    reset_something = set()
    for old, new, unchanged in zip(
        jax.tree.leaves(state), jax.tree.leaves(new_state), jax.tree.leaves(same), strict=True
    ):
        assert new.dtype == old.dtype and new.shape == old.shape
        np.testing.assert_array_equal(
            np.asarray(unchanged, np.float32), np.asarray(old, np.float32)
        )
        name = next((k for k in ("w", "v") if old.shape == SHAPES[k]), None)
        old32, new32 = np.asarray(old, np.float32), np.asarray(new, np.float32)
        if name is None:  # counts, hyperparameters, the dense bias' moments: untouched
            np.testing.assert_array_equal(new32, old32)
            continue
        params_shaped += 1
        k = np.asarray(keep[name])
        if np.any(old32[~k] != 0):
            reset_something.add(name)
        assert np.all(new32[~k] == 0)
        np.testing.assert_array_equal(new32[k], old32[k])
    assert params_shaped >= 2  # at least one per-weight state for w and v
    # there was something to reset (not in every leaf: inject_hyperparams casts b2 = 0.999 to
    # bf16 1.0 for bf16 params, so Adam's nu stays 0 there; that is optax's behaviour)
    assert reset_something == {"w", "v"}


def test_reset_accepts_init_fn_and_masked_chain():
    params, masks, new_masks = setup(jnp.float32)
    tx = optax.chain(gj.mask_gradients(), optax.adam(1e-2), gj.mask_updates())
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params, masks=masks)
    a = gj.reset_optimizer_state(tx, state, masks, new_masks)
    b = gj.reset_optimizer_state(tx.init, state, masks, new_masks)
    chex.assert_trees_all_equal(a, b)
    mu = a[1][0].mu
    np.testing.assert_array_equal(mu["w"] != 0, masks["w"] & new_masks["w"])
    assert bool((mu["b"] != 0).all())  # dense leaf untouched


# Two steps of g = -2 then 4 everywhere: mean |g| 3, mean g 1, bias-corrected EMA (decay 0.9)
# (0.9 * -0.2 + 0.4) / (1 - 0.81).
@pytest.mark.parametrize(
    "signal,want,resets",
    [("mean_abs", 3.0, True), ("mean", 1.0, True), ("ema", 0.22 / 0.19, False)],
)
def test_accumulate_gradients_and_reset(signal, want, resets):
    params, masks, _ = setup(jnp.float32)
    tx = optax.chain(
        gj.accumulate_gradients(signal),
        gj.mask_gradients(),
        optax.sgd(0.1, momentum=0.9),
        gj.mask_updates(),
    )
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(grads, state):
        return tx.update(grads, state, params, masks=masks)

    g1 = jax.tree.map(lambda p: jnp.full(p.shape, -2.0), params)
    g2 = jax.tree.map(lambda p: jnp.full(p.shape, 4.0), params)
    updates, state = step(g1, state)
    updates, state = step(g2, state)
    # the accumulator sees the gradients before masking
    acc = gj.accumulated_gradients(state)
    for k in params:
        np.testing.assert_allclose(acc[k], np.full(SHAPES[k], want, np.float32), rtol=1e-6)
        assert acc[k].dtype == jnp.float32
    # the updates are masked
    np.testing.assert_array_equal(updates["w"] != 0, masks["w"])
    new_masks = {"w": ~masks["w"], "v": masks["v"], "b": None}
    state = gj.reset_optimizer_state(tx, state, masks, new_masks)
    after = gj.accumulated_gradients(state)
    if resets:  # the interval means start afresh
        assert int(optax.tree_utils.tree_get(state, "grad_count")) == 0
        assert all(bool((a == 0).all()) for a in jax.tree.leaves(after))
    else:  # the EMA runs on
        chex.assert_trees_all_equal(after, acc)
    # momentum: w has no weight active in both masks, v keeps all of its own
    trace = optax.tree_utils.tree_get(state, "trace")
    assert not bool(trace["w"].any())
    np.testing.assert_array_equal(trace["v"] != 0, masks["v"])


def test_accumulate_gradients_rejects_bad_options():
    with pytest.raises(ValueError, match="signal must be"):
        gj.accumulate_gradients("accumulated")
    with pytest.raises(ValueError, match="decay must lie in"):
        gj.accumulate_gradients("ema", decay=1.0)


def test_accumulated_gradients_needs_the_accumulator():
    params, _, _ = setup(jnp.float32)
    with pytest.raises(ValueError, match="no accumulate_gradients"):
        gj.accumulated_gradients(optax.adam(1e-3).init(params))
