"""Random initial masks, applying masks, and density summaries."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import ggr_jax as gj

SETTINGS = settings(max_examples=25, deadline=None)


def params_tree(dtype=jnp.float32):
    return {
        "conv": jnp.ones((3, 3, 2, 4), dtype),
        "dense": {"kernel": jnp.ones((8, 5), dtype), "bias": jnp.ones(5, dtype)},
    }


def test_random_masks_exact_counts_and_structure(getkey):
    p = params_tree()
    d = gj.erk_densities(p, 0.8)
    m = gj.random_masks(p, d, getkey())
    assert m["dense"]["bias"] is None
    assert jax.tree.structure(m, is_leaf=lambda x: x is None) == jax.tree.structure(
        d, is_leaf=lambda x: x is None
    )
    for mask, x, dens in [
        (m["conv"], p["conv"], d["conv"]),
        (m["dense"]["kernel"], p["dense"]["kernel"], d["dense"]["kernel"]),
    ]:
        assert mask.dtype == jnp.bool_ and mask.shape == x.shape
        assert int(mask.sum()) == round(float(dens) * x.size)
    assert int(m["conv"].sum()) + int(m["dense"]["kernel"].sum()) == round(0.2 * (72 + 40))


def test_random_masks_integer_counts_and_extremes(getkey):
    p = {"a": jnp.ones((4, 3)), "b": jnp.ones((2, 2)), "c": jnp.ones((3, 3))}
    m = gj.random_masks(p, {"a": 5, "b": 0, "c": 1.0}, getkey())
    assert int(m["a"].sum()) == 5
    assert not bool(m["b"].any())
    assert bool(m["c"].all())


def test_random_masks_key_dependence(getkey):
    p = {"a": jnp.ones((20, 20))}
    d = {"a": 0.5}
    k = getkey()
    m1, m2 = gj.random_masks(p, d, k), gj.random_masks(p, d, k)
    m3 = gj.random_masks(p, d, getkey())
    np.testing.assert_array_equal(m1["a"], m2["a"])
    assert bool((m1["a"] != m3["a"]).any())


def test_random_masks_positions_are_uniform():
    # 12 positions, 4 active: over 600 keys each position should be active ~1/3 of the time.
    # A kernel that prefers low (or high) indices on ties would fail this.
    p = {"a": jnp.ones((3, 4))}
    keys = jax.random.split(jax.random.key(42), 600)
    masks = jax.vmap(lambda k: gj.random_masks(p, {"a": 4}, k)["a"])(keys)
    assert bool((masks.sum(axis=(1, 2)) == 4).all())
    freq = np.asarray(masks.mean(axis=0))
    assert np.all(np.abs(freq - 1 / 3) < 0.08), freq


def test_random_masks_traced_densities_no_retrace(getkey):
    p = {"a": jnp.ones((6, 5)), "b": jnp.ones((4, 4)), "bias": jnp.ones(4)}
    key = getkey()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def draw(da, db):
        return gj.random_masks(p, {"a": da, "b": db, "bias": None}, key)

    for da, db in [(0.5, 0.25), (0.1, 1.0), (0.0, 0.0), (0.99, 0.5)]:
        m = draw(jnp.float32(da), jnp.float32(db))
        assert int(m["a"].sum()) == round(da * 30)
        assert int(m["b"].sum()) == round(db * 16)
        assert m["bias"] is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_apply_masks_zeroes_exactly_and_keeps_dtype(dtype):
    p = {
        "w": jnp.array([[1.5, -2.0], [jnp.nan, jnp.inf]], dtype),
        "b": jnp.array([3.0, -0.0], dtype),
    }
    m = {"w": jnp.array([[True, False], [False, True]]), "b": None}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(p, m):
        return gj.apply_masks(p, m)

    out = apply(p, m)
    out2 = apply(jax.tree.map(lambda x: x * 2, p), m)  # second call: no retrace
    assert out["w"].dtype == dtype and out["b"].dtype == dtype
    np.testing.assert_array_equal(
        np.asarray(out["w"], np.float32), np.array([[1.5, 0.0], [0.0, np.inf]], np.float32)
    )
    # exactly +0.0 (not -0.0 from a multiplication by 0, not NaN from nan * 0)
    assert not np.signbit(np.asarray(out["w"], np.float32)[0, 1])
    assert out["b"] is p["b"] or bool((out["b"] == p["b"]).all())
    np.testing.assert_array_equal(np.asarray(out2["w"], np.float32)[1, 1], np.inf)


def test_density_summaries():
    m = {"a": jnp.array([[True, False], [True, True]]), "b": jnp.zeros((2, 3), bool), "c": None}
    counts = gj.active_counts(m)
    assert counts["c"] is None
    assert (int(counts["a"]), int(counts["b"])) == (3, 0)
    assert counts["a"].dtype == jnp.int32
    dens = gj.mask_densities(m)
    assert (float(dens["a"]), float(dens["b"]), dens["c"]) == (0.75, 0.0, None)
    assert dens["a"].dtype == jnp.float32
    g = gj.global_density(m)
    assert g.dtype == jnp.float32 and g == np.float32(3 / 10)
    assert jax.jit(gj.global_density)(m) == np.float32(3 / 10)


# --- property: exact counts for random densities ----------------------------------------------

SHAPE_MENU = [
    {"a": (7, 3), "b": (2, 2, 5)},
    {"a": (1, 9), "b": (4, 4), "c": (3, 1, 2, 2)},
    {"a": (16, 16)},
]
_DRAW = {
    i: jax.jit(
        lambda dens, key, i=i: gj.random_masks(
            {k: jnp.zeros(s) for k, s in SHAPE_MENU[i].items()}, dens, key
        )
    )
    for i in range(len(SHAPE_MENU))
}


@SETTINGS
@given(data=st.data(), which=st.integers(0, len(SHAPE_MENU) - 1), seed=st.integers(0, 2**31 - 1))
def test_random_masks_exact_counts_property(data, which, seed):
    shapes = SHAPE_MENU[which]
    use_counts = data.draw(st.booleans())
    dens = {}
    for k, s in shapes.items():
        size = int(np.prod(s))
        if use_counts:
            dens[k] = jnp.int32(data.draw(st.integers(0, size)))
        else:
            dens[k] = jnp.float32(data.draw(st.floats(0.0, 1.0, width=32)))
    m = _DRAW[which](dens, jax.random.key(seed))
    for k, s in shapes.items():
        size = int(np.prod(s))
        want = int(dens[k]) if use_counts else int(np.round(np.float32(dens[k]) * np.float32(size)))
        assert m[k].dtype == jnp.bool_ and m[k].shape == s
        assert int(m[k].sum()) == want
