"""Gradual magnitude pruning: the cubic schedule, exact per-layer and global magnitude pruning,
and a dense-to-sparse run that ends at the target sparsity."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ggr_jax as gj

PARAMS_SHAPES = {"a": (30, 20), "b": (3, 3, 4, 8), "c": (20, 10), "bias": (10,)}


def random_params(key):
    keys = jax.random.split(key, len(PARAMS_SHAPES))
    return {
        k: jax.random.normal(kk, s) for kk, (k, s) in zip(keys, PARAMS_SHAPES.items(), strict=True)
    }


def test_schedule_is_zhu_gupta_cubic():
    s_i, s_f, t0, end, dt = 0.1, 0.95, 20, 120, 10
    schedule = jax.jit(
        gj.gmp_schedule(s_f, begin_step=t0, end_step=end, update_every=dt, initial_sparsity=s_i)
    )
    for t in range(0, 200):
        if t < t0:
            want = 0.0
        else:
            last = min(t0 + (t - t0) // dt * dt, end)
            want = s_f + (s_i - s_f) * (1 - (last - t0) / (end - t0)) ** 3
        assert abs(float(schedule(t)) - want) < 1e-6, t
    assert float(schedule(70)) == float(schedule(79))  # constant between pruning steps


def test_schedule_errors():
    with pytest.raises(ValueError, match=r"final_sparsity must lie in \[0, 1\), got 1.0"):
        gj.gmp_schedule(1.0, begin_step=0, end_step=10)
    with pytest.raises(ValueError, match=r"begin_step=5, end_step=2, update_every=1"):
        gj.gmp_schedule(0.9, begin_step=5, end_step=2)


def reference_keep(params, masks, sparsity, allocation):
    """The kept positions by a sort (test reference only), ties by leaf order then flat index."""
    names = [k for k in params if masks[k] is not None]
    if allocation == "per_layer":
        out = {}
        for k in names:
            w, m = np.abs(np.asarray(params[k])).ravel(), np.asarray(masks[k]).ravel()
            keep = min(round((1 - sparsity) * w.size), int(m.sum()))
            order = sorted(np.flatnonzero(m), key=lambda i: (-w[i], i))[:keep]
            sel = np.zeros(w.size, bool)
            sel[order] = True
            out[k] = sel.reshape(params[k].shape)
        return out
    entries = [
        (-abs(float(np.asarray(params[k]).ravel()[i])), j, i)
        for j, k in enumerate(names)
        for i in np.flatnonzero(np.asarray(masks[k]).ravel())
    ]
    total = sum(params[k].size for k in names)
    keep = sorted(entries)[: round((1 - sparsity) * total)]
    out = {k: np.zeros(params[k].size, bool) for k in names}
    for _, j, i in keep:
        out[names[j]][i] = True
    return {k: v.reshape(params[k].shape) for k, v in out.items()}


@pytest.mark.parametrize("allocation", ["per_layer", "global"])
def test_prune_is_exact_and_matches_sort_reference(allocation, getkey):
    params = random_params(getkey())
    params["a"] = jnp.round(params["a"])  # many ties at equal magnitude
    masks = gj.full_masks(params)
    prune = jax.jit(chex.assert_max_traces(gj.magnitude_prune, n=1), static_argnames="allocation")
    for sparsity in (0.3, 0.6, 0.9):  # traced: one compilation for every sparsity
        new_params, new_masks, info = prune(
            params, masks, sparsity=jnp.float32(sparsity), allocation=allocation
        )
        want = reference_keep(params, masks, sparsity, allocation)
        for k, v in want.items():
            np.testing.assert_array_equal(new_masks[k], v, err_msg=f"{k} at {sparsity}")
            assert not bool((new_masks[k] & ~masks[k]).any())  # masks only shrink
            assert not bool(jnp.where(new_masks[k], 0.0, new_params[k]).any())
            assert int(info["active"][k]) == v.sum()
            assert int(info["pruned"][k]) == int(masks[k].sum()) - v.sum()
        assert new_masks["bias"] is None
        np.testing.assert_array_equal(new_params["bias"], params["bias"])
        params, masks = new_params, new_masks


def test_hand_computed_global_vs_per_layer():
    p = {"a": jnp.array([[1.0, -4.0], [3.0, 2.0]]), "b": jnp.array([[9.0, 8.0], [7.0, 6.0]])}
    _, m, _ = gj.magnitude_prune(p, gj.full_masks(p), sparsity=0.5)
    np.testing.assert_array_equal(m["a"], [[False, True], [True, False]])
    np.testing.assert_array_equal(m["b"], [[True, True], [False, False]])
    _, m, _ = gj.magnitude_prune(p, gj.full_masks(p), sparsity=0.5, allocation="global")
    assert not bool(m["a"].any()) and bool(m["b"].all())


def test_prune_never_grows_a_mask(getkey):
    params = random_params(getkey())
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.8), getkey())
    _, new, info = gj.magnitude_prune(params, masks, sparsity=0.5)  # already sparser
    for k in ("a", "b", "c"):
        np.testing.assert_array_equal(new[k], masks[k])
        assert int(info["pruned"][k]) == 0


def test_dense_to_sparse_run_under_cond(getkey):
    params = random_params(getkey())
    masks = gj.full_masks(params)
    schedule = gj.gmp_schedule(0.9, begin_step=10, end_step=60, update_every=10)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, masks, t, key):
        params = gj.apply_masks(
            jax.tree.map(
                lambda p, k: p + 0.1 * jax.random.normal(k, p.shape),
                params,
                dict(zip(params, jax.random.split(key, len(params)), strict=True)),
            ),
            masks,
        )
        due = (t >= 10) & (t <= 60) & (t % 10 == 0)
        return jax.lax.cond(
            due,
            lambda a: gj.magnitude_prune(*a, sparsity=schedule(t))[:2],
            lambda a: a,
            (params, masks),
        )

    densities = []
    for t in range(80):
        params, masks = step(params, masks, t, jax.random.fold_in(getkey(), t))
        densities.append(float(gj.global_density(masks)))
    sizes = {k: int(np.prod(s)) for k, s in PARAMS_SHAPES.items() if k != "bias"}
    for k, size in sizes.items():
        assert int(masks[k].sum()) == round(0.1 * size)
    assert densities[19] == 1.0 and densities[20] < 1.0  # s_i = 0: the first prune is empty
    assert all(a >= b for a, b in zip(densities[:-1], densities[1:], strict=True))
    assert densities[60] == densities[79]  # frozen after end_step
