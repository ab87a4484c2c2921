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

The selection's hot count, ``count(digits >= t)`` over a ``uint8`` digit array, has a faster
path: :func:`pack_digits` stores the digits of four consecutive rows in one ``uint32`` word, and
:func:`count_at_least` compares the four with ``t`` at once (SIMD within a register), about 2.5x
faster than the byte-wise count on XLA:CPU. A sharding of axis -2 stays gather-free when each
shard holds a multiple of four rows (axis -2 a multiple of 4 x the number of shards, true of
every power-of-two sharding of a power-of-two-rich axis up to a quarter of its length); a finer
sharding is still exact, but XLA moves digits between devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_CHUNK = 32  # XLA:CPU fuses a reduction over axes of <= 32 entries with its producer
_ROWS = 15  # rows summed per chunk: more interleaved row streams read slower (measured: 8 best)
_WORD = 4  # digits per uint32 word
_HIGH = np.uint32(0x80808080)  # the high bit of each byte of a word


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


def _partial_axes(shape: tuple[int, ...], whole_rows: bool = True) -> tuple[list[int], list[int]]:
    """A reshape of ``shape`` and the axes of at most 32 entries to sum first.

    Args:
      shape: the shape of the array to count.
      whole_rows: axis -2 may be summed whole when it has at most 32 entries; else it is only
        ever split into chunks that every shard holds whole (as the row groups of
        :func:`pack_digits` may be sharded).

    Returns:
      ``(new_shape, axes)``: the array reshaped to ``new_shape`` is summed over ``axes`` first
      (no axes: a plain sum is used).

    Example:
      >>> _partial_axes((16, 256, 128))
      ([16, 128, 2, 128], [0, 2])
      >>> _partial_axes((16, 32, 128), whole_rows=False)
      ([16, 32, 128], [0])
    """
    lead = len(shape) - (1 if whole_rows else 2)
    axes = [a for a in range(lead) if shape[a] <= _CHUNK]
    new_shape = list(shape)
    if len(shape) >= 2 and (shape[-2] > _CHUNK or not whole_rows):
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


def _words_ok(shape: tuple[int, ...]) -> bool:
    """Whether :func:`pack_digits` packs ``shape``'s digits four to a word.

    Four consecutive rows (axis -2) go into one row of words, so axis -2 must be a multiple of
    4; and a partial count (summed inside each byte of a word) must stay below 256.
    """
    if len(shape) < 2 or shape[-2] % _WORD:
        return False
    new_shape, axes = _partial_axes((*shape[:-2], shape[-2] // _WORD, shape[-1]), False)
    return int(np.prod([new_shape[a] for a in axes], dtype=np.int64)) < 256


def _bytes_at_least(words: jax.Array, t: jax.Array) -> jax.Array:
    """Per byte of ``words``: 1 where the byte is ``>= t``, else 0 (``t`` a ``uint8`` scalar).

    Below the high bit, ``(x | 0x80) - t`` keeps its high bit iff ``x >= t`` (7-bit parts, no
    borrow crosses a byte); the high bits decide where they differ.
    """
    tt = t.astype(jnp.uint32) * jnp.uint32(0x01010101)
    low = ((words | _HIGH) - (tt & ~_HIGH)) & _HIGH
    xh, th = words & _HIGH, tt & _HIGH
    return ((xh & ~th) | (~(xh ^ th) & low)) >> 7


def pack_digits(digits: jax.Array) -> jax.Array:
    """``digits`` four to a ``uint32`` word, four consecutive rows (axis -2) into one row of
    words, where :func:`_words_ok` allows; else ``digits`` unchanged.

    Computed where the digits are, so that XLA writes the words in the same pass. (Words along
    the last axis, or a bitcast of the bytes, make XLA:CPU reduce over a minor axis of 4, which it
    does not vectorise: measured slower.)

    Args:
      digits: a ``uint8`` array.

    Returns:
      ``uint32`` words of shape ``(..., rows / 4, columns)``, the digit of row ``4 i + j`` in
      bits ``8 j`` to ``8 j + 7`` of word row ``i``; or ``digits``.

    Example:
      >>> import jax.numpy as jnp
      >>> d = jnp.arange(8 * 2, dtype=jnp.uint8).reshape(8, 2)
      >>> [hex(int(w)) for w in pack_digits(d)[0]]
      ['0x6040200', '0x7050301']
    """
    shape = digits.shape
    if not _words_ok(shape):
        return digits
    rows = digits.reshape(*shape[:-2], shape[-2] // _WORD, _WORD, shape[-1]).astype(jnp.uint32)
    shifts = lax.broadcasted_iota(jnp.uint32, rows.shape, rows.ndim - 2) * jnp.uint32(8)
    return jnp.sum(rows << shifts, axis=-2, dtype=jnp.uint32)


def count_at_least(packed: jax.Array, t: jax.Array) -> jax.Array:
    """``count(digits >= t)`` of digits packed by :func:`pack_digits`.

    ``uint32`` words are compared four digits at a time (about 2.5x faster than the byte-wise
    :func:`count_true` on XLA:CPU); a ``uint8`` array is counted by :func:`count_true`. Shards
    like :func:`count_true`: only scalars are reduced across devices.

    Args:
      packed: the result of :func:`pack_digits`.
      t: a ``uint8`` scalar.

    Returns:
      An ``int32`` scalar.

    Example:
      >>> import jax.numpy as jnp
      >>> d = (jnp.arange(64 * 64) % 256).astype(jnp.uint8).reshape(64, 64)
      >>> int(count_at_least(pack_digits(d), jnp.uint8(200))), int(count_true(d >= 200))
      (896, 896)
    """
    if packed.dtype != jnp.uint32:
        return count_true(packed >= t)
    ones = _bytes_at_least(packed, jnp.asarray(t, jnp.uint8))
    new_shape, axes = _partial_axes(packed.shape, whole_rows=False)
    partial = jnp.sum(ones.reshape(new_shape), axis=tuple(axes), dtype=jnp.uint32) if axes else ones
    per_word = (partial & 0xFF) + ((partial >> 8) & 0xFF) + ((partial >> 16) & 0xFF)
    per_word = per_word + (partial >> 24)
    return jnp.sum(per_word, dtype=jnp.uint32).astype(jnp.int32)
