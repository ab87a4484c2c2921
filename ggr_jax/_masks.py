"""Masks: random initial masks with exact counts, applying masks, and density summaries."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ggr_jax._select import order_key, top_k_per_leaf
from ggr_jax._tree import (
    PyTree,
    check_masks,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    map_sparse,
    unflatten_at,
)


def _active_count(path: str, density: Any, size: int) -> Any:
    """Exact count for a density (or an integer count given directly)."""
    if np.issubdtype(np.result_type(density), np.integer):
        if is_concrete(density) and not 0 <= int(density) <= size:
            raise ValueError(
                f"active count of leaf {path!r} must lie in [0, {size}], got {density}"
            )
        return jnp.asarray(density, jnp.int32)
    check_unit_interval(density, name=f"density of leaf {path!r}")
    if is_concrete(density):
        return jnp.int32(int(np.round(np.float64(density) * size)))
    return jnp.round(jnp.clip(density, 0.0, 1.0) * size).astype(jnp.int32)


def random_masks(params: PyTree, densities: PyTree, key: jax.Array) -> PyTree:
    """Random masks with exactly ``round(density * size)`` active entries per sparsified leaf.

    Args:
      params: pytree of arrays (only shapes are used).
      densities: pytree parallel to params: a density in [0, 1] (or an integer active count) for
        each sparsified leaf, ``None`` for dense leaves; e.g. from :func:`erk_densities`.
      key: PRNG key; each leaf gets its own subkey.

    Returns:
      Pytree of bool arrays (``None`` for dense leaves).

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> p = {"w": jnp.ones((4, 5)), "b": jnp.ones(5)}
      >>> m = gj.random_masks(p, gj.uniform_densities(p, 0.5), jax.random.key(0))
      >>> int(m["w"].sum()), m["b"]
      (10, None)
    """
    paths, dens, treedef = leaves_with_paths(densities)
    _, leaves, p_def = leaves_with_paths(params)
    if p_def != treedef:
        raise ValueError(f"densities tree structure does not match params: {treedef} vs {p_def}")
    sparse = [i for i, d in enumerate(dens) if d is not None]
    keys = jax.random.split(key, max(len(sparse), 1))
    counts = (
        jnp.stack([_active_count(paths[i], dens[i], int(np.size(leaves[i]))) for i in sparse])
        if sparse
        else jnp.zeros((0,), jnp.int32)
    )
    scores = [
        order_key(jax.random.uniform(keys[j], np.shape(leaves[i]))) for j, i in enumerate(sparse)
    ]
    selected = top_k_per_leaf(scores, [jnp.ones(s.shape, bool) for s in scores], counts)
    return unflatten_at(treedef, len(leaves), sparse, selected)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the entries of ``params`` outside ``masks``; dense leaves pass through.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> gj.apply_masks({"w": jnp.ones(3)}, {"w": jnp.array([True, False, True])})["w"]
      Array([1., 0., 1.], dtype=float32)
    """
    check_masks(params, masks)
    return map_sparse(
        lambda m, p: jnp.where(m, p, jnp.zeros((), p.dtype)), masks, params, dense=lambda p: p
    )


def active_counts(masks: PyTree) -> PyTree:
    """Per-leaf number of active entries (int32 scalars; ``None`` for dense leaves)."""
    return map_sparse(lambda m: jnp.sum(m, dtype=jnp.int32), masks)


def mask_densities(masks: PyTree) -> PyTree:
    """Per-leaf density of each mask (float32 scalars; ``None`` for dense leaves; 1 for an empty
    mask, which has nothing inactive).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> float(gj.mask_densities({"w": jnp.array([True, False])})["w"])
      0.5
    """
    return map_sparse(
        lambda m: jnp.mean(m, dtype=jnp.float32) if m.size else jnp.ones((), jnp.float32), masks
    )


def global_density(masks: PyTree) -> jax.Array:
    """Active entries over total entries of all sparsified leaves (float32 scalar).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> float(gj.global_density({"a": jnp.array([True, False]), "b": jnp.zeros(2, bool)}))
      0.25
    """
    leaves = [m for m in jax.tree.leaves(masks) if m is not None]
    active = sum(jnp.sum(m, dtype=jnp.float32) for m in leaves)
    return jnp.asarray(active, jnp.float32) / max(sum(int(np.size(m)) for m in leaves), 1)
