"""Counting True entries as one fused, vectorised pass on XLA:CPU (and cleanly sharded).

The selection kernel (``_select.py``) spends its time counting: every probe of its threshold
search is one ``count_true`` per leaf. A plain ``jnp.sum`` of a large boolean array is rewritten
by XLA:CPU into a tree of reduce-windows that first writes an ``int32`` copy of the predicate.
Instead, :func:`count_true` first sums over axes of at most 32 entries that are not the last
(contiguous) axis, which XLA fuses with the comparison that produces the predicate and vectorises
along the last axis, and then sums the small partial counts.

An axis is split into ``(d / c, c)`` only where every shard of a power-of-two sharding of the
axis holds whole chunks (:func:`_chunk`), so a sharded count needs no gather: each device counts
its block and the partial counts meet in one scalar all-reduce.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_CHUNK = 32  # XLA:CPU fuses a reduction over axes of <= 32 entries with its producer
_ROWS = 15  # rows summed per chunk: more interleaved row streams read slower (measured: 8 best)


def _chunk(d: int, reserve: int = 7) -> int:
    """A chunk length ``c`` (a divisor of ``d``, at most 15) to split an axis as ``(d / c, c)``.

    A device holding a contiguous block of a power-of-two sharding of the axis must hold whole
    chunks, or XLA's partitioner gathers the array. An odd ``c`` always divides the block; powers
    of two are used only while ``d / c`` keeps a factor ``2**reserve`` (shardings up to 128 ways).

    Args:
      d: the length of the axis.
      reserve: log2 of the largest power-of-two sharding whose blocks must hold whole chunks.

    Returns:
      The chunk length, or 1 when no chunk helps.

    Example:
      >>> _chunk(256), _chunk(768), _chunk(7)
      (2, 6, 7)
    """
    twos = (d & -d).bit_length() - 1
    odd = d >> twos
    best = 1
    for o in range(1, min(odd, _ROWS) + 1, 2):
        if odd % o:
            continue
        c = o << min(max(twos - reserve, 0), (_ROWS // o).bit_length() - 1)
        best = max(best, c)
    return best


def _partial_axes(shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """A reshape of ``shape`` and the axes of at most 32 entries to sum first.

    Args:
      shape: the shape of the array to count.

    Returns:
      ``(new_shape, axes)``: the array reshaped to ``new_shape`` is summed over ``axes`` first
      (no axes: a plain sum is used).

    Example:
      >>> _partial_axes((16, 256, 128))
      ([16, 128, 2, 128], [0, 2])
    """
    axes = [a for a in range(len(shape) - 1) if shape[a] <= _CHUNK]
    new_shape = list(shape)
    if len(shape) >= 2 and shape[-2] > _CHUNK:
        c = _chunk(shape[-2])
        if c > 1:
            new_shape[-2:-1] = [shape[-2] // c, c]
            axes.append(len(shape) - 1)  # the chunk axis, in the new shape
    elif len(shape) == 1 and shape[0] > _CHUNK:
        c = _chunk(shape[0])  # a vector: chunks of the last axis (fused, not vectorised)
        if c > 1:
            new_shape = [shape[0] // c, c]
            axes.append(1)
    return new_shape, axes


def count_true(pred: jax.Array) -> jax.Array:
    """Number of True entries of ``pred``, as one fused, vectorised pass (see the module notes).

    Args:
      pred: a bool array of any shape (typically a comparison, which XLA fuses into the count).

    Returns:
      An ``int32`` scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> count_true(jnp.arange(1000).reshape(8, 125) % 3 == 0)
      Array(334, dtype=int32)
    """
    x = pred.astype(jnp.int32)
    if x.ndim == 0:
        return x
    new_shape, axes = _partial_axes(x.shape)
    if not axes:
        return jnp.sum(x)
    partial = jnp.sum(x.reshape(new_shape), axis=tuple(axes))
    # the uint32 round trip keeps XLA from merging the two reductions back into one
    return jnp.sum(partial.astype(jnp.uint32), dtype=jnp.uint32).astype(jnp.int32)
