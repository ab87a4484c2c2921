"""One topology update: hand-computed masks per method, invariants over many updates, properties."""

import functools

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

import ggr_jax as gj

SETTINGS = settings(max_examples=25, deadline=None)
T, F = True, False

# jit once for the whole module: the hand tests share these compiled programs.
redistribute = jax.jit(gj.redistribute, static_argnames=("method", "min_active", "skip_nonfinite"))


def hand():
    """Two 2x2 layers; masks are where params are non-zero.

    a: active 3, 1, 2 -> at fraction 0.5 drops floor(1.5) = 1 weight, the 1 at (1, 0).
    b: active 5, 4    -> drops 1, the 4 at (1, 0).
    Free |g| after pruning: a (0,1)=5, (1,0)=4;  b (0,1)=9, (1,0)=0, (1,1)=8.
    """
    params = {"a": jnp.array([[3.0, 0.0], [1.0, 2.0]]), "b": jnp.array([[5.0, 0.0], [4.0, 0.0]])}
    masks = jax.tree.map(lambda p: p != 0, params)
    grads = {"a": jnp.array([[0.0, 5.0], [4.0, 0.0]]), "b": jnp.array([[0.0, 9.0], [0.0, 8.0]])}
    return params, masks, grads


def check(out, masks, params=None, *, dropped=None, grown=None, moved=None):
    new_params, new_masks, info = out
    for k, want in masks.items():
        np.testing.assert_array_equal(new_masks[k], np.array(want, bool), err_msg=f"mask {k}")
        assert new_masks[k].dtype == jnp.bool_
    if params is not None:
        for k, want in params.items():
            np.testing.assert_array_equal(new_params[k], np.array(want, np.float32), err_msg=k)
    if dropped is not None:
        assert {k: int(v) for k, v in info["dropped"].items()} == dropped
    if grown is not None:
        assert {k: int(v) for k, v in info["grown"].items()} == grown
    if moved is not None:
        assert int(info["moved"]) == moved
    assert not bool(info["skipped"])
    assert {k: int(v) for k, v in info["active"].items()} == {
        k: int(np.sum(v)) for k, v in masks.items()
    }


def test_rigl_hand(getkey):
    p, m, g = hand()
    out = redistribute(p, m, g, getkey(), method=gj.rigl(), fraction=0.5, min_active=0)
    check(
        out,
        {"a": [[T, T], [F, T]], "b": [[T, T], [F, F]]},
        {"a": [[3, 0], [0, 2]], "b": [[5, 0], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 1, "b": 1},
        moved=0,
    )


def test_ggr_hand(getkey):
    # Global top-2 of the free |g| is b (0,1)=9 and b (1,1)=8: one connection moves a -> b.
    p, m, g = hand()
    out = redistribute(
        p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=None), fraction=0.5, min_active=0
    )
    check(
        out,
        {"a": [[T, F], [F, T]], "b": [[T, T], [F, T]]},
        {"a": [[3, 0], [0, 2]], "b": [[5, 0], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 0, "b": 2},
        moved=1,
    )


@pytest.mark.parametrize("normalize", ["l2", "rms", "mean", "max"])
def test_ggr_normalize_hand(normalize, getkey):
    # Per layer scaled: l2 a 5/6.40=.78 4/6.40=.62, b 9/12.04=.75 8/12.04=.66; rms a 5/3.20=1.56
    # 4/3.20=1.25, b 9/6.02=1.50 8/6.02=1.33; mean (of |g| over the layer) a 5/2.25 4/2.25,
    # b 9/4.25 8/4.25; max a 1 .8, b 1 .89 (the tie at 1.0 goes to the earlier leaf). In every
    # case the top-2 is a (0,1) and b (0,1): the RigL masks.
    p, m, g = hand()
    out = redistribute(
        p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=normalize), fraction=0.5, min_active=0
    )
    check(
        out,
        {"a": [[T, T], [F, T]], "b": [[T, T], [F, F]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 1, "b": 1},
        moved=0,
    )


def test_ggr_weight_normalize_hand(getkey):
    # |g| times the RMS of the layer's active weights: a sqrt(14/3)=2.16 -> 10.8, 8.6; b
    # sqrt(41/2)=4.53 -> 40.7, 36.2: b's two free positions win, as with raw |g|. With b's weights
    # 16x smaller (RMS .28: 2.5, 2.3) a's two free positions win instead.
    p, m, g = hand()
    method = gj.ggr(rho=1.0, normalize="weight")
    out = redistribute(p, m, g, getkey(), method=method, fraction=0.5, min_active=0)
    check(out, {"a": [[T, F], [F, T]], "b": [[T, T], [F, T]]}, grown={"a": 0, "b": 2})
    p = {"a": p["a"], "b": p["b"] / 16}
    out = redistribute(p, m, g, getkey(), method=method, fraction=0.5, min_active=0)
    check(out, {"a": [[T, T], [T, T]], "b": [[T, F], [F, F]]}, grown={"a": 2, "b": 0})


# Rescalings (powers of two: exact in float) that a normalisation must not notice: g -> c g of
# one layer for the gradient statistics, and w -> c w with g -> g / c (a reparametrisation that
# leaves the network's function and first-order loss changes alone) for "weight".
@pytest.mark.parametrize("normalize", ["l2", "rms", "mean", "max", "weight", None])
def test_ggr_normalize_is_scale_free(normalize):
    params = loop_tree()
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.7), jax.random.key(0))
    params = gj.apply_masks(random_like(params, jax.random.key(1)), masks)
    grads = random_like(params, jax.random.key(2), {"a": 0.5})
    method = gj.ggr(rho=1.0, normalize=normalize)
    base = redistribute(
        params, masks, grads, jax.random.key(3), method=method, fraction=0.5, min_active=0
    )[1]
    changed = []
    for c in (1 / 64, 64.0):
        w, g = dict(params), dict(grads)
        if normalize == "weight":
            w["b"], g["b"] = params["b"] * c, grads["b"] / c
        else:
            g["b"] = grads["b"] * c
        new = redistribute(
            w, masks, g, jax.random.key(3), method=method, fraction=0.5, min_active=0
        )[1]
        changed.append(any(bool((new[k] != base[k]).any()) for k in ("a", "b")))
    assert changed == ([True, True] if normalize is None else [False, False])


