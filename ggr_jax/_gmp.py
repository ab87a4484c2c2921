"""Gradual magnitude pruning (GMP): dense-to-sparse training, the baseline of every DST paper.

Zhu & Gupta 2017, "To prune, or not to prune", https://arxiv.org/abs/1710.01878: training starts
dense; every ``update_every`` steps from ``begin_step`` to ``end_step`` the smallest-magnitude
weights are pruned to the sparsity of a cubic schedule

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3,

which prunes fast early (when many weights are redundant) and slowly near the end. Pruned weights
never come back. Allocation is per layer (each layer pruned to ``s_t``, as in the paper) or global
(one magnitude threshold over all sparsified layers taken together).

Use: start from :func:`full_masks`, keep the masking transforms in the optax chain as for any
mask, and call :func:`magnitude_prune` with ``sparsity=schedule(step)`` on pruning steps (under
``lax.cond``); reset the optimizer state of pruned weights with :func:`reset_optimizer_state`.
Every selection goes through the threshold kernel of ``_select.py``: exact counts, no sort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ggr_jax._select import count_true, order_key, select_global, select_per_leaf
from ggr_jax._tree import (
    PyTree,
    check_masks,
    check_spec,
    check_unit_interval,
    leaves_with_paths,
    unflatten_at,
)


def gmp_schedule(
    final_sparsity: float,
    *,
    begin_step: int,
    end_step: int,
    update_every: int = 1,
    initial_sparsity: float = 0.0,
) -> Callable[[Any], Any]:
    """Zhu & Gupta's cubic sparsity schedule, constant between pruning steps.

    Args:
      final_sparsity: ``s_f``, reached at ``end_step`` and kept after it.
      begin_step: ``t_0``, the first pruning step (the model is dense before it).
      end_step: ``t_0 + n * dt``, the last pruning step.
      update_every: ``dt``, steps between prunings; the schedule at step ``t`` is its value at
        the last pruning step ``<= t``.
      initial_sparsity: ``s_i``, the sparsity of the first pruning.

    Returns:
      A function ``step -> sparsity`` (float32; jittable, ``step`` may be traced), built on
      ``optax.polynomial_schedule(power=3)``.

    Example:
      >>> import ggr_jax as gj
      >>> s = gj.gmp_schedule(0.9, begin_step=0, end_step=100, update_every=10)
      >>> [round(float(s(t)), 4) for t in (0, 50, 59, 100, 500)]
      [0.0, 0.7875, 0.7875, 0.9, 0.9]
    """
    check_unit_interval(final_sparsity, name="final_sparsity", closed_right=False)
    check_unit_interval(initial_sparsity, name="initial_sparsity", closed_right=False)
    if not 0 <= begin_step <= end_step or update_every < 1:
        raise ValueError(
            f"need 0 <= begin_step <= end_step and update_every >= 1, got begin_step="
            f"{begin_step}, end_step={end_step}, update_every={update_every}"
        )
    cubic = optax.polynomial_schedule(
        initial_sparsity, final_sparsity, power=3, transition_steps=max(end_step - begin_step, 1)
    )

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        last = begin_step + (step - begin_step) // update_every * update_every
        value = jnp.asarray(cubic(jnp.clip(last, begin_step, end_step) - begin_step), jnp.float32)
        return jnp.where(step < begin_step, jnp.float32(0.0), value)

    return schedule


def full_masks(params: PyTree, *, spec: PyTree | None = None) -> PyTree:
    """All-True masks for the sparsified leaves (``None`` for dense ones): GMP's dense start.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> gj.full_masks({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
      {'b': None, 'w': Array([[ True,  True],
             [ True,  True]], dtype=bool)}
    """
    _, leaves, treedef = leaves_with_paths(params)
    sparse = [i for i, f in enumerate(check_spec(params, spec)) if f]
    return unflatten_at(
        treedef, len(leaves), sparse, [jnp.ones(np.shape(leaves[i]), bool) for i in sparse]
    )


def magnitude_prune(
    params: PyTree,
    masks: PyTree,
    *,
    sparsity: Any,
    allocation: Literal["per_layer", "global"] = "per_layer",
) -> tuple[PyTree, PyTree, dict[str, Any]]:
    """Prunes the smallest-magnitude active weights down to ``sparsity``; masks only shrink.

    ``"per_layer"``: each sparsified layer keeps ``round((1 - sparsity) * size)`` of its active
    weights (all of them if it has fewer). ``"global"``: the ``round((1 - sparsity) * N)`` active
    weights of largest |w| over all sparsified layers together are kept (``N``: their total size);
    a layer may lose more or less than ``sparsity`` of its weights, down to none.

    Args:
      params: pytree of arrays.
      masks: bool masks parallel to params (``None`` for dense leaves); :func:`full_masks` at the
        start of GMP.
      sparsity: target in [0, 1] (may be traced, e.g. ``gmp_schedule(...)(step)``; counts are then
        computed in float32, exact for layers below about 2**24 entries).
      allocation: ``"per_layer"`` or ``"global"``.

    Returns:
      ``(new_params, new_masks, info)``: params zeroed outside the new masks; ``info`` holds
      per-leaf ``active`` and ``pruned`` counts (int32, ``None`` for dense leaves).

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> p = {"a": jnp.array([[1., -4.], [3., 2.]]), "b": jnp.array([[9., 8.], [7., 6.]])}
      >>> prune = jax.jit(gj.magnitude_prune, static_argnames="allocation")
      >>> _, m, _ = prune(p, gj.full_masks(p), sparsity=0.5)
      >>> m["a"]
      Array([[False,  True],
             [ True, False]], dtype=bool)
      >>> _, m, info = prune(p, gj.full_masks(p), sparsity=0.5, allocation="global")
      >>> int(info["active"]["a"]), int(info["active"]["b"])
      (0, 4)
    """
    check_masks(params, masks)
    check_unit_interval(sparsity, name="sparsity")
    if allocation not in ("per_layer", "global"):
        raise ValueError(f"allocation must be 'per_layer' or 'global', got {allocation!r}")
    _, m_leaves, treedef = leaves_with_paths(masks)
    w_leaves = leaves_with_paths(params)[1]
    sparse = [i for i, m in enumerate(m_leaves) if m is not None]
    if not sparse:
        return params, masks, {"active": masks, "pruned": masks}
    masks_in, weights = [m_leaves[i] for i in sparse], [w_leaves[i] for i in sparse]
    keep_share = 1.0 - jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
    sizes = np.asarray([int(np.size(w)) for w in weights], np.float32)
    active = jnp.stack([count_true(m) for m in masks_in])
    keys = [(lambda w: order_key(jnp.abs(w)), (w,)) for w in weights]
    if allocation == "per_layer":
        keep = jnp.round(keep_share * sizes).astype(jnp.int32)
        new_masks, kept = select_per_leaf(
            keys, masks_in, jnp.minimum(keep, active), n_eligible=active
        )
    else:
        keep = jnp.round(keep_share * jnp.float32(sizes.sum())).astype(jnp.int32)
        new_masks, kept = select_global(
            keys, masks_in, jnp.minimum(keep, jnp.sum(active)), n_eligible=active
        )
    leaves_p, leaves_m = list(w_leaves), list(m_leaves)
    for j, i in enumerate(sparse):
        leaves_m[i] = new_masks[j]
        leaves_p[i] = jnp.where(new_masks[j], weights[j], jnp.zeros((), weights[j].dtype))
    n = len(m_leaves)
    info = {
        "active": unflatten_at(treedef, n, sparse, list(kept)),
        "pruned": unflatten_at(treedef, n, sparse, list(active - kept)),
    }
    return (
        jax.tree_util.tree_unflatten(treedef, leaves_p),
        jax.tree_util.tree_unflatten(treedef, leaves_m),
        info,
    )
