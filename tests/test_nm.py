"""N:M structured sparsity: per-group selection, random N:M masks, and updates that keep them."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import ggr_jax as gj

SETTINGS = settings(max_examples=6, deadline=None)

# every method that applies under N:M (per-layer allocation), by name
METHODS = {
    "static": gj.static(),
    "set": gj.set_(),
    "rigl": gj.rigl(),
    "snfs_placement": gj.Method("snfs_nm", allocate="per_layer", place="momentum"),
    "ggr_placement": gj.Method("ggr_nm", allocate="per_layer", place="mixed", rho=0.5),
    "rigl_no_regrow_pruned": gj.Method("rigl_nr", place="gradient", regrow_pruned=False),
}

PARAMS = {  # Flax layouts: (in, out) and HWIO; groups along `in`
    "dense": jnp.zeros((16, 6)),
    "conv": jnp.zeros((3, 3, 8, 4)),
    "out": jnp.zeros((24, 3)),
    "bias": jnp.zeros(6),
}


def group_counts(mask, m, axis=-2):
    x = np.asarray(mask)
    a = axis % x.ndim
    return x.reshape(x.shape[:a] + (x.shape[a] // m, m) + x.shape[a + 1 :]).sum(axis=a + 1)


def test_group_top_k_hand_computed():
    keys = jnp.array([[3, 9, 9, 1], [4, 4, 4, 4], [0, 5, 7, 2]], jnp.uint32)
    eligible = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]], bool)
    k = jnp.array([[2], [3], [5]])  # per group; the last group has only 3 eligible
    got = gj.group_top_k(keys, eligible, k, axis=1)
    want = np.array([[0, 1, 1, 0], [1, 1, 1, 0], [0, 1, 1, 1]], bool)  # ties: lower index first
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (0, 4), (4, 4)])
def test_random_masks_are_n_m(n, m, getkey):
    masks = jax.jit(gj.nm_random_masks, static_argnames="m")(PARAMS, n=n, m=m, key=getkey())
    assert masks["bias"] is None
    for name in ("dense", "conv", "out"):
        assert (group_counts(masks[name], m) == n).all(), name
        assert bool(gj.is_nm(masks, n=n, m=m)[name])
    a = gj.nm_random_masks(PARAMS, n=n, m=m, key=jax.random.key(1))
    b = gj.nm_random_masks(PARAMS, n=n, m=m, key=jax.random.key(2))
    if 0 < n < m:
        assert not bool((a["dense"] == b["dense"]).all())


def test_random_masks_equinox_layout(getkey):
    params = {"weight": jnp.zeros((5, 8))}  # (out, in): groups along the last axis
    masks = gj.nm_random_masks(params, n=1, m=4, key=getkey(), axis=-1)
    assert (group_counts(masks["weight"], 4, axis=-1) == 1).all()


def test_random_masks_traced_n_does_not_retrace(getkey):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def draw(n, key):
        return gj.nm_random_masks(PARAMS, n=n, m=4, key=key)

    for n in (1, 2, 3):
        assert (group_counts(draw(n, getkey())["conv"], 4) == n).all()


def test_errors_name_leaf_and_value(getkey):
    with pytest.raises(ValueError, match=r"axis -2 of leaf 'w' has 6 entries, not a multiple of 4"):
        gj.nm_random_masks({"w": jnp.zeros((6, 3))}, n=2, m=4, key=getkey())
    with pytest.raises(ValueError, match=r"0 <= n <= m, got n=5, m=4"):
        gj.nm_random_masks(PARAMS, n=5, m=4, key=getkey())
    masks = gj.nm_random_masks(PARAMS, n=2, m=4, key=getkey())
    for method, what in ((gj.ggr(), "'global_gradient'"), (gj.snfs(), "'momentum'")):
        with pytest.raises(ValueError, match=f"allocate={what}.*fixed at N/M"):
            gj.nm_redistribute(
                PARAMS, masks, PARAMS, getkey(), method=method, fraction=0.3, m=4, momentum=PARAMS
            )


def test_update_hand_computed():
    # one group of 4 (n=2): prune the smaller active weight (1.0), regrow where |g| is largest
    w = jnp.array([[1.0], [3.0], [0.0], [0.0]])
    mask = jnp.array([[True], [True], [False], [False]])
    g = jnp.array([[0.0], [0.0], [-5.0], [1.0]])
    p, new, info = gj.nm_redistribute(
        {"w": w}, {"w": mask}, {"w": g}, jax.random.key(0), method=gj.rigl(), fraction=0.5, m=4
    )
    np.testing.assert_array_equal(new["w"][:, 0], [False, True, True, False])
    np.testing.assert_array_equal(p["w"][:, 0], [0.0, 3.0, 0.0, 0.0])
    assert int(info["dropped"]["w"]) == int(info["grown"]["w"]) == 1
    assert int(info["active"]["w"]) == 2 and int(info["moved"]) == 0


def test_regrow_pruned_false_prefers_other_positions():
    w = jnp.array([[1.0], [3.0], [0.0], [0.0]])
    mask = jnp.array([[True], [True], [False], [False]])
    g = jnp.array([[9.0], [0.0], [0.0], [1.0]])  # the pruned position has the largest |g|
    method = METHODS["rigl_no_regrow_pruned"]
    _, new, _ = gj.nm_redistribute(
        {"w": w}, {"w": mask}, {"w": g}, jax.random.key(0), method=method, fraction=0.5, m=4
    )
    np.testing.assert_array_equal(new["w"][:, 0], [False, True, False, True])
    _, new, _ = gj.nm_redistribute(
        {"w": w}, {"w": mask}, {"w": g}, jax.random.key(0), method=gj.rigl(), fraction=0.5, m=4
    )
    np.testing.assert_array_equal(new["w"][:, 0], [True, True, False, False])


def test_nonfinite_gradients_skip_the_update(getkey):
    masks = gj.nm_random_masks(PARAMS, n=2, m=4, key=getkey())
    params = gj.apply_masks(jax.tree.map(lambda p: jnp.ones(p.shape), PARAMS), masks)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, jnp.nan), PARAMS)
    _, new, info = gj.nm_redistribute(
        params, masks, grads, getkey(), method=gj.rigl(), fraction=0.3, m=4
    )
    assert bool(info["skipped"])
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)


_UPDATES = {}


def jitted_update(name):
    """One compiled update per method, shared by every hypothesis example (no retracing)."""
    if name not in _UPDATES:
        method = METHODS[name]

        @jax.jit
        def update(params, masks, grads, key, fraction, use_cond):
            def run(args):
                return gj.nm_redistribute(
                    *args, key, method=method, fraction=fraction, m=4, momentum=grads
                )[:2]

            # under lax.cond, as inside a training step: the structures must match exactly
            return jax.lax.cond(use_cond, run, lambda a: a[:2], (params, masks, grads))

        _UPDATES[name] = update
    return _UPDATES[name]


@pytest.mark.parametrize("name", sorted(METHODS))
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([1, 2, 3]))
@SETTINGS
def test_fifty_random_updates_keep_every_group_n_m(name, seed, n):
    key = jax.random.key(seed)
    masks = gj.nm_random_masks(PARAMS, n=n, m=4, key=key)
    params = gj.apply_masks(jax.tree.map(lambda p: jax.random.normal(key, p.shape), PARAMS), masks)
    update = jitted_update(name)
    total = sum(int(x.sum()) for x in jax.tree.leaves(masks))
    changed = False
    for step in range(50):
        k_grad, k_w, k_frac, k_up = jax.random.split(jax.random.fold_in(key, step), 4)
        grads = jax.tree.map(lambda p, k=k_grad: jax.random.normal(k, p.shape), PARAMS)
        fraction = jax.random.uniform(k_frac)
        params, new = update(params, masks, grads, k_up, fraction, step % 7 != 3)
        for leaf in ("dense", "conv", "out"):
            assert (group_counts(new[leaf], 4) == n).all(), (name, step, leaf)
            assert not bool(jnp.where(new[leaf], 0.0, params[leaf]).any())
        assert sum(int(x.sum()) for x in jax.tree.leaves(new)) == total
        changed |= any(
            bool((a != b).any())
            for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(new), strict=True)
        )
        masks = new
        # training moves the weights, so the next prune sees other magnitudes
        moved = jax.tree.map(lambda p, k=k_w: p + jax.random.normal(k, p.shape), params)
        params = gj.apply_masks(moved, masks)
    assert changed == (name != "static")
    assert update._cache_size() == 1


def test_redistribute_keeps_n_m_when_the_method_says_so(getkey):
    masks = gj.nm_random_masks(PARAMS, n=2, m=4, key=getkey())
    k_w, k_g, key = getkey(), getkey(), getkey()
    params = gj.apply_masks(jax.tree.map(lambda p: jax.random.normal(k_w, p.shape), PARAMS), masks)
    grads = jax.tree.map(lambda p: jax.random.normal(k_g, p.shape), PARAMS)
    method = gj.rigl()._replace(nm_group=4)
    got = jax.jit(gj.redistribute, static_argnames="method")(
        params, masks, grads, key, method=method, fraction=0.4
    )
    want = gj.nm_redistribute(params, masks, grads, key, method=method, fraction=0.4, m=4)
    chex.assert_trees_all_equal(got, want)
    assert all(bool(v) for v in jax.tree.leaves(gj.is_nm(got[1], n=2, m=4)))
    with pytest.raises(ValueError, match=r"allocate='global_gradient'.*fixed at N/M"):
        gj.redistribute(
            params, masks, grads, key, method=gj.ggr()._replace(nm_group=4), fraction=0.3
        )
    with pytest.raises(ValueError, match=r"method.nm_group must be a positive int or None, got 0"):
        gj.redistribute(params, masks, grads, key, method=method._replace(nm_group=0), fraction=0.3)
    with pytest.raises(ValueError, match=r"method.nm_group=4 but m=8"):
        gj.nm_redistribute(params, masks, grads, key, method=method, fraction=0.3, m=8)


def test_dynamic_sparse_keeps_n_m(getkey):
    masks = gj.nm_random_masks(PARAMS, n=1, m=4, key=getkey())
    params = gj.apply_masks(jax.tree.map(lambda p: jnp.ones(p.shape), PARAMS), masks)
    tx = gj.dynamic_sparse(
        optax.sgd(0.1),
        masks,
        key=getkey(),
        method=gj.set_()._replace(nm_group=4),
        update_every=2,
        end_step=20,
        drop_fraction=0.5,
    )
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    changed = False
    for i in range(8):
        k_grad = getkey()
        grads = jax.tree.map(lambda p, k=k_grad: jax.random.normal(k, p.shape), PARAMS)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        new = gj.get_masks(state)
        for leaf in ("dense", "conv", "out"):
            assert (group_counts(new[leaf], 4) == 1).all(), (i, leaf)
        changed |= any(
            bool((a != b).any())
            for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(new), strict=True)
        )
        masks = new
    assert changed
