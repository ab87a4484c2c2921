"""Regression tests of issue 10 for the library: inputs that used to give silently wrong results
now raise (naming the leaf or the value, at trace time where possible), warn, or are documented
and exact.

The training command's cases are in tests/test_experiments_reliability.py and
tests/test_fault_injection.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ggr_jax as gj

pytestmark = pytest.mark.standard_dtype_promotion  # the reset tests go through optax

P = {"a": jnp.ones((100, 100)), "b": jnp.ones((10, 10))}


def _counts(densities, params):
    return {k: round(float(densities[k]) * params[k].size) for k in params}


def test_infeasible_dense_first_under_jit_keeps_the_exact_total():
    """Issue 10 item 4: under jit 0.99 gave 9999 active weights for a target of 101."""
    with pytest.raises(ValueError, match="fewer than the 10000 of the layers kept dense"):
        gj.uniform_densities(P, 0.99, dense_first=True)
    counts = _counts(jax.jit(lambda s: gj.uniform_densities(P, s, dense_first=True))(0.99), P)
    assert counts == {"a": 101, "b": 0}
    # Feasible: the traced path equals the concrete one.
    traced = jax.jit(lambda s: gj.uniform_densities(P, s, dense_first=True))(0.005)
    assert _counts(traced, P) == _counts(gj.uniform_densities(P, 0.005, dense_first=True), P)
    assert _counts(traced, P) == {"a": 10000, "b": 50}


@pytest.mark.parametrize("power_scale", [float("nan"), float("inf"), -float("inf")])
def test_erk_rejects_a_non_finite_power_scale(power_scale):
    with pytest.raises(ValueError, match="power_scale must be a finite Python number"):
        gj.erk_densities(P, 0.5, power_scale=power_scale)


def test_erk_rejects_a_traced_power_scale():
    with pytest.raises(ValueError, match="power_scale must be a finite Python number"):
        jax.jit(lambda ps: gj.erk_densities(P, 0.5, power_scale=ps))(1.0)


@pytest.mark.parametrize("fn", [gj.uniform_densities, gj.er_densities, gj.erk_densities])
def test_an_array_sparsity_is_refused(fn):
    with pytest.raises(ValueError, match=r"sparsity must be a scalar, got shape \(2,\)"):
        fn(P, jnp.array([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"sparsity must be a scalar, got shape \(2,\)"):
        jax.jit(lambda s: fn(P, s))(jnp.array([0.5, 0.6]))


def test_zero_size_leaves_give_no_nan():
    params = {"empty": jnp.ones((0, 10)), "w": jnp.ones((10, 10))}
    assert gj.sparsifiable(params) == {"empty": False, "w": True}
    for fn in (gj.uniform_densities, gj.er_densities, gj.erk_densities):
        assert fn(params, 0.5)["empty"] is None
        forced = fn(params, 0.5, spec={"empty": True, "w": True})
        assert float(forced["empty"]) == 1.0 and float(forced["w"]) == 0.5
        traced = jax.jit(lambda s, fn=fn: fn(params, s, spec={"empty": True, "w": True}))(0.5)
        assert float(traced["empty"]) == 1.0 and float(traced["w"]) == 0.5
    masks = {"empty": jnp.zeros((0, 10), bool), "w": jnp.ones((10, 10), bool)}
    assert float(gj.mask_densities(masks)["empty"]) == 1.0
    assert float(jax.jit(gj.mask_densities)(masks)["empty"]) == 1.0


def test_reset_optimizer_state_checks_the_masks():
    tx = optax.adam(1e-3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    ok = {"w": jnp.ones(3, bool)}
    with pytest.raises(
        ValueError, match=r"new_masks leaf 'w' has shape \(4,\), masks' leaf has \(3,\)"
    ):
        gj.reset_optimizer_state(tx, state, ok, {"w": jnp.ones(4, bool)})
    with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not match .* \(3,\)"):
        gj.reset_optimizer_state(tx, state, {"w": jnp.ones(4, bool)}, {"w": jnp.ones(4, bool)})
    with pytest.raises(ValueError, match="masks leaf 'w' must be a bool array"):
        gj.reset_optimizer_state(tx, state, {"w": jnp.ones(3)}, ok)
    with pytest.raises(ValueError, match="new_masks tree structure does not match masks"):
        gj.reset_optimizer_state(tx, state, ok, {"v": jnp.ones(3, bool)})
    # At trace time too.
    with pytest.raises(ValueError, match="mask of shape"):
        jax.jit(lambda s, m: gj.reset_optimizer_state(tx, s, m, m))(state, {"w": jnp.ones(4, bool)})
    kept = gj.reset_optimizer_state(tx, state, ok, {"w": jnp.array([True, False, True])})
    assert jax.tree.structure(kept) == jax.tree.structure(state)


def test_erk_warns_when_a_leaf_gets_no_weight():
    params = {f"l{i}": jnp.ones((10, 10)) for i in range(5)}
    with pytest.warns(UserWarning, match=r"leaves \['l1', 'l2', 'l3', 'l4'\] get no active"):
        d = gj.erk_densities(params, 0.999)
    assert sum(_counts(d, params).values()) == 1  # still exact
    big = {"a": jnp.ones((2000, 2000)), "b": jnp.ones((2000, 10)), "c": jnp.ones((10, 3))}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = gj.erk_densities(big, 0.9999)  # every leaf keeps at least one weight: no warning
    assert min(_counts(d, big).values()) >= 1


def test_uniform_warns_when_a_leaf_gets_no_weight():
    with pytest.warns(UserWarning, match=r"\['b'\] get no active weights"):
        gj.uniform_densities({"a": jnp.ones((100, 100)), "b": jnp.ones((2, 2))}, 0.9999)


def test_masks_of_an_erk_init_match_its_counts():
    d = gj.erk_densities(P, 0.9)
    masks = gj.random_masks(P, d, jax.random.key(0))
    assert {k: int(m.sum()) for k, m in masks.items()} == _counts(d, P)
    assert np.isclose(float(gj.global_density(masks)), 0.1, atol=1e-4)


def _sparse_setup():
    params = {"w": jax.random.normal(jax.random.key(0), (16, 8)), "b": jnp.zeros(8)}
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.5), jax.random.key(0))
    return gj.apply_masks(params, masks), masks


def _train(tx, params, steps=8):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
        jax.block_until_ready(params)
    return params, state


@pytest.mark.parametrize(
    "after",
    [
        lambda: optax.scale_by_learning_rate(1e-2),
        lambda: optax.clip_by_global_norm(1e-3),
        lambda: optax.add_decayed_weights(0.1),
    ],
    ids=["scale_by_learning_rate", "clip_by_global_norm", "add_decayed_weights"],
)
def test_a_transform_after_dynamic_sparse_is_an_error(after):
    """Issue 10 item 2: after 8 steps 19 weights were nonzero outside get_masks(state)."""
    params, masks = _sparse_setup()
    sparse = gj.dynamic_sparse(
        optax.scale_by_adam(),
        masks,
        key=jax.random.key(1),
        method=gj.rigl(),
        update_every=2,
        end_step=10,
    )
    with pytest.raises(
        jax.errors.JaxRuntimeError, match=r"params are nonzero outside the masks \('w': \d+ weights"
    ):
        _train(optax.chain(sparse, after()), params)


def test_every_transform_inside_dynamic_sparse_keeps_params_on_the_masks():
    params, masks = _sparse_setup()
    inner = optax.chain(
        optax.clip_by_global_norm(1e-3),
        optax.scale_by_adam(),
        optax.add_decayed_weights(0.1),
        optax.scale_by_learning_rate(1e-2),
    )
    tx = gj.dynamic_sparse(
        inner, masks, key=jax.random.key(1), method=gj.rigl(), update_every=2, end_step=10
    )
    params, state = _train(tx, params)
    final = gj.get_masks(state)["w"]
    assert not bool(jnp.any((params["w"] != 0) & ~final))
    assert bool(jnp.any(final != masks["w"]))  # the topology did change


def test_dynamic_sparse_refuses_unmasked_params_at_init():
    params, masks = _sparse_setup()
    tx = gj.dynamic_sparse(
        optax.sgd(0.1), masks, key=jax.random.key(1), method=gj.rigl(), update_every=2, end_step=10
    )
    unmasked = {"w": jnp.ones((16, 8)), "b": jnp.zeros(8)}
    with pytest.raises(ValueError, match=r"\('w': 64 weights, max \|w\| 1\)"):
        tx.init(unmasked)
    tx.init(params)  # masked: fine


def test_dynamic_sparse_accepts_numpy_ints():
    params, masks = _sparse_setup()
    tx = gj.dynamic_sparse(
        optax.sgd(0.1),
        masks,
        key=jax.random.key(1),
        method=gj.rigl(),
        update_every=np.int64(2),
        end_step=np.int32(10),
    )
    _train(tx, params, steps=3)
    for bad in (True, 2.0, np.float32(2), 0):
        with pytest.raises(ValueError, match="update_every must be a positive int"):
            gj.dynamic_sparse(
                optax.sgd(0.1),
                masks,
                key=jax.random.key(1),
                method=gj.rigl(),
                update_every=bad,
                end_step=10,
            )


def test_an_array_fraction_is_refused():
    params, masks = _sparse_setup()
    grads = jax.tree.map(jnp.ones_like, params)
    fraction = jnp.array([0.1, 0.5])
    with pytest.raises(ValueError, match=r"fraction must be a scalar, got shape \(2,\)"):
        gj.redistribute(
            params, masks, grads, jax.random.key(0), method=gj.rigl(), fraction=fraction
        )
    with pytest.raises(ValueError, match=r"fraction must be a scalar, got shape \(2,\)"):
        jax.jit(
            lambda f: gj.redistribute(
                params, masks, grads, jax.random.key(0), method=gj.rigl(), fraction=f
            )
        )(fraction)
