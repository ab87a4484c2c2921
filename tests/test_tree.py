"""The sparsifiable spec, leaf paths, and input validation at every public entry point.

Each bad input must raise ``ValueError`` naming the leaf path (where there is one) and the value.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ggr_jax as gj


def linen_like():
    """A Flax-Linen-shaped params dict: kernels sparsified, biases and norm scales dense."""
    return {
        "params": {
            "Conv_0": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)},
            "Dense_0": {"kernel": jnp.ones((8, 5)), "bias": jnp.zeros(5)},
            "LayerNorm_0": {"scale": jnp.ones(5)},
        }
    }


def test_sparsifiable_default_is_ndim_at_least_two():
    spec = gj.sparsifiable(linen_like())
    assert spec == {
        "params": {
            "Conv_0": {"kernel": True, "bias": False},
            "Dense_0": {"kernel": True, "bias": False},
            "LayerNorm_0": {"scale": False},
        }
    }


def test_sparsifiable_min_ndim_include_exclude():
    p = linen_like()
    assert gj.sparsifiable(p, min_ndim=3)["params"]["Dense_0"]["kernel"] is False
    assert gj.sparsifiable(p, min_ndim=3)["params"]["Conv_0"]["kernel"] is True
    only_dense = gj.sparsifiable(p, include=r"Dense_\d+/kernel")
    assert only_dense["params"]["Dense_0"]["kernel"] is True
    assert only_dense["params"]["Conv_0"]["kernel"] is False
    no_conv = gj.sparsifiable(p, exclude="Conv")
    assert no_conv["params"]["Conv_0"]["kernel"] is False
    assert no_conv["params"]["Dense_0"]["kernel"] is True
    # include still requires ndim >= min_ndim: a bias matched by the regex stays dense
    assert gj.sparsifiable(p, include="bias")["params"]["Dense_0"]["bias"] is False


def test_sparsifiable_keeps_none_and_sequences():
    p = [jnp.ones((2, 3)), None, (jnp.ones(3), jnp.ones((3, 3, 3)))]
    assert gj.sparsifiable(p) == [True, None, (False, True)]


def test_sparsifiable_spec_drives_densities():
    p = linen_like()
    spec = gj.sparsifiable(p, exclude="Conv")
    d = gj.uniform_densities(p, 0.5, spec=spec)
    assert d["params"]["Conv_0"]["kernel"] is None
    assert float(d["params"]["Dense_0"]["kernel"]) == 0.5


# --- bad inputs: ValueError naming leaf path and value ---------------------------------------


def small():
    params = {"enc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    masks = {"enc": {"kernel": jnp.ones((4, 3), bool), "bias": None}}
    return params, masks


def grads_like(params):
    return jax.tree.map(jnp.ones_like, params)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("fn", [gj.uniform_densities, gj.er_densities, gj.erk_densities])
def test_sparsity_outside_unit_interval(fn, sparsity):
    params, _ = small()
    with pytest.raises(ValueError, match=re.escape(f"sparsity must lie in [0, 1), got {sparsity}")):
        fn(params, sparsity)


@pytest.mark.parametrize("density", [1.5, -0.25])
def test_custom_density_out_of_range(density):
    params, _ = small()
    with pytest.raises(
        ValueError, match=re.escape(f"'enc/kernel' must lie in [0, 1], got {density}")
    ):
        gj.custom_densities(params, {"kernel": density})


def test_custom_density_missing():
    params, _ = small()
    with pytest.raises(ValueError, match=re.escape("'enc/kernel'")):
        gj.custom_densities(params, {"decoder": 0.5})


@pytest.mark.parametrize("density", [1.5, -0.25])
def test_random_masks_density_out_of_range(density, getkey):
    params, _ = small()
    densities = {"enc": {"kernel": density, "bias": None}}
    with pytest.raises(
        ValueError, match=re.escape(f"'enc/kernel' must lie in [0, 1], got {density}")
    ):
        gj.random_masks(params, densities, getkey())


def test_random_masks_count_out_of_range(getkey):
    params, _ = small()
    densities = {"enc": {"kernel": 13, "bias": None}}
    with pytest.raises(ValueError, match=re.escape("'enc/kernel' must lie in [0, 12], got 13")):
        gj.random_masks(params, densities, getkey())


def test_random_masks_densities_tree_mismatch(getkey):
    params, _ = small()
    with pytest.raises(ValueError, match="densities tree structure does not match params"):
        gj.random_masks(params, {"enc": {"kernel": 0.5}}, getkey())


def bad_masks():
    """(description, masks, regex the message must match) for params of :func:`small`."""
    k = jnp.ones((4, 3), bool)
    return [
        ("missing leaf", {"enc": {"kernel": k}}, r"masks tree structure does not match params"),
        (
            "extra leaf",
            {"enc": {"kernel": k, "bias": None, "scale": None}},
            r"masks tree structure does not match params",
        ),
        (
            "float mask",
            {"enc": {"kernel": jnp.ones((4, 3)), "bias": None}},
            r"masks leaf 'enc/kernel' must be a bool array, got dtype float32",
        ),
        (
            "int mask",
            {"enc": {"kernel": jnp.ones((4, 3), jnp.int32), "bias": None}},
            r"masks leaf 'enc/kernel' must be a bool array, got dtype int32",
        ),
        # a Python bool has no dtype; under jit it becomes a bool scalar of the wrong shape
        (
            "python bool",
            {"enc": {"kernel": True, "bias": None}},
            r"masks leaf 'enc/kernel' (must be a bool array, got dtype None|has shape \(\), param)",
        ),
        (
            "transposed",
            {"enc": {"kernel": jnp.ones((3, 4), bool), "bias": None}},
            re.escape("masks leaf 'enc/kernel' has shape (3, 4), param has (4, 3)"),
        ),
    ]


@pytest.mark.parametrize(
    "masks,message", [b[1:] for b in bad_masks()], ids=[b[0] for b in bad_masks()]
)
def test_bad_masks_everywhere(masks, message, getkey):
    params, _ = small()
    with pytest.raises(ValueError, match=message):
        gj.apply_masks(params, masks)
    with pytest.raises(ValueError, match=message):
        gj.redistribute(params, masks, grads_like(params), getkey(), method=gj.rigl(), fraction=0.3)
    with pytest.raises(ValueError, match=message):
        jax.jit(gj.redistribute, static_argnames="method")(
            params, masks, grads_like(params), getkey(), method=gj.ggr(), fraction=0.3
        )
    tx = gj.dynamic_sparse(
        optax.sgd(0.1), masks, key=getkey(), method=gj.ggr(), update_every=2, end_step=10
    )
    with pytest.raises(ValueError, match=message):
        tx.init(params)


@pytest.mark.parametrize("fraction", [1.5, -0.5, float("inf")])
def test_fraction_outside_unit_interval(fraction, getkey):
    params, masks = small()
    with pytest.raises(ValueError, match=re.escape(f"fraction must lie in [0, 1], got {fraction}")):
        gj.redistribute(
            params, masks, grads_like(params), getkey(), method=gj.rigl(), fraction=fraction
        )


@pytest.mark.parametrize("fraction", [1.5, -0.5])
def test_drop_fraction_outside_unit_interval(fraction, getkey):
    _, masks = small()
    with pytest.raises(
        ValueError, match=re.escape(f"drop_fraction must lie in [0, 1], got {fraction}")
    ):
        gj.dynamic_sparse(
            optax.sgd(0.1),
            masks,
            key=getkey(),
            method=gj.rigl(),
            update_every=2,
            end_step=10,
            drop_fraction=fraction,
        )


def test_grads_and_momentum_shape_mismatch(getkey):
    params, masks = small()
    grads = {"enc": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(3)}}
    with pytest.raises(
        ValueError, match=re.escape("grads leaf 'enc/kernel' has shape (3, 4), param has (4, 3)")
    ):
        gj.redistribute(params, masks, grads, getkey(), method=gj.rigl(), fraction=0.3)
    with pytest.raises(ValueError, match=re.escape("momentum leaf 'enc/kernel' has shape (3, 4)")):
        gj.redistribute(
            params,
            masks,
            grads_like(params),
            getkey(),
            method=gj.snfs(),
            fraction=0.3,
            momentum=grads,
        )
    with pytest.raises(ValueError, match="grads tree structure does not match params"):
        gj.redistribute(
            params,
            masks,
            {"enc": {"kernel": jnp.ones((4, 3))}},
            getkey(),
            method=gj.rigl(),
            fraction=0.3,
        )


def test_bad_method_config(getkey):
    params, masks = small()
    g = grads_like(params)
    with pytest.raises(ValueError, match=re.escape("method.rho must lie in [0, 1], got 1.5")):
        gj.redistribute(params, masks, g, getkey(), method=gj.ggr(rho=1.5), fraction=0.3)
    with pytest.raises(ValueError, match="method.normalize must be one of .* got 'l1'"):
        gj.redistribute(params, masks, g, getkey(), method=gj.ggr(normalize="l1"), fraction=0.3)
    with pytest.raises(ValueError, match="method.allocate must be one of .* got 'global'"):
        gj.redistribute(
            params, masks, g, getkey(), method=gj.Method("x", allocate="global"), fraction=0.3
        )
    with pytest.raises(ValueError, match="method must be a ggr_jax.Method .* got 'ggr'"):
        gj.redistribute(params, masks, g, getkey(), method="ggr", fraction=0.3)
    with pytest.raises(ValueError, match="method 'snfs' needs momentum="):
        gj.redistribute(params, masks, g, getkey(), method=gj.snfs(), fraction=0.3)
    with pytest.raises(ValueError, match="min_active for leaf 'enc/kernel' must be >= 0, got -1"):
        gj.redistribute(params, masks, g, getkey(), method=gj.rigl(), fraction=0.3, min_active=-1)
    with pytest.raises(ValueError, match="method must be a ggr_jax.Method .* got 'ggr'"):
        gj.dynamic_sparse(
            optax.sgd(0.1), masks, key=getkey(), method="ggr", update_every=2, end_step=10
        )
    with pytest.raises(ValueError, match="update_every must be a positive int, got 0"):
        gj.dynamic_sparse(
            optax.sgd(0.1), masks, key=getkey(), method=gj.ggr(), update_every=0, end_step=10
        )


def test_spec_must_hold_python_bools():
    params, _ = small()
    spec = {"enc": {"kernel": np.array([True]), "bias": False}}
    with pytest.raises(ValueError, match="spec leaf 'enc/kernel' must be a Python bool"):
        gj.uniform_densities(params, 0.5, spec=spec)
    with pytest.raises(ValueError, match="spec tree structure does not match params"):
        gj.uniform_densities(params, 0.5, spec={"enc": {"kernel": True}})
    with pytest.raises(ValueError, match="no sparsifiable leaves"):
        gj.uniform_densities(params, 0.5, spec={"enc": {"kernel": False, "bias": False}})


def test_leaf_paths_in_messages_for_lists_and_attributes(getkey):
    from typing import NamedTuple

    class Layer(NamedTuple):
        weight: jax.Array

    params = [Layer(jnp.ones((2, 2))), Layer(jnp.ones((2, 3)))]
    masks = [Layer(jnp.ones((2, 2), bool)), Layer(jnp.ones((3, 2), bool))]
    with pytest.raises(ValueError, match=re.escape("masks leaf '1/weight' has shape (3, 2)")):
        gj.apply_masks(params, masks)


def test_this_module_runs_under_strict_promotion():
    # conftest makes optax-free modules strict: an implicit f32/bf16 promotion must raise here
    # jax's TypePromotionError is a ValueError (public as jax.dtypes.TypePromotionError only in
    # recent jax; the oldest declared jax has it in jax._src)
    with pytest.raises(ValueError, match="implicit dtype promotion"):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.bfloat16)
    with pytest.raises(ValueError, match="jax_numpy_rank_promotion=.raise."):
        jnp.ones((2, 3)) + jnp.ones(3)