def test_unit_floor_keeps_each_units_largest_weight(getkey):
    # fraction 1 drops every active weight it may. a's units keep 3 (col 0) and 2 (col 1): it
    # drops the 1; b's col 0 keeps 5, col 1 has none: it drops the 4. Regrowth by |g| per layer.
    p, m, g = hand()
    method = gj.Method("rigl_floor", unit_floor=True)
    out = redistribute(p, m, g, getkey(), method=method, fraction=1.0, min_active=0)
    check(
        out,
        {"a": [[T, T], [F, T]], "b": [[T, T], [F, F]]},
        {"a": [[3, 0], [0, 2]], "b": [[5, 0], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 1, "b": 1},
    )
    no_floor = redistribute(p, m, g, getkey(), method=gj.rigl(), fraction=1.0, min_active=0)
    assert int(no_floor[2]["dropped"]["a"]) == 3


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(allocate="none", place="gradient"), "static training is allocate='none'"),
        (dict(allocate="per_layer", place="none"), "static training is allocate='none'"),
        (dict(allocate="per_layer", normalize="l2"), "applies only to allocate='global_gradient'"),
        (dict(unit_floor=1), "unit_floor must be a bool"),
        (dict(signal="accumulated"), "method.signal must be one of"),
        (dict(normalize="fan_in", allocate="global_gradient"), "method.normalize must be one of"),
    ],
)
def test_method_combinations_are_checked(fields, match, getkey):
    p, m, g = hand()
    with pytest.raises(ValueError, match=match):
        redistribute(p, m, g, getkey(), method=gj.Method("x", **fields), fraction=0.5)


