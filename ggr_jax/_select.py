"""Exact k-largest selection by threshold search: the one hot kernel of ggr_jax.

Selecting the k largest entries (per leaf, or over all leaves taken together as GGR's global
top-k requires) is done without sorting and without concatenating leaves:

1. Each float score is mapped to an order-preserving ``uint32`` key.
2. Bisection on the key finds the largest threshold ``t`` with ``count(key >= t) >= k``. Each step
   is one comparison and one count per leaf, summed to a scalar: O(n) work per step, at most 32
   steps, and every step is a plain reduction, so it shards across devices without gathering.
3. Entries tied at ``t`` are taken in leaf order, then by lowest flat index inside the leaf (a
   second bisection, on the index), so the selected count is exactly ``k`` and deterministic.

``k`` may be traced (dynamic): there is no static upper bound as with ``lax.top_k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_U32_MAX = np.uint32(0xFFFFFFFF)


def order_key(x: jax.Array) -> jax.Array:
    """Maps floats to ``uint32`` keys with the same order (``-0.0`` and ``0.0`` are equal).

    NaN maps above +inf (positive NaN) or below -inf (negative NaN); callers that care reject
    non-finite inputs before selecting.
    """
    x = x.astype(jnp.float32) + jnp.float32(0.0)  # -0.0 -> +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31).astype(jnp.bool_)
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _flat_index(shape: Sequence[int]) -> jax.Array:
    """Row-major flat index of every element, built from iotas (no reshape, shards cleanly)."""
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**31:
        raise ValueError(f"a leaf of {size} elements is too large for int32 indexing (shape {shape})")
    idx = jnp.zeros(shape, jnp.int32)
    stride = 1
    for d in reversed(range(len(shape))):
        idx = idx + lax.broadcasted_iota(jnp.int32, tuple(shape), d) * jnp.int32(stride)
        stride *= shape[d]
    return idx


def _count(pred: jax.Array) -> jax.Array:
    return jnp.sum(pred, dtype=jnp.int32)


def _select(
    keys: Sequence[jax.Array],
    eligible: Sequence[jax.Array],
    k: jax.Array,
    groups: Sequence[int],
    num_groups: int,
) -> list[jax.Array]:
    """Selects, in each group of leaves, the ``k[g]`` eligible entries of largest key."""
    n = len(keys)
    groups_arr = np.asarray(groups)

    def group_sum(per_leaf: Sequence[jax.Array]) -> jax.Array:
        # Static scatter of per-leaf scalars into groups: a few scalar adds, no gather of arrays.
        return jnp.stack(
            [
                sum((per_leaf[i] for i in np.flatnonzero(groups_arr == g)), jnp.int32(0))
                for g in range(num_groups)
            ]
        )

    def counts_ge(t: jax.Array) -> jax.Array:
        return group_sum([_count(e & (x >= t[groups[i]])) for i, (x, e) in enumerate(zip(keys, eligible))])

    n_elig = group_sum([_count(e) for e in eligible])
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, n_elig)

    # Phase 1: per group, the largest t with count(key >= t) >= k (bisection on uint32).
    # k == 0 starts (and ends) at the top key, where nothing lies strictly above.
    hi = jnp.full((num_groups,), _U32_MAX, jnp.uint32)
    lo = jnp.where(k > 0, jnp.uint32(0), hi)

    def open_groups(state):
        lo, hi, cnt = state
        return (lo < hi) & (cnt != k)

    def value_step(state):
        lo, hi, cnt = state
        active = open_groups(state)
        mid = lo + (hi - lo) // 2 + jnp.uint32(1)
        mid = jnp.where(active, mid, lo)
        c = counts_ge(mid)
        up = active & (c >= k)
        down = active & (c < k)
        return (
            jnp.where(up, mid, lo),
            jnp.where(down, mid - jnp.uint32(1), hi),
            jnp.where(up, c, cnt),
        )

    lo, hi, cnt = lax.while_loop(lambda s: jnp.any(open_groups(s)), value_step, (lo, hi, n_elig))
    t = lo
    # cnt == count(key >= t) >= k. Entries with key > t are all in; ties at t fill the rest.
    above = [e & (x > t[groups[i]]) for i, (x, e) in enumerate(zip(keys, eligible))]
    tied = [e & (x == t[groups[i]]) for i, (x, e) in enumerate(zip(keys, eligible))]
    need = k - group_sum([_count(a) for a in above])  # per group, >= 0
    tie_counts = [_count(tie) for tie in tied]
    # Ties are taken leaf by leaf in leaf order: per-leaf take from the group's prefix sums.
    take = []
    before = [jnp.int32(0)] * num_groups
    for i in range(n):
        g = groups[i]
        take.append(jnp.clip(need[g] - before[g], 0, tie_counts[i]))
        before[g] = before[g] + tie_counts[i]
    take = jnp.stack(take)
    tie_counts = jnp.stack(tie_counts)
    sizes = jnp.asarray([int(np.prod(x.shape, dtype=np.int64)) for x in keys], jnp.int32)

    # Phase 2: per leaf, the smallest index bound j with count(tied & idx < j) >= take.
    index = [_flat_index(x.shape) for x in keys]
    jlo = jnp.where(take >= tie_counts, sizes, 0)
    jhi = jnp.where(take <= 0, 0, sizes)

    def index_step(state):
        jlo, jhi = state
        active = jlo < jhi
        mid = jlo + (jhi - jlo) // 2
        c = jnp.stack([_count(tie & (ix < mid[i])) for i, (tie, ix) in enumerate(zip(tied, index))])
        enough = active & (c >= take)
        return jnp.where(active & ~enough, mid + 1, jlo), jnp.where(enough, mid, jhi)

    jlo, _ = lax.while_loop(lambda s: jnp.any(s[0] < s[1]), index_step, (jlo, jhi))
    return [a | (tie & (ix < jlo[i])) for i, (a, tie, ix) in enumerate(zip(above, tied, index))]


def top_k_per_leaf(
    keys: Sequence[jax.Array], eligible: Sequence[jax.Array], k: jax.Array
) -> list[jax.Array]:
    """In each leaf ``i``, selects the ``k[i]`` eligible entries with the largest key.

    Args:
      keys: ``uint32`` arrays from :func:`order_key`.
      eligible: bool arrays of the same shapes; ineligible entries are never selected.
      k: int vector, one count per leaf (may be traced); clipped to ``[0, #eligible]``.

    Returns:
      Bool arrays with exactly ``clip(k[i], 0, #eligible_i)`` entries set in leaf ``i``.
    """
    if not keys:
        return []
    return _select(keys, eligible, k, list(range(len(keys))), len(keys))


def top_k_global(
    keys: Sequence[jax.Array], eligible: Sequence[jax.Array], k: jax.Array
) -> list[jax.Array]:
    """Selects the ``k`` eligible entries with the largest key over all leaves taken together.

    Equal to a top-k over the concatenation of all leaves, ties broken by leaf order then flat
    index, computed without concatenating.

    Args:
      keys: ``uint32`` arrays from :func:`order_key`.
      eligible: bool arrays of the same shapes.
      k: int scalar (may be traced); clipped to ``[0, total #eligible]``.

    Returns:
      Bool arrays, one per leaf, with exactly ``clip(k, 0, #eligible)`` entries set in total.
    """
    if not keys:
        return []
    return _select(keys, eligible, jnp.reshape(k, (1,)), [0] * len(keys), 1)
