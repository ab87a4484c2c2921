"""Reset the optimizer state of pruned and regrown weights, for any optax optimizer."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from ggr_jax._tree import PyTree, map_sparse


def reset_optimizer_state(
    optimizer: optax.GradientTransformation | Any,
    opt_state: optax.OptState,
    masks: PyTree,
    new_masks: PyTree,
) -> optax.OptState:
    """Zeroes every params-shaped part of ``opt_state`` where a weight was pruned or regrown.

    Momentum, Adam's moments, Lion's, Nesterov's or any other per-weight state of weights that
    are active in both ``masks`` and ``new_masks`` is kept; everything else becomes exactly 0.
    The params-shaped parts are found with ``optax.tree_utils.tree_map_params``, which asks the
    optimizer's own ``init``: no list of state types. Gradient accumulators of
    :func:`accumulate_gradients` (``"mean"``, ``"mean_abs"``) in the same state are reset
    entirely; its EMA runs on.

    Args:
      optimizer: the optax transformation (or its ``init``) that produced ``opt_state``.
      opt_state: its state.
      masks: masks before the topology update.
      new_masks: masks after it.

    Returns:
      The optimizer state with the same structure and dtypes.

    Example:
      >>> import jax.numpy as jnp, optax, ggr_jax as gj
      >>> tx = optax.adam(1e-3)
      >>> p = {"w": jnp.ones(3)}
      >>> state = tx.update(p, tx.init(p), p)[1]
      >>> new = gj.reset_optimizer_state(tx, state, {"w": jnp.array([1, 1, 0], bool)},
      ...                                {"w": jnp.array([1, 0, 1], bool)})
      >>> new[0].mu["w"]
      Array([0.1, 0. , 0. ], dtype=float32)
    """
    keep = map_sparse(lambda a, b: a & b, masks, new_masks)

    def reset(x: Any, k: Any) -> Any:
        if k is None or getattr(x, "shape", None) != k.shape:
            return x
        return jnp.where(k, x, jnp.zeros((), x.dtype))

    ema = otu.tree_get(opt_state, "grad_ema")  # a growth signal, not a moment: kept whole
    opt_state = otu.tree_map_params(optimizer, reset, opt_state, keep)
    if ema is not None:
        opt_state = otu.tree_set(opt_state, grad_ema=ema)
    if otu.tree_get_all_with_path(opt_state, "grad_sum"):
        opt_state = otu.tree_set(
            opt_state,
            grad_sum=otu.tree_zeros_like(otu.tree_get(opt_state, "grad_sum")),
            grad_count=jnp.zeros((), jnp.int32),
        )
    return opt_state