def test_ggr_regrow_pruned(getkey):
    # The just-pruned a (1,0) now has the largest |g| = 7. Free |g|: a (0,1)=5, (1,0)=7 (pruned);
    # b (0,1)=6, (1,0)=0 (pruned), (1,1)=1.
    p, m, _ = hand()
    g = {"a": jnp.array([[0.0, 5.0], [7.0, 0.0]]), "b": jnp.array([[0.0, 6.0], [0.0, 1.0]])}
    out = redistribute(
        p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=None), fraction=0.5, min_active=0
    )
    # Default (as RigL): a (1,0) is regrown. It never leaves the mask, so it keeps its weight.
    check(
        out,
        {"a": [[T, F], [T, T]], "b": [[T, T], [F, F]]},
        {"a": [[3, 0], [1, 2]], "b": [[5, 0], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 1, "b": 1},
    )
    out = redistribute(
        p,
        m,
        g,
        getkey(),
        method=gj.ggr(rho=1.0, normalize=None, regrow_pruned=False),
        fraction=0.5,
        min_active=0,
    )
    # Pruned positions go last: the top-2 is b (0,1)=6 and a (0,1)=5.
    check(
        out,
        {"a": [[T, T], [F, T]], "b": [[T, T], [F, F]]},
        {"a": [[3, 0], [0, 2]], "b": [[5, 0], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 1, "b": 1},
    )


def test_regrow_pruned_false_last_resort(getkey):
    # A full layer has no free position but the pruned ones: they are regrown after all.
    p = {"a": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
    m = {"a": jnp.ones((2, 2), bool)}
    g = {"a": jnp.array([[9.0, 9.0], [0.0, 0.0]])}
    method = gj.Method("rigl_no_regrow", regrow_pruned=False)
    out = redistribute(p, m, g, getkey(), method=method, fraction=0.5, min_active=0)
    check(out, {"a": [[T, T], [T, T]]}, {"a": [[1, 2], [3, 4]]}, dropped={"a": 2}, grown={"a": 2})


def test_rigl_regrows_pruned_by_default(getkey):
    p, m, _ = hand()
    g = {"a": jnp.array([[0.0, 5.0], [7.0, 0.0]]), "b": jnp.array([[0.0, 6.0], [0.0, 1.0]])}
    out = redistribute(p, m, g, getkey(), method=gj.rigl(), fraction=0.5, min_active=0)
    check(
        out,
        {"a": [[T, F], [T, T]], "b": [[T, T], [F, F]]},
        {"a": [[3, 0], [1, 2]], "b": [[5, 0], [0, 0]]},
    )


def outcomes(method, n_keys=16, **kwargs):
    """The distinct masks a random method produces on :func:`hand` over several keys."""
    p, m, g = hand()
    seen = {"a": set(), "b": set()}
    for i in range(n_keys):
        out = redistribute(p, m, g, jax.random.key(i), method=method, fraction=0.5, **kwargs)
        new_params, new_masks, info = out
        for k in seen:
            assert int(new_masks[k].sum()) == int(info["active"][k])
            # pruned and new weights are 0, kept weights unchanged
            np.testing.assert_array_equal(new_params[k], jnp.where(new_masks[k] & m[k], p[k], 0))
            seen[k].add(tuple(np.asarray(new_masks[k]).ravel().tolist()))
    return seen


def test_set_hand():
    # Per layer as RigL: a regrows 1 of {(0,1), (1,0)}; b 1 of {(0,1), (1,0), (1,1)}, at random.
    seen = outcomes(gj.set(), min_active=0)
    assert seen["a"] == {(T, T, F, T), (T, F, T, T)}
    assert seen["b"] == {(T, T, F, F), (T, F, T, F), (T, F, F, T)}


def test_ggr_mixed_hand():
    # b regrows 2 (global top-k): round(0.5 * 2) = 1 by gradient (b (0,1) = 9), 1 at random from
    # b's other free positions (1,0) and (1,1). a regrows none.
    seen = outcomes(gj.ggr(rho=0.5, normalize=None), min_active=0)
    assert seen["a"] == {(T, F, F, T)}
    assert seen["b"] == {(T, T, T, F), (T, T, F, T)}
    # rho = 0: the counts still come from the gradients, the positions are all random
    seen = outcomes(gj.ggr(rho=0.0, normalize=None), min_active=0)
    assert seen["a"] == {(T, F, F, T)}
    assert seen["b"] == {(T, T, T, F), (T, T, F, T), (T, F, T, T)}


def test_snfs_hand(getkey):
    # a: active (0,0)=3, (1,0)=1, mean |momentum| over them (10 + 0) / 2 = 5; b's is 0.
    # Both drop 1; a regrows both (placed at its largest free |momentum|: (0,1)=7, (1,1)=5).
    p = {"a": jnp.array([[3.0, 0.0], [1.0, 0.0]]), "b": jnp.array([[0.0, 4.0], [0.0, 2.0]])}
    m = jax.tree.map(lambda x: x != 0, p)
    mom = {"a": jnp.array([[10.0, 7.0], [0.0, 5.0]]), "b": jnp.zeros((2, 2))}
    g = jax.tree.map(jnp.ones_like, p)  # not used by SNFS
    out = redistribute(
        p, m, g, getkey(), method=gj.snfs(), fraction=0.5, min_active=0, momentum=mom
    )
    check(
        out,
        {"a": [[T, T], [F, T]], "b": [[F, T], [F, F]]},
        {"a": [[3, 0], [0, 0]], "b": [[0, 4], [0, 0]]},
        dropped={"a": 1, "b": 1},
        grown={"a": 2, "b": 0},
        moved=1,
    )


def test_snfs_shares_proportional_to_mean_momentum(getkey):
    # Each layer drops 2 of 4; R = 4 is split 3 : 1 by mean |momentum| 3 : 1.
    p = {
        "a": jnp.array([[1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0]]),
        "b": jnp.array([[1.0, 2.0, 3.0, 4.0], [0, 0, 0, 0]]),
    }
    m = jax.tree.map(lambda x: x != 0, p)
    mom = {"a": jnp.full((2, 4), 3.0), "b": jnp.full((2, 4), 1.0)}
    out = redistribute(
        p, m, mom, getkey(), method=gj.snfs(), fraction=0.5, min_active=0, momentum=mom
    )
    assert {k: int(v) for k, v in out[2]["grown"].items()} == {"a": 3, "b": 1}
    assert {k: int(v) for k, v in out[2]["active"].items()} == {"a": 5, "b": 3}


def test_static_hand(getkey):
    p, m, g = hand()
    p = {"a": p["a"] + 0.5, "b": p["b"]}  # non-zero outside the mask: zeroed
    out = redistribute(p, m, g, getkey(), method=gj.static(), fraction=0.5)
    check(
        out,
        {"a": [[T, F], [T, T]], "b": [[T, F], [T, F]]},
        {"a": [[3.5, 0], [1.5, 2.5]], "b": [[5, 0], [4, 0]]},
        dropped={"a": 0, "b": 0},
        grown={"a": 0, "b": 0},
        moved=0,
    )


def test_default_min_active_is_one_per_output_unit(getkey):
    # Default floor shape[-1] = 2: b (2 active) cannot drop, a (3 active) drops 1, which GGR
    # regrows in b at its largest |g|.
    p, m, g = hand()
    out = redistribute(p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=None), fraction=0.5)
    check(
        out,
        {"a": [[T, F], [F, T]], "b": [[T, T], [T, F]]},
        dropped={"a": 1, "b": 0},
        grown={"a": 0, "b": 1},
        moved=1,
    )


def test_min_active_callable_and_int(getkey):
    p, m, g = hand()
    floor = lambda path, shape: 3 if path == "a" else 0  # noqa: E731
    out = redistribute(
        p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=None), fraction=0.5, min_active=floor
    )
    # a keeps all 3; b drops 1 and the global top-1 (b (0,1) = 9) brings it back in b
    check(
        out,
        {"a": [[T, F], [T, T]], "b": [[T, T], [F, F]]},
        dropped={"a": 0, "b": 1},
        grown={"a": 0, "b": 1},
        moved=0,
    )
    out = redistribute(
        p, m, g, getkey(), method=gj.ggr(rho=1.0, normalize=None), fraction=1.0, min_active=1
    )
    # fraction 1 with floor 1: a drops 2, b drops 1; top-3 free |g|: b 9, b 8, a 5
    check(
        out,
        {"a": [[T, T], [F, F]], "b": [[T, T], [F, T]]},
        dropped={"a": 2, "b": 1},
        grown={"a": 1, "b": 2},
        moved=1,
    )


def test_fraction_zero_changes_nothing(getkey):
    p, m, g = hand()
    for method in (gj.ggr(), gj.rigl(), gj.set()):
        out = redistribute(p, m, g, getkey(), method=method, fraction=0.0, min_active=0)
        check(out, m, p, dropped={"a": 0, "b": 0}, grown={"a": 0, "b": 0}, moved=0)


# --- NaN / Inf --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["grads", "params", "momentum"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_skip(where, bad, getkey):
    p, m, g = hand()
    mom = jax.tree.map(jnp.ones_like, p)
    tree = {"grads": g, "params": p, "momentum": mom}[where]
    tree["b"] = tree["b"].at[1, 1].set(bad)
    method = gj.snfs() if where == "momentum" else gj.ggr()
    new_p, new_m, info = redistribute(
        p, m, g, getkey(), method=method, fraction=0.5, min_active=0, momentum=mom
    )
    assert bool(info["skipped"])
    for k in m:
        np.testing.assert_array_equal(new_m[k], m[k])
        assert int(info["dropped"][k]) == 0 and int(info["grown"][k]) == 0
    # inactive NaN parameters are zeroed, active ones are left as they are
    np.testing.assert_array_equal(new_p["a"], p["a"])
    assert int(info["moved"]) == 0


def test_nonfinite_not_skipped_when_disabled(getkey):
    p, m, g = hand()
    g["b"] = g["b"].at[1, 0].set(np.nan)
    _, new_m, info = redistribute(
        p, m, g, getkey(), method=gj.rigl(), fraction=0.5, min_active=0, skip_nonfinite=False
    )
    assert not bool(info["skipped"])
    assert int(new_m["a"].sum() + new_m["b"].sum()) == 5


# --- many updates ---------------------------------------------------------------------------

METHODS = {
    "ggr": gj.ggr(),  # the library default (l2, rho=1)
    "ggr_gradient": gj.ggr(rho=1.0, normalize=None),
    "ggr_l2_no_regrow": gj.ggr(rho=0.25, normalize="l2", regrow_pruned=False),
    "ggr_rms_unit_floor": gj.ggr(normalize="rms", unit_floor=True),
    "ggr_weight": gj.ggr(rho=1.0, normalize="weight"),
    "rigl": gj.rigl(),
    "set": gj.set(),
    "snfs": gj.snfs(),
    "static": gj.static(),
}
PER_LAYER = {"rigl", "set", "static"}

# One compiled program per method, shared by the loop, density and property tests: XLA compiles
# each in a few seconds, so they are always called with the same signature (traced fraction,
# default min_active) and on the same tree structure.
_UPDATE = {
    name: jax.jit(functools.partial(gj.redistribute, method=method))
    for name, method in METHODS.items()
}


def update_with(name, params, masks, grads, key, fraction):
    """The method's shared program, always called with the same signature (default min_active)."""
    return _UPDATE[name](params, masks, grads, key, fraction=jnp.float32(fraction), momentum=grads)


def loop_tree(dtype=jnp.float32):
    """A dense kernel, a conv kernel and a dense (not sparsified) bias."""
    return {
        "a": jnp.zeros((8, 6), dtype),
        "b": jnp.zeros((2, 2, 3, 4), dtype),
        "bias": jnp.zeros(4, dtype),
    }


def random_like(params, key, scale=None):
    keys = jax.random.split(key, len(params))
    scale = scale or {}
    return {
        k: jax.random.normal(kk, params[k].shape) * scale.get(k, 1.0)
        for k, kk in zip(sorted(params), keys, strict=True)
    }


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"ggr_gradient"}))
def test_invariants_over_many_updates(name):
    update = _UPDATE[name]
    params = loop_tree()
    masks = gj.random_masks(params, gj.erk_densities(params, 0.6), jax.random.key(0))
    structure = jax.tree.structure(masks, is_leaf=lambda x: x is None)
    init_counts = {k: int(masks[k].sum()) for k in ("a", "b")}
    floors = {"a": 6, "b": 4}
    key = jax.random.key(1)
    params = gj.apply_masks(random_like(params, key), masks)
    compiled = None
    for step in range(20):
        key, k1, k2, k3 = jax.random.split(key, 4)
        grads = random_like(params, k1)
        if step == 7:  # one bad batch: nothing may change
            grads["a"] = grads["a"].at[0, 0].set(jnp.nan)
        fraction = jnp.float32(0.3 + 0.4 * (step % 2))
        new_params, new_masks, info = update_with(name, params, masks, grads, k2, fraction)
        if compiled is None:
            compiled = update._cache_size()
        assert update._cache_size() == compiled  # no recompilation after the first call

        assert jax.tree.structure(new_masks, is_leaf=lambda x: x is None) == structure
        assert all(x.dtype == jnp.bool_ for x in jax.tree.leaves(new_masks))
        counts = {k: int(new_masks[k].sum()) for k in ("a", "b")}
        assert sum(counts.values()) == sum(init_counts.values())
        assert counts == {k: int(info["active"][k]) for k in counts}
        assert sum(int(v) for v in jax.tree.leaves(info["dropped"])) == sum(
            int(v) for v in jax.tree.leaves(info["grown"])
        )
        for k in ("a", "b"):
            assert counts[k] >= min(floors[k], init_counts[k])
            # kept weights unchanged, pruned and new ones exactly 0
            np.testing.assert_array_equal(
                new_params[k], jnp.where(new_masks[k] & masks[k], params[k], 0.0)
            )
        np.testing.assert_array_equal(new_params["bias"], params["bias"])
        if METHODS[name].unit_floor:  # no output unit loses its last active weight
            for k in ("a", "b"):
                alive = masks[k].reshape(-1, masks[k].shape[-1]).any(0)
                now = new_masks[k].reshape(-1, masks[k].shape[-1]).any(0)
                assert bool((now | ~alive).all()), (k, step)
        if name in PER_LAYER:
            assert counts == init_counts
        if step == 7:
            assert bool(info["skipped"]) == (name != "static")
            for k in ("a", "b"):
                np.testing.assert_array_equal(new_masks[k], masks[k])
        else:
            assert not bool(info["skipped"])
        # train a little: new weights get values, inactive ones stay 0
        params = gj.apply_masks(
            jax.tree.map(lambda p, n: p + 0.1 * n, new_params, random_like(params, k3)), new_masks
        )
        masks = new_masks


