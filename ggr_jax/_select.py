"""Exact k-largest selection by threshold search: the one hot kernel of ggr_jax.

Selecting the k largest entries (per leaf, or over all leaves taken together as GGR's global
top-k requires) is done without sorting and without concatenating leaves:

1. Each float score is mapped to an order-preserving ``uint32`` key, and ineligible entries are
   folded into key 0 once, so that a search pass reads one ``uint32`` array per leaf.
2. Bisection on the key finds the largest threshold ``t`` with ``count(key >= t) >= k``. Each pass
   is one comparison and one count per leaf, summed to a scalar: O(n) work per pass, at most 32
   passes (it stops as soon as a count equals ``k``), and every pass is a plain reduction, so it
   shards across devices without gathering.
3. Entries tied at ``t`` are taken in leaf order, then by lowest flat index inside the leaf (a
   second bisection, on the index, run only when some leaf must take part of its ties), so the
   selected count is exactly ``k`` and deterministic.

``k`` may be traced (dynamic): there is no static upper bound as with ``lax.top_k``.

Performance notes (measured on XLA:CPU, see ``benchmarks/``): a count is written as a sum over
chunks of at most 32 entries of the last axis followed by a sum of the chunk totals, which XLA
fuses with the comparison into one loop; a plain ``jnp.sum`` of a large boolean array is instead
rewritten into a tree of reduce-windows that first materialises an ``int32`` copy of the
predicate. Per-leaf counts at both ends of the bracket are carried through the search, so the
selected count of every leaf is known without counting the result again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_U32_MAX = np.uint32(0xFFFFFFFF)
_CHUNK = 32  # XLA:CPU fuses a reduction over <= 32 entries with its producer


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


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_keys(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Uniformly random ``uint32`` keys, all distinct, for selecting random positions.

    A counter-based hash of each entry's flat index (MurmurHash3's finaliser, twice), seeded by two
    words drawn from ``key``. On CPU it is ~40x cheaper than ``jax.random.bits`` for large arrays;
    like it, the result does not depend on how the array is sharded. The map from index to key is a
    bijection, so a selection by these keys never meets a tie.
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    index = _flat_index(shape).astype(jnp.uint32)
    return _fmix32(_fmix32(index ^ seed[0]) + seed[1])


def _chunk(d: int, reserve: int = 7) -> int:
    """A chunk length ``c`` (a divisor of ``d``, at most 32) for splitting an axis as ``(d / c, c)``.

    A device holding a contiguous block of a power-of-two sharding of the axis must hold whole
    chunks, or XLA's partitioner gathers the array. An odd ``c`` always divides the block; powers
    of two are used only while ``d / c`` keeps a factor ``2**reserve`` (shardings up to 128 ways).
    Returns 1 when no such chunk helps.
    """
    twos = (d & -d).bit_length() - 1
    odd = d >> twos
    best = 1
    for o in range(1, min(odd, _CHUNK) + 1, 2):
        if odd % o:
            continue
        c = o << min(max(twos - reserve, 0), (_CHUNK // o).bit_length() - 1)
        best = max(best, c)
    return best


def count_true(pred: jax.Array) -> jax.Array:
    """Number of True entries of ``pred`` (int32 scalar), as one fused, vectorised pass.

    The first-level sum runs over axes of at most 32 entries that are not the last (contiguous)
    axis: XLA:CPU fuses such a reduction with the producer of ``pred`` and vectorises it along the
    last axis. (A plain ``jnp.sum`` of a large array is rewritten into a tree of reduce-windows that
    first writes an ``int32`` copy of ``pred``.) Axes are split only into chunks that keep the
    shards of a power-of-two sharding whole, so the count needs no gather (see :func:`_chunk`).
    """
    shape = pred.shape
    if pred.ndim == 0:
        return pred.astype(jnp.int32)
    axes = [a for a in range(pred.ndim - 1) if shape[a] <= _CHUNK]
    new_shape = list(shape)
    if pred.ndim >= 2 and shape[-2] > _CHUNK:
        c = _chunk(shape[-2])
        if c > 1:
            new_shape[-2:-1] = [shape[-2] // c, c]
            axes.append(pred.ndim - 1)  # the chunk axis, in the new shape
    elif pred.ndim == 1 and shape[0] > _CHUNK:
        c = _chunk(shape[0])  # a vector: chunks of the last axis (fused, not vectorised)
        if c > 1:
            new_shape = [shape[0] // c, c]
            axes.append(1)
    if not axes:
        return jnp.sum(pred, dtype=jnp.int32)
    partial = jnp.sum(pred.reshape(new_shape), axis=tuple(axes), dtype=jnp.int32)
    # The uint32 round trip keeps XLA from merging the two reductions back into one.
    return jnp.sum(partial.astype(jnp.uint32), dtype=jnp.uint32).astype(jnp.int32)


def _select(
    keys: Sequence[jax.Array],
    eligible: Sequence[jax.Array],
    k: jax.Array,
    groups: Sequence[int],
    num_groups: int,
) -> tuple[list[jax.Array], jax.Array]:
    """Selects, in each group of leaves, the ``k[g]`` eligible entries of largest key.

    Returns the selection masks and the number of entries selected in each leaf.
    """
    n = len(keys)
    groups_arr = np.asarray(groups)
    members = [np.flatnonzero(groups_arr == g) for g in range(num_groups)]

    def group_sum(per_leaf: jax.Array) -> jax.Array:
        # Static scatter of per-leaf scalars into groups: a few scalar adds, no gather of arrays.
        return jnp.stack([sum((per_leaf[i] for i in members[g]), jnp.int32(0))
                          for g in range(num_groups)])

    def per_leaf(v: jax.Array) -> list[jax.Array]:
        return [v[g] for g in groups]

    # Ineligible entries become key 0. Every threshold tried is >= 1, so a count on the folded
    # keys is exactly the count of eligible entries; the threshold 0 itself is never tried (its
    # count is the number of eligible entries, known up front).
    folded = [jnp.where(e, x, jnp.uint32(0)) for x, e in zip(keys, eligible)]
    n_elig_leaf = jnp.stack([count_true(e) for e in eligible])
    n_elig = group_sum(n_elig_leaf)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, n_elig)
    positive = k > 0

    def counts_ge(t: jax.Array) -> jax.Array:
        tl = per_leaf(t)
        return jnp.stack([count_true(x >= tl[i]) for i, x in enumerate(folded)])

    # Phase 1: per group, the largest t with count(key >= t) >= k, by bisection on uint32.
    # Invariant: t in [lo, hi]; per leaf, c_lo = count(key >= lo), c_hi = count(key > hi).
    # k == 0 starts closed at the top key with empty counts (nothing is selected).
    positive_leaf = jnp.stack(per_leaf(positive))
    zeros = jnp.zeros((n,), jnp.int32)
    hi = jnp.full((num_groups,), _U32_MAX, jnp.uint32)
    lo = jnp.where(positive, jnp.uint32(0), hi)
    c_lo = jnp.where(positive_leaf, n_elig_leaf, zeros)

    def open_groups(lo, hi, c_lo):
        return (lo < hi) & (group_sum(c_lo) != k)

    def value_step(state):
        lo, hi, c_lo, c_hi = state
        active = open_groups(lo, hi, c_lo)
        mid = jnp.where(active, lo + (hi - lo) // 2 + jnp.uint32(1), lo)
        c = counts_ge(mid)
        up = active & (group_sum(c) >= k)
        down = active & ~up
        up_leaf, down_leaf = jnp.stack(per_leaf(up)), jnp.stack(per_leaf(down))
        return (
            jnp.where(up, mid, lo),
            jnp.where(down, mid - jnp.uint32(1), hi),
            jnp.where(up_leaf, c, c_lo),
            jnp.where(down_leaf, c, c_hi),
        )

    lo, hi, c_lo, c_hi = lax.while_loop(
        lambda s: jnp.any(open_groups(*s[:3])), value_step, (lo, hi, c_lo, zeros))
    t = lo
    # Entries with key > hi (c_hi per leaf) are all in; the rest comes from [lo, hi], which is
    # either a single key value (ties) or a range whose count completes k exactly. Those entries
    # are taken leaf by leaf in leaf order (prefix sums over the group's leaves).
    need = k - group_sum(c_hi)
    tie = c_lo - c_hi
    take = []
    before = [jnp.int32(0)] * num_groups
    for i in range(n):
        g = groups[i]
        take.append(jnp.clip(need[g] - before[g], 0, tie[i]))
        before[g] = before[g] + tie[i]
    take = jnp.stack(take)
    full = (take > 0) & (take >= tie)  # every entry of [lo, hi] in this leaf is taken
    partial = (take > 0) & (take < tie)  # only possible when lo == hi: ties at t, cut by flat index
    t_leaf = per_leaf(t)

    def fast_masks():
        # key >= t (all of [lo, hi]) or key > t (none of it; lo == hi here).
        return [e & jnp.where(full[i], x >= t_leaf[i], x > t_leaf[i])
                for i, (x, e) in enumerate(zip(folded, eligible))]

    def index_masks():
        # Phase 2: per leaf, the smallest index bound j with count(tied & idx < j) >= take.
        index = [_flat_index(x.shape) for x in keys]
        tied = [e & (x == t_leaf[i]) for i, (x, e) in enumerate(zip(folded, eligible))]
        sizes = jnp.asarray([int(np.prod(x.shape, dtype=np.int64)) for x in keys], jnp.int32)
        jlo = jnp.where(partial, 0, jnp.where(full, sizes, 0))
        jhi = jnp.where(partial, sizes, jlo)

        def index_step(state):
            jlo, jhi = state
            active = jlo < jhi
            mid = jlo + (jhi - jlo) // 2
            c = jnp.stack([count_true(tie_ & (ix < mid[i]))
                           for i, (tie_, ix) in enumerate(zip(tied, index))])
            enough = active & (c >= take)
            return jnp.where(active & ~enough, mid + 1, jlo), jnp.where(enough, mid, jhi)

        jlo, _ = lax.while_loop(lambda s: jnp.any(s[0] < s[1]), index_step, (jlo, jhi))
        return [e & ((x > t_leaf[i]) | ((x == t_leaf[i]) & (ix < jlo[i])))
                for i, (x, e, ix) in enumerate(zip(folded, eligible, index))]

    selected = lax.cond(jnp.any(partial), index_masks, fast_masks)
    return selected, c_hi + take


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
    return _select(keys, eligible, k, list(range(len(keys))), len(keys))[0]


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
    return _select(keys, eligible, jnp.reshape(k, (1,)), [0] * len(keys), 1)[0]
