"""Initial densities: hand-computed cases, traced sparsity, and exact totals on random pytrees."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import ggr_jax as gj

# The exact-total tests go to sparsities that leave small leaves without any weight on purpose;
# that warning has its own test (tests/test_reliability.py).
pytestmark = pytest.mark.filterwarnings("ignore:.*get no active weights:UserWarning")

SETTINGS = settings(max_examples=25, deadline=None)


def counts(params, densities):
    """Exact integer active counts implied by a densities tree (None for dense leaves)."""
    out = {}
    for (path, d), x in zip(
        jax.tree_util.tree_flatten_with_path(densities, is_leaf=lambda v: v is None)[0],
        jax.tree.leaves(params),
        strict=True,
    ):
        if d is None:
            continue
        c = float(d) * x.size
        assert abs(c - round(c)) < 1e-3, (path, c)  # density is count / size for an integer count
        out[jax.tree_util.keystr(path)] = round(c)
    return out


def test_uniform_hand():
    d = gj.uniform_densities({"a": jnp.ones((10, 10)), "b": jnp.ones((10, 10))}, 0.9)
    assert (float(d["a"]), float(d["b"])) == (0.1, 0.1)
    # 19 weights at S=0.5: round(9.5) = 10 active; ideal 4.74 / 5.26 -> largest remainder 5 / 5
    p = {"a": jnp.ones((3, 3)), "b": jnp.ones((5, 2))}
    d = gj.uniform_densities(p, 0.5)
    assert (float(d["a"]), float(d["b"])) == (5 / 9, 0.5)


def test_uniform_zero_sparsity_is_dense():
    p = {"a": jnp.ones((3, 3)), "b": jnp.ones((5, 2))}
    for fn in (gj.uniform_densities, gj.er_densities, gj.erk_densities):
        d = fn(p, 0.0)
        assert (float(d["a"]), float(d["b"])) == (1.0, 1.0)


def test_uniform_dense_first():
    p = {"a": jnp.ones((2, 2)), "b": jnp.ones((4, 4))}  # "a" is first in tree order
    d = gj.uniform_densities(p, 0.5, dense_first=True)
    assert (float(d["a"]), float(d["b"])) == (1.0, 6 / 16)  # 4 + 6 == round(0.5 * 20)
    with pytest.raises(ValueError, match="fewer than the 16 of the layers kept dense"):
        gj.uniform_densities({"a": jnp.ones((4, 4)), "b": jnp.ones((2, 2))}, 0.5, dense_first=True)


def test_er_hand():
    # raw a = (4+4)/16 = 0.5, raw b = (8+2)/16 = 0.625; eps = 16/18 -> ideal 7.11, 8.89 -> 7, 9
    d = gj.er_densities({"a": jnp.ones((4, 4)), "b": jnp.ones((8, 2))}, 0.5)
    assert (float(d["a"]), float(d["b"])) == (7 / 16, 9 / 16)


def test_erk_hand_with_dense_overflow():
    # raw a = 4/4 = 1, raw b = 40/400 = 0.1; eps = 202/44 makes a denser than 1 -> a dense,
    # then b gets the remaining 198.
    d = gj.erk_densities({"a": jnp.ones((2, 2)), "b": jnp.ones((20, 20))}, 0.5)
    assert (float(d["a"]), float(d["b"])) == (1.0, 198 / 400)


def test_erk_hand_conv_kernel_dims_included():
    # raw conv = (3+3+2+4)/72 = 1/6, raw dense = (8+4)/32 = 3/8; target round(0.1 * 104) = 10,
    # eps = 10/24 -> 5 and 5
    p = {"conv": jnp.ones((3, 3, 2, 4)), "dense": jnp.ones((8, 4))}
    d = gj.erk_densities(p, 0.9)
    assert (float(d["conv"]), float(d["dense"])) == (5 / 72, 5 / 32)
    # ER looks at the last two dims only: raw conv = 6/8, raw dense = 12/32
    # eps * (0.75 * 72 + 0.375 * 32) = 10 -> ideal 8.18 and 1.82 -> 8 and 2
    assert counts(p, gj.er_densities(p, 0.9)) == {"['conv']": 8, "['dense']": 2}
    # target 52: ideal 42.55 and 9.45 -> floors 42 + 9, the larger remainder gets the last one
    assert counts(p, gj.er_densities(p, 0.5)) == {"['conv']": 43, "['dense']": 9}


def test_erk_power_scale_zero_is_uniform():
    p = {"a": jnp.ones((7, 3)), "b": jnp.ones((5, 11)), "c": jnp.ones((2, 2, 3))}
    for s in (0.3, 0.77, 0.95):
        erk0 = gj.erk_densities(p, s, power_scale=0.0)
        uni = gj.uniform_densities(p, s)
        assert counts(p, erk0) == counts(p, uni)


def test_custom_first_match_wins_and_default():
    p = {"Conv_0": {"kernel": jnp.ones((3, 3, 2, 4))}, "Dense_0": {"kernel": jnp.ones((8, 5))}}
    d = gj.custom_densities(p, {"Dense": 0.3, "kernel": 0.7})
    assert float(d["Dense_0"]["kernel"]) == 12 / 40
    assert float(d["Conv_0"]["kernel"]) == 50 / 72  # round(0.7 * 72) = round(50.4)
    d = gj.custom_densities(p, {"Conv": 0.5}, default=1.0)
    assert (float(d["Conv_0"]["kernel"]), float(d["Dense_0"]["kernel"])) == (0.5, 1.0)


def test_spec_excludes_leaves_from_budget():
    p = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4)), "bias": jnp.ones(4)}
    d = gj.uniform_densities(p, 0.75, spec={"a": False, "b": True, "bias": False})
    assert d["a"] is None and d["bias"] is None
    assert float(d["b"]) == 4 / 16


TREES = [
    {"a": jnp.ones((3, 3)), "b": jnp.ones((5, 2)), "bias": jnp.ones(2)},
    {"conv": jnp.ones((3, 3, 3, 8)), "d1": jnp.ones((72, 33)), "d2": jnp.ones((33, 10))},
]


@pytest.mark.parametrize("tree", range(len(TREES)))
@pytest.mark.parametrize(
    "fn",
    [
        gj.uniform_densities,
        gj.er_densities,
        gj.erk_densities,
        lambda p, s: gj.uniform_densities(p, s, dense_first=True),
    ],
    ids=["uniform", "er", "erk", "uniform_dense_first"],
)
def test_traced_sparsity_matches_concrete(fn, tree):
    p = TREES[tree]
    solve = jax.jit(lambda s: fn(p, s))
    for s in (0.0, 0.2, 0.5, 0.9, 0.97):
        sparse = [x.size for x in jax.tree.leaves(p) if x.ndim >= 2]
        if fn.__name__ == "<lambda>" and sparse[0] > round((1 - s) * sum(sparse)):
            continue  # the dense first layer alone exceeds the budget (a ValueError, tested above)
        traced = solve(jnp.float32(s))
        concrete = fn(p, s)
        assert jax.tree.structure(traced, is_leaf=lambda v: v is None) == jax.tree.structure(
            concrete, is_leaf=lambda v: v is None
        )
        for leaf in jax.tree.leaves(traced):
            assert leaf.dtype == jnp.float32
        assert counts(p, traced) == counts(p, concrete)


# --- property tests over random pytrees -------------------------------------------------------


@st.composite
def pytrees(draw, min_leaves=1):
    n = draw(st.integers(min_leaves, 5))
    leaves = {}
    for i in range(n):
        ndim = draw(st.integers(1, 4))
        shape = tuple(draw(st.lists(st.integers(1, 12), min_size=ndim, max_size=ndim)))
        leaves[f"layer{i}"] = np.zeros(shape, np.float32)
    return leaves


def reference_counts(sizes, raw, target):
    """Float ideal counts of the ER/ERK solve: eps * raw * size, layers above density 1 dense."""
    dense = [False] * len(sizes)
    while True:
        budget = target - sum(s for s, d in zip(sizes, dense, strict=True) if d)
        denom = sum(r * s for r, s, d in zip(raw, sizes, dense, strict=True) if not d)
        eps = budget / denom if denom > 0 else 0.0
        new = [d or eps * r > 1 for d, r in zip(dense, raw, strict=True)]
        if new == dense:
            break
        dense = new
    return [s if d else eps * r * s for s, r, d in zip(sizes, raw, dense, strict=True)]


RAW = {
    "uniform": lambda s: 1.0,
    "er": lambda s: (s[-2] + s[-1]) / (s[-2] * s[-1]),
    "erk": lambda s: sum(s) / math.prod(s),
}


@SETTINGS
@given(p=pytrees(), sparsity=st.floats(0.0, 0.999), method=st.sampled_from(sorted(RAW)))
def test_exact_total_and_near_ideal_counts(p, sparsity, method):
    # ER needs two dims; uniform also sparsifies vectors here
    spec = {k: v.ndim >= (1 if method == "uniform" else 2) for k, v in p.items()}
    if not any(spec.values()):
        with pytest.raises(ValueError, match="no sparsifiable leaves"):
            gj.erk_densities(p, sparsity, spec=spec)
        return
    fn = {"uniform": gj.uniform_densities, "er": gj.er_densities, "erk": gj.erk_densities}[method]
    d = fn(p, sparsity, spec=spec)
    names = [k for k in sorted(p) if spec[k]]
    assert all(d[k] is None for k in p if not spec[k])
    sizes = [p[k].size for k in names]
    c = counts(p, d)
    got = [c[f"['{k}']"] for k in names]
    target = round((1 - sparsity) * sum(sizes))
    assert sum(got) == target
    assert all(0 <= g <= s for g, s in zip(got, sizes, strict=True))
    ideal = reference_counts(sizes, [RAW[method](p[k].shape) for k in names], target)
    assert all(abs(g - i) < 1 + 1e-6 for g, i in zip(got, ideal, strict=True)), (got, ideal)


@SETTINGS
@given(p=pytrees(), sparsity=st.floats(0.0, 0.99))
def test_dense_first_exact_total(p, sparsity):
    spec = {k: v.ndim >= 1 for k, v in p.items()}
    names = sorted(p)
    total = sum(p[k].size for k in names)
    target = round((1 - sparsity) * total)
    if p[names[0]].size > target:
        with pytest.raises(ValueError, match="kept dense"):
            gj.uniform_densities(p, sparsity, spec=spec, dense_first=True)
        return
    d = gj.uniform_densities(p, sparsity, spec=spec, dense_first=True)
    c = counts(p, d)
    assert c[f"['{names[0]}']"] == p[names[0]].size
    assert sum(c.values()) == target


@SETTINGS
@given(p=pytrees(), permille=st.integers(0, 990), method=st.sampled_from(sorted(RAW)))
def test_traced_exact_total(p, permille, method):
    sparsity = np.float32(permille / 1000)
    # Under jit the solve runs in float32; the total is still exact for the float32 sparsity.
    spec = {k: v.ndim >= (1 if method == "uniform" else 2) for k, v in p.items()}
    if not any(spec.values()):
        return
    fn = {"uniform": gj.uniform_densities, "er": gj.er_densities, "erk": gj.erk_densities}[method]
    d = jax.jit(lambda s: fn(p, s, spec=spec))(jnp.float32(sparsity))
    names = [k for k in sorted(p) if spec[k]]
    sizes = [p[k].size for k in names]
    c = counts(p, d)
    got = [c[f"['{k}']"] for k in names]
    s32 = np.float32(sparsity)
    assert sum(got) == int(np.round((np.float32(1) - s32) * np.float32(sum(sizes))))
    assert all(0 <= g <= s for g, s in zip(got, sizes, strict=True))


def test_er_rejects_a_sparsified_vector_naming_it():
    params = {"w": jnp.ones((4, 4)), "v": jnp.ones(4)}
    with pytest.raises(ValueError, match="'v'.*\\(4,\\)"):
        gj.er_densities(params, 0.5, spec={"w": True, "v": True})