def test_ggr_moves_density_to_large_gradients_rigl_does_not():
    params = loop_tree()
    masks0 = gj.random_masks(params, gj.uniform_densities(params, 0.5), jax.random.key(0))
    start = {k: int(masks0[k].sum()) for k in ("a", "b")}  # 24 and 24
    result = {}
    for name in ("ggr_gradient", "rigl"):
        masks = masks0
        p = gj.apply_masks(random_like(params, jax.random.key(1)), masks)
        moved = 0
        for step in range(10):
            grads = random_like(params, jax.random.key(100 + step), scale={"b": 100.0})
            p, masks, info = update_with(name, p, masks, grads, jax.random.key(step), 0.3)
            p = gj.apply_masks(jax.tree.map(lambda x: x + 0.01, p), masks)
            moved += int(info["moved"])
        result[name] = ({k: int(masks[k].sum()) for k in ("a", "b")}, moved)
    ggr_counts, ggr_moved = result["ggr_gradient"]
    assert ggr_counts["b"] > start["b"] and ggr_counts["a"] < start["a"]
    assert ggr_counts["a"] + ggr_counts["b"] == start["a"] + start["b"]
    assert ggr_moved >= ggr_counts["b"] - start["b"] > 0
    assert ggr_counts["a"] >= 6  # never below the default floor of one weight per output unit
    assert result["rigl"] == (start, 0)


