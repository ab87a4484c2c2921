"""Golden outputs: every method's topology update and a short dynamic_sparse run, bit-exact.

Refactors of redistribute / dynamic_sparse must leave these unchanged. A change of behaviour on
purpose regenerates the file and says so in its commit and in CHANGELOG.md:

    GGR_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py

The ``traj_*`` entries were regenerated once on purpose (issue 11): dynamic_sparse now runs the
topology update before the step's optimizer update, through ``update_topology``, with the
experiments' signals; every ``redistribute`` entry stayed bit-identical.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ggr_jax as gj

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "topology.npz")
REGENERATE = os.environ.get("GGR_REGENERATE_GOLDEN") == "1"

METHODS = {
    "static": gj.static(),
    "set": gj.set(),
    "rigl": gj.rigl(),
    "rigl_no_regrow": gj.Method("rigl_no_regrow", regrow_pruned=False),
    "snfs": gj.snfs(),
    "ggr": gj.ggr(rho=0.5, normalize=None, signal="batch"),  # v1 defaults, explicit
    "ggr_rho1": gj.ggr(rho=1.0, normalize=None),
    "ggr_rho0": gj.ggr(rho=0.0, normalize=None),
    "ggr_l2_no_regrow": gj.ggr(rho=0.25, normalize="l2", regrow_pruned=False),
    "ggr_rms_floor": gj.ggr(rho=0.5, normalize="rms", unit_floor=True),
    "ggr_weight": gj.ggr(rho=1.0, normalize="weight"),
    "ggr_max": gj.ggr(rho=0.5, normalize="max"),
}
# Every option is spelled out: the outputs stay pinned when ggr()'s defaults change.
TRAJECTORIES = {
    "rigl": gj.rigl(),
    "snfs": gj.snfs(),
    "ggr_ema": gj.ggr(rho=0.5, signal="ema", normalize="rms"),
    "ggr_mean": gj.ggr(rho=0.5, normalize=None, signal="mean"),
    "set_mean_abs": gj.Method("set_mean_abs", place="random", signal="mean_abs"),
}


def inputs():
    """A dense kernel, a conv kernel (one tiny layer at its floor), a dense bias."""
    shapes = {"a": (24, 16), "b": (3, 3, 4, 8), "c": (16, 4), "bias": (16,)}
    keys = dict(zip(sorted(shapes), jax.random.split(jax.random.key(42), len(shapes)), strict=True))
    params = {k: jax.random.normal(keys[k], s) for k, s in shapes.items()}
    masks = gj.random_masks(params, gj.erk_densities(params, 0.8), jax.random.key(7))
    params = gj.apply_masks(params, masks)
    grads = {
        k: jax.random.normal(jax.random.fold_in(keys[k], 1), s) * (1 + i)
        for i, (k, s) in enumerate(shapes.items())
    }
    momentum = {k: jax.random.normal(jax.random.fold_in(keys[k], 2), s) for k, s in shapes.items()}
    return params, masks, grads, momentum


def flat(prefix, tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    return {
        f"{prefix}/{jax.tree_util.keystr(p)}": np.asarray(x) for p, x in leaves if x is not None
    }


def outputs():
    params, masks, grads, momentum = inputs()
    out = {}
    for name, method in METHODS.items():
        update = jax.jit(gj.redistribute, static_argnames=("method",))
        p, m, info = update(
            params,
            masks,
            grads,
            jax.random.key(3),
            method=method,
            fraction=jnp.float32(0.3),
            momentum=momentum,
        )
        out |= flat(f"{name}/params", p) | flat(f"{name}/masks", m) | flat(f"{name}/info", info)
    for name, method in TRAJECTORIES.items():
        tx = gj.dynamic_sparse(
            optax.sgd(0.1, momentum=0.9),
            masks,
            key=jax.random.key(5),
            method=method,
            update_every=2,
            end_step=9,
        )
        p, state = params, tx.init(params)
        step = jax.jit(tx.update)
        for t in range(10):
            g = jax.tree.map(lambda x, t=t: jnp.sin(x * (t + 1.0)) + 0.1 * x, grads)
            updates, state = step(g, state, p)
            p = optax.apply_updates(p, updates)
        out |= flat(f"traj_{name}/params", p) | flat(f"traj_{name}/masks", gj.get_masks(state))
    return out


def test_topology_updates_are_bit_identical_to_golden():
    got = outputs()
    if REGENERATE:
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        np.savez_compressed(GOLDEN, **got)
        pytest.fail("regenerated tests/golden/topology.npz: commit it and say why")
    want = np.load(GOLDEN)
    assert sorted(want.files) == sorted(got)
    for k in want.files:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got[k].dtype == want[k].dtype, k
