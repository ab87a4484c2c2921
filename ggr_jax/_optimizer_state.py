"""Reset the optimizer state of pruned and regrown weights, for any optax optimizer."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from ggr_jax._tree import PyTree, check_like, leaves_with_paths, map_sparse


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

    Raises:
      ValueError: (at trace time) when ``masks`` and ``new_masks`` differ in structure or a leaf's
        shape, a mask leaf is not bool, or a mask's shape differs from the params-shaped state it
        resets.

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
    _check_mask_pair(masks, new_masks)
    keep = map_sparse(lambda a, b: a & b, masks, new_masks)

    def reset(x: Any, k: Any) -> Any:
        shape = getattr(x, "shape", None)
        if k is None or shape is None or len(shape) != k.ndim:
            return x  # not per-weight state (a count, a factored moment)
        if tuple(shape) != tuple(k.shape):
            raise ValueError(
                f"a mask of shape {tuple(k.shape)} does not match the optimizer state it resets, "
                f"of shape {tuple(shape)}: the masks must have the params' shapes"
            )
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


def _check_mask_pair(masks: PyTree, new_masks: PyTree) -> None:
    check_like(masks, new_masks, name="new_masks", ref="masks")
    paths, old, _ = leaves_with_paths(masks)
    for path, a, b in zip(paths, old, leaves_with_paths(new_masks)[1], strict=True):
        for name, m in (("masks", a), ("new_masks", b)):
            dtype = getattr(m, "dtype", None)
            if m is not None and (dtype is None or jnp.dtype(dtype) != jnp.bool_):
                raise ValueError(f"{name} leaf {path!r} must be a bool array, got dtype {dtype}")