def test_ggr_fills_a_layer_to_density_one_and_no_further():
    params = loop_tree()
    masks = gj.random_masks(params, {"a": 1.0, "b": 0.25, "bias": None}, jax.random.key(0))
    p = gj.apply_masks(jax.tree.map(lambda x: x + 2.0, params), masks)
    grads = {"a": jnp.full((8, 6), 1e-3), "b": jnp.full((2, 2, 3, 4), 1.0), "bias": jnp.ones(4)}
    for step in range(15):
        p, masks, _ = update_with("ggr_gradient", p, masks, grads, jax.random.key(step), 0.5)
        p = gj.apply_masks(jax.tree.map(lambda x: x + 1.0, p), masks)
    # 48 + 12 active: b takes all it can (48, density 1), a keeps the other 12 (above its floor)
    assert bool(masks["b"].all())
    assert int(masks["a"].sum()) == 12


def test_redistribute_under_lax_cond_bf16(getkey):
    # Every method returns the same structures and dtypes as static (info included), so the
    # update can sit in a lax.cond branch; bf16 params stay bf16.
    dtype = jnp.bfloat16
    params = loop_tree(dtype)
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.5), getkey())
    params = gj.apply_masks(jax.tree.map(lambda x: x + jnp.asarray(1.5, dtype), params), masks)
    grads = jax.tree.map(lambda g: g.astype(dtype), random_like(params, getkey()))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(pred, params, masks, grads, key):
        def branch(method):
            return functools.partial(gj.redistribute, method=method, fraction=0.5)

        return lax.cond(pred, branch(gj.ggr()), branch(gj.static()), params, masks, grads, key)

    for pred in (True, False):
        new_p, new_m, info = run(pred, params, masks, grads, getkey())
        assert all(x.dtype == dtype for x in jax.tree.leaves(new_p))
        assert all(x.dtype == jnp.bool_ for x in jax.tree.leaves(new_m))
        assert int(new_m["a"].sum() + new_m["b"].sum()) == int(masks["a"].sum() + masks["b"].sum())
        assert not bool(info["skipped"])
        changed = bool((new_m["a"] != masks["a"]).any() | (new_m["b"] != masks["b"]).any())
        assert changed == pred


# --- property tests ---------------------------------------------------------------------------

# One structure only (a dense kernel, a conv kernel, a dense bias), the loop test's: each new
# structure costs a few seconds of XLA compilation per method. Random structures and shapes are
# covered where they are cheap (test_distributions, test_masks, test_select).
SHAPES = {k: v.shape for k, v in loop_tree().items()}
PROPERTY_METHODS = sorted(METHODS)  # every method, static included


@SETTINGS
@given(
    name=st.sampled_from(PROPERTY_METHODS),
    seed=st.integers(0, 2**31 - 1),
    density=st.floats(0.0, 1.0),
    fraction=st.floats(0.0, 1.0, width=32),
)
def test_redistribute_properties(name, seed, density, fraction):
    rng = np.random.default_rng(seed)
    shapes = SHAPES
    sparse = [k for k, s in shapes.items() if len(s) >= 2]
    # ties on purpose: params and grads drawn from a few values
    params = {k: jnp.asarray(rng.integers(-2, 3, size=s), jnp.float32) for k, s in shapes.items()}
    grads = {k: jnp.asarray(rng.integers(-2, 3, size=s), jnp.float32) for k, s in shapes.items()}
    masks = {
        k: (jnp.asarray(rng.random(s) < density) if k in sparse else None)
        for k, s in shapes.items()
    }
    new_p, new_m, info = update_with(name, params, masks, grads, jax.random.key(seed), fraction)
    assert jax.tree.structure(new_m, is_leaf=lambda x: x is None) == jax.tree.structure(
        masks, is_leaf=lambda x: x is None
    )
    before = {k: int(masks[k].sum()) for k in sparse}
    after = {k: int(new_m[k].sum()) for k in sparse}
    assert sum(after.values()) == sum(before.values())
    for k in sparse:
        assert new_m[k].dtype == jnp.bool_ and new_m[k].shape == shapes[k]
        assert after[k] >= min(shapes[k][-1], before[k])  # default floor: one per output unit
        dropped, grown = int(info["dropped"][k]), int(info["grown"][k])
        assert dropped <= int(np.floor(np.float32(fraction) * np.float32(before[k])))
        assert after[k] == before[k] - dropped + grown
        np.testing.assert_array_equal(new_p[k], jnp.where(new_m[k] & masks[k], params[k], 0.0))
    for k in shapes:
        if k not in sparse:
            assert new_m[k] is None
            np.testing.assert_array_equal(new_p[k], params[k])
    if name in ("rigl", "set"):
        assert after == before


def test_method_literal_types_name_exactly_the_stage_tables():
    """Method's Literal field types and redistribute's stage tables list the same names, so a
    new stage is one function, one table entry and one name in the Literal."""
    from typing import get_args

    from ggr_jax import _methods, _redistribute

    # (the library's own entries: docs/concepts.md's worked example adds one of its own)
    for literal, table in (
        (_methods.Allocate, _redistribute.ALLOCATE),
        (_methods.Place, _redistribute.PLACE),
    ):
        own = {k for k, fn in table.items() if fn.__module__ == _redistribute.__name__}
        assert set(get_args(literal)) == {*own, "none"}
    for allocate in _redistribute.ALLOCATE:
        for place in _redistribute.PLACE:
            _redistribute.check_method(gj.Method("m", allocate=allocate, place=place))
    with pytest.raises(ValueError, match="allocate"):
        _redistribute.check_method(gj.Method("m", allocate="sideways"))  # type: ignore[arg-type]
