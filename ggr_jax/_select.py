"""Exact k-largest selection by threshold search: the one hot kernel of ggr_jax.

**What it computes.** Given, per leaf, ``uint32`` keys and a bool ``eligible`` array, select
the ``k`` eligible entries of largest key, either in each leaf separately (:func:`top_k_per_leaf`,
one ``k`` per leaf) or over all leaves taken together (:func:`top_k_global`, one ``k``). The
order is total and fixed:

- a larger key comes first;
- among equal keys, an entry of an earlier leaf comes first (global selection only);
- among equal keys in one leaf, the lower row-major flat index comes first.

Ineligible entries are never selected; ``k`` is clipped to ``[0, #eligible]``, so exactly that
many entries are selected. ``k`` may be traced (no static bound as with ``lax.top_k``).
``_select_reference.top_k_reference`` spells this order out as a sort; tests check the kernel
against it, ties included.

**How.** Without sorting and without concatenating leaves: the order above is that of a 64-bit
*wide key* ``(value, tie)`` per entry, the ``uint32`` key followed by a ``uint32`` *tie word*
that decreases with the flat index (:func:`tie_word`). The wide keys of one leaf are all
distinct, so the ``k``-th largest wide key is a threshold that selects exactly ``k`` entries.
It is found one byte at a time, most significant first (a radix select over 8 bytes):

1. For each byte, one elementwise pass writes a ``uint8`` array holding that byte of the entries
   whose higher bytes equal the prefix found so far (0 elsewhere).
2. A search over the 256 byte values counts ``digit >= x`` on that array, each count reading
   one byte per entry (:func:`ggr_jax._counting.count_at_least`, four digits to a ``uint32``
   word where the leaf's rows come in fours): bisection for the most significant byte (8
   counts), interpolation with a bisection safeguard for the others (typically 2-6 counts
   each). The search stops as soon as a count equals ``k``, so the tie word is searched only by
   a leaf that must take part of the entries tied at the threshold, and only as far as needed.
3. In a global selection, the value word is searched over the group of leaves; if the group
   ends on a key ``t`` shared by entries of several leaves, each leaf's share of the ties at
   ``t`` is given in leaf order (prefix sums of scalars), and the tie word is searched per leaf.

A count is a plain reduction, so it shards across devices without gathering anything but
scalars. Keys are passed as functions and recomputed wherever they are needed, so that no
``uint32`` copy of the scores is kept: the only array-sized temporaries are one digit array per
leaf (a byte per entry). Per-leaf counts at both ends of the bracket are carried through the
search, so the number of entries selected in every leaf is known without counting the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ggr_jax._counting import count_at_least, count_true, pack_digits

__all__ = [
    "KeySpec",
    "count_true",
    "order_key",
    "random_keys",
    "select_global",
    "select_per_leaf",
    "tie_word",
    "top_k_global",
    "top_k_per_leaf",
]

_U32_MAX = np.uint32(0xFFFFFFFF)
_VALUE_BYTES = 4  # bytes 0-3 of a wide key are the value word, bytes 4-7 the tie word

# A leaf's keys as ``(function, arrays)``: ``function(*arrays)`` gives the uint32 keys. The keys
# are recomputed from the arrays in every pass that needs them, which XLA fuses into the pass:
# no uint32 copy of the scores is kept in memory.
KeySpec = tuple[Callable[..., jax.Array], tuple[jax.Array, ...]]


def _keys(spec: KeySpec, token: jax.Array | None = None) -> jax.Array:
    """The keys of ``spec``; inside a loop, ``token`` (a loop-carried scalar) ties the arrays to
    the iteration so that XLA does not hoist the key computation out of the loop (and keep its
    result in memory)."""
    fn, arrays = spec
    if token is not None:
        arrays = lax.optimization_barrier((arrays, token))[0]
    return fn(*arrays)


def order_key(x: jax.Array) -> jax.Array:
    """Maps floats to ``uint32`` keys with the same order (``-0.0`` and ``0.0`` are equal).

    NaN maps above +inf (positive NaN) or below -inf (negative NaN); callers that care reject
    non-finite inputs before selecting.

    Args:
      x: a float array (any float dtype; computed in float32).

    Returns:
      ``uint32`` keys of the same shape: ``x[i] < x[j]`` iff ``key[i] < key[j]``.

    Example:
      >>> import jax.numpy as jnp
      >>> keys = order_key(jnp.array([-1.0, -0.0, 0.0, 2.0]))
      >>> bool(keys[0] < keys[1] == keys[2] < keys[3])
      True
    """
    x = x.astype(jnp.float32) + jnp.float32(0.0)  # -0.0 -> +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31).astype(jnp.bool_)
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _scaled_index(shape: Sequence[int], base: jax.Array, scale: int = 1) -> jax.Array:
    """``base + scale * flat_index`` (mod 2**32) as ``uint32``, from iotas (shards cleanly).

    Built from the ``base`` array up, so that nothing in it is loop-invariant when ``base``
    depends on the loop (XLA would hoist a loop-invariant index out of a loop and keep it).
    """
    out = jnp.broadcast_to(base, tuple(shape))
    stride = scale
    for d in reversed(range(len(shape))):
        out = out + lax.broadcasted_iota(jnp.uint32, tuple(shape), d) * jnp.uint32(stride)
        stride = (stride * shape[d]) % 2**32
    return out


def tie_word(shape: Sequence[int], token: jax.Array | None = None) -> jax.Array:
    """The second word of the wide key: distinct, decreasing with the row-major flat index.

    The index's bits are placed at the top of the word (so a search over its bytes, most
    significant first, meets them first) and inverted; the lowest bit is 0, so the word is at
    most ``2**32 - 2`` and ``2**32 - 1`` can stand for "no tie taken".

    Args:
      shape: the leaf's shape (fewer than ``2**31`` entries).
      token: inside a loop, a loop-carried scalar (see :func:`_keys`).

    Returns:
      A ``uint32`` array of ``shape``.

    Example:
      >>> [hex(int(w)) for w in tie_word((3,))]
      ['0xfffffffe', '0xbffffffe', '0x7ffffffe']
    """
    size = int(np.prod(shape, dtype=np.int64))
    if size >= 2**31:
        raise ValueError(f"a leaf of {size} elements is too large to select in (shape {shape})")
    shift = 32 - max((size - 1).bit_length(), 1)
    base = jnp.uint32(0) if token is None else lax.optimization_barrier((jnp.uint32(0), token))[0]
    return ~_scaled_index(shape, base, 1 << shift) ^ jnp.uint32(1)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_keys(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Uniformly random ``uint32`` keys, all distinct, for selecting random positions.

    A counter-based hash of each entry's flat index: MurmurHash3's 32-bit finaliser of the index
    plus a seed word, xor a second seed word, both words drawn from ``key``. On CPU it is far
    cheaper than ``jax.random.bits`` (it is recomputed in every pass of a selection instead of
    being stored); like it, the result does not depend on how the array is sharded. The map from
    index to key is a bijection, so a selection by these keys never meets a tie.

    Args:
      key: a PRNG key.
      shape: the shape of the keys.

    Returns:
      A ``uint32`` array of ``shape``.

    Example:
      >>> import jax, numpy as np
      >>> keys = random_keys(jax.random.key(0), (100, 10))
      >>> len(np.unique(keys)) == keys.size
      True
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    # index + seed[0], built from the seed up: no part of it is loop-invariant in a loop
    return _fmix32(_scaled_index(shape, seed[0])) ^ seed[1]


# --- the search ---------------------------------------------------------------------------------


class _Groups(NamedTuple):
    """Which leaves select together (static): ``of_leaf[i]`` is leaf ``i``'s group.

    The members of a group are consecutive leaves. Every operation on per-leaf scalars is a
    fixed handful of vector ops, whatever the number of leaves: a Python loop over leaves here
    would put O(leaves) ops in the program for each use, and XLA duplicates such scalar chains
    into every consumer, which made the program grow quadratically with the number of leaves.
    """

    of_leaf: tuple[int, ...]
    members: tuple[tuple[int, ...], ...]

    @property
    def alone(self) -> bool:  # every group is one leaf: a per-leaf selection
        return all(len(m) == 1 for m in self.members)

    def sum(self, per_leaf: jax.Array) -> jax.Array:
        """Per-group sums of per-leaf scalars (no gather of arrays)."""
        if self.alone:
            return per_leaf
        if len(self.members) == 1:
            return jnp.sum(per_leaf, keepdims=True)
        return jax.ops.segment_sum(
            per_leaf, jnp.asarray(self.of_leaf), num_segments=len(self.members)
        )

    def to_leaves(self, per_group: jax.Array) -> jax.Array:
        """Per leaf, its group's entry of ``per_group``."""
        if self.alone:
            return per_group
        if len(self.members) == 1:
            return jnp.broadcast_to(per_group, (len(self.of_leaf),))
        return per_group[jnp.asarray(self.of_leaf)]

    def before(self, per_leaf: jax.Array) -> jax.Array:
        """Per leaf, the sum of ``per_leaf`` over the earlier leaves of its group."""
        if self.alone:
            return jnp.zeros_like(per_leaf)
        exclusive = jnp.cumsum(per_leaf) - per_leaf
        if len(self.members) == 1:
            return exclusive
        first = jnp.asarray([self.members[g][0] for g in self.of_leaf])
        return exclusive - exclusive[first]


def _groups(members: Sequence[Sequence[int]]) -> _Groups:
    """Groups of consecutive leaves, in leaf order."""
    of_leaf = tuple(g for g, m in enumerate(members) for _ in m)
    flat = [i for m in members for i in m]
    if flat != list(range(len(flat))):
        raise AssertionError(f"groups must be consecutive leaves in order, got {members}")
    return _Groups(of_leaf, tuple(tuple(m) for m in members))


class _Search(NamedTuple):
    """The state of the threshold search, one entry per leaf.

    While the value word is searched (``byte < 4``), the leaves of a group share ``lo``, ``hi``
    and ``target`` and are decided on their group's total counts; once in the tie word, each
    leaf searches alone. The invariants hold for a leaf still searching.
    """

    byte: jax.Array  # shape=(), int32: the byte searched, 0-3 in the value word, 4-7 in the tie
    value: jax.Array  # shape=(n,), uint32: the threshold's value word (set when entering the tie)
    lo: jax.Array  # shape=(n,), uint32: the threshold's current word lies in [lo, hi]
    hi: jax.Array  # shape=(n,), uint32
    c_lo: jax.Array  # shape=(n,), int32: count(wide key >= the wide key at lo)
    c_hi: jax.Array  # shape=(n,), int32: count(wide key > the wide key at hi)
    target: jax.Array  # shape=(n,), int32: the count to reach (the group's k, then the leaf's)
    bisect: jax.Array  # shape=(n,), bool: the next probe bisects (the last did not halve)


def _in_tie(s: _Search) -> jax.Array:
    return s.byte >= _VALUE_BYTES


def _group_totals(counts: jax.Array, groups: _Groups) -> jax.Array:
    """Per leaf, the total of its group's per-leaf ``counts``."""
    return counts if groups.alone else groups.to_leaves(groups.sum(counts))


def _totals(s: _Search, counts: jax.Array, groups: _Groups) -> jax.Array:
    """Per leaf, the counts the decisions are made on: the group's total in the value word."""
    if groups.alone:
        return counts
    return jnp.where(_in_tie(s), counts, _group_totals(counts, groups))


def _shift(s: _Search) -> jax.Array:
    return jnp.uint32(24) - jnp.uint32(8) * (s.byte % _VALUE_BYTES).astype(jnp.uint32)


def _digit(word: jax.Array, shift: jax.Array) -> jax.Array:
    return (word >> shift) & 0xFF


def _is_open(s: _Search, groups: _Groups) -> jax.Array:
    """Per leaf: the current byte of the threshold is still unknown."""
    shift = _shift(s)
    return (_digit(s.lo, shift) < _digit(s.hi, shift)) & (_totals(s, s.c_lo, groups) != s.target)


def _start(k: jax.Array, n_eligible: jax.Array, groups: _Groups) -> _Search:
    """The whole range; ``k == 0`` starts settled at the top key with empty counts."""
    n = len(groups.of_leaf)
    target = groups.to_leaves(k)
    hi = jnp.full((n,), _U32_MAX, jnp.uint32)
    return _Search(
        byte=jnp.int32(0),
        value=hi,
        lo=jnp.where(target > 0, jnp.uint32(0), hi),
        hi=hi,
        c_lo=jnp.where(target > 0, n_eligible, 0),
        c_hi=jnp.zeros((n,), jnp.int32),
        target=target,
        bisect=jnp.zeros((n,), jnp.bool_),
    )


def _enter_tie_word(s: _Search, groups: _Groups) -> _Search:
    """From the value word to the tie word: each leaf's own target and a fresh bracket.

    A group whose value word ends on a key ``t`` with ``lo == hi`` takes all entries above
    ``t`` and its remaining need from the ties at ``t``, leaf by leaf in leaf order. A leaf that
    takes none of its ties gets the empty bracket ``lo = hi = 2**32 - 1`` (above every tie word).
    """
    above = _group_totals(s.c_hi, groups)
    tie = s.c_lo - s.c_hi
    take = jnp.clip(s.target - above - groups.before(tie), 0, tie)
    return s._replace(
        value=s.lo,
        lo=jnp.where(take > 0, jnp.uint32(0), _U32_MAX),
        hi=jnp.full_like(s.hi, _U32_MAX),
        c_lo=jnp.where(take > 0, s.c_lo, s.c_hi),
        target=s.c_hi + take,
    )


def _digits(spec: KeySpec, eligible: jax.Array, s: _Search, i: int) -> jax.Array:
    """Leaf ``i``'s digits of the current byte: the byte of the entries inside the block of
    the prefix found so far, 0 elsewhere (a shift by 32 gives 0: byte 0 has no prefix)."""
    shift = _shift(s)
    keys = _keys(spec, s.byte)
    word = jnp.where(_in_tie(s), tie_word(eligible.shape, s.byte), keys)
    in_block = eligible & ((word >> (shift + 8)) == (s.lo[i] >> (shift + 8)))
    in_block = in_block & (~_in_tie(s) | (keys == s.value[i]))
    return pack_digits(jnp.where(in_block, (word >> shift).astype(jnp.uint8), jnp.uint8(0)))


def _probe(
    s: _Search, digits: list[jax.Array], above: jax.Array, groups: _Groups, interpolate: bool
) -> _Search:
    """One count per open leaf at a probe inside the bracket of the current byte.

    The probe interpolates (the count taken as linear in the byte value inside the bracket),
    falling back to bisection for one probe after a probe that did not halve the bracket. The
    most significant byte (sign and exponent of a float score, far from linear) is bisected,
    unless ``interpolate`` says that the keys are uniformly random.
    """
    shift, active = _shift(s), _is_open(s, groups)
    d_lo, d_hi = _digit(s.lo, shift), _digit(s.hi, shift)
    tot_lo, tot_hi = _totals(s, s.c_lo, groups), _totals(s, s.c_hi, groups)
    frac = (tot_lo - s.target).astype(jnp.float32) / jnp.maximum(tot_lo - tot_hi, 1).astype(
        jnp.float32
    )
    guess = d_lo + (frac * (d_hi - d_lo + 1).astype(jnp.float32)).astype(jnp.uint32)
    use_guess = ~s.bisect & (s.byte >= (0 if interpolate else 1))
    mid = d_lo + (d_hi - d_lo) // 2 + 1  # in [1, 255]: digit 0 is never counted
    mid = jnp.where(use_guess, jnp.clip(guess, d_lo + 1, d_hi), mid)
    mid8 = mid.astype(jnp.uint8)
    counts = [
        lax.cond(active[i], lambda i=i: count_at_least(digits[i], mid8[i]), lambda: jnp.int32(0))
        for i in range(len(digits))
    ]
    c = above + jnp.stack(counts)
    up = active & (_totals(s, c, groups) >= s.target)
    down = active & ~up
    value = (s.lo & ~(jnp.uint32(0xFF) << shift)) | (mid << shift)
    lo, hi = jnp.where(up, value, s.lo), jnp.where(down, value - jnp.uint32(1), s.hi)
    return s._replace(
        lo=lo,
        hi=hi,
        c_lo=jnp.where(up, c, s.c_lo),
        c_hi=jnp.where(down, c, s.c_hi),
        bisect=~s.bisect & (2 * (_digit(hi, shift) - _digit(lo, shift)) > d_hi - d_lo),
    )


def _search_byte(
    s: _Search,
    key_specs: Sequence[KeySpec],
    eligible: Sequence[jax.Array],
    groups: _Groups,
    interpolate: bool,
) -> _Search:
    """Finds one byte of the threshold, then moves to the next (entering the tie word after
    the value word's last byte)."""
    digits = [
        _digits(spec, e, s, i) for i, (spec, e) in enumerate(zip(key_specs, eligible, strict=True))
    ]
    above = s.c_hi  # count(wide key > top of the prefix block)
    s = lax.while_loop(
        lambda s: jnp.any(_is_open(s, groups)),
        lambda s: _probe(s, digits, above, groups, interpolate),
        s._replace(bisect=jnp.zeros_like(s.bisect)),
    )
    s = s._replace(byte=s.byte + 1)
    return _where(s.byte == _VALUE_BYTES, _enter_tie_word(s, groups), s)


def _where(pred: jax.Array, a: _Search, b: _Search) -> _Search:
    return _Search(*(jnp.where(pred, x, y) for x, y in zip(a, b, strict=True)))


def _selected(spec: KeySpec, eligible: jax.Array, s: _Search, i: int) -> jax.Array:
    """Leaf ``i``'s entries at or above the threshold ``(value, lo)`` of its wide keys."""
    keys = _keys(spec)
    ties = (keys == s.value[i]) & (tie_word(eligible.shape) >= s.lo[i])
    return eligible & ((keys > s.value[i]) | ties)


def _select(
    key_specs: Sequence[KeySpec],
    eligible: Sequence[jax.Array],
    k: jax.Array,
    groups: _Groups,
    interpolate: bool = False,
    n_eligible: jax.Array | None = None,
) -> tuple[list[jax.Array], jax.Array]:
    """Selects, in each group of leaves, the ``k[g]`` eligible entries of largest wide key.

    Returns the selection masks and the number of entries selected in each leaf.
    """
    n_elig = (
        jnp.stack([count_true(e) for e in eligible])
        if n_eligible is None
        else jnp.asarray(n_eligible, jnp.int32)
    )
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, groups.sum(n_elig))

    def searching(s: _Search) -> jax.Array:
        open_ = (s.lo < s.hi) & (_totals(s, s.c_lo, groups) != s.target)
        return jnp.any(open_) & (s.byte < 2 * _VALUE_BYTES)

    s = lax.while_loop(
        searching,
        lambda s: _search_byte(s, key_specs, eligible, groups, interpolate),
        _start(k, n_elig, groups),
    )
    s = _where(s.byte < _VALUE_BYTES, _enter_tie_word(s, groups), s)  # settled in the value word
    masks = [
        _selected(spec, e, s, i)
        for i, (spec, e) in enumerate(zip(key_specs, eligible, strict=True))
    ]
    return masks, s.target


def select_per_leaf(
    key_specs: Sequence[KeySpec],
    eligible: Sequence[jax.Array],
    k: jax.Array,
    *,
    interpolate: bool = False,
    n_eligible: jax.Array | None = None,
) -> tuple[list[jax.Array], jax.Array]:
    """:func:`top_k_per_leaf` with keys given as :data:`KeySpec`; also returns per-leaf counts.

    Args:
      key_specs: per leaf, ``(function, arrays)`` with ``function(*arrays)`` the ``uint32`` keys.
      eligible: bool arrays of the leaves' shapes.
      k: int vector, one count per leaf (may be traced); clipped to ``[0, #eligible]``.
      interpolate: the keys are uniformly random (see :func:`random_keys`): every byte is
        searched by interpolation, about 2-3 counting passes instead of 8 for the first byte.
      n_eligible: the per-leaf counts of ``eligible``, when the caller knows them (saves a pass).

    Returns:
      ``(masks, counts)``: the selection masks and the int32 number selected in each leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> spec = (lambda w: order_key(jnp.abs(w)), (jnp.array([1.0, -3.0, 2.0, 3.0]),))
      >>> masks, counts = select_per_leaf([spec], [jnp.ones(4, bool)], jnp.array([2]))
      >>> masks[0].tolist(), counts.tolist()
      ([False, True, False, True], [2])
    """
    if not key_specs:
        return [], jnp.zeros((0,), jnp.int32)
    n = len(key_specs)
    groups = _groups([(i,) for i in range(n)])
    return _select(key_specs, eligible, k, groups, interpolate, n_eligible)


def select_global(
    key_specs: Sequence[KeySpec],
    eligible: Sequence[jax.Array],
    k: jax.Array,
    *,
    n_eligible: jax.Array | None = None,
) -> tuple[list[jax.Array], jax.Array]:
    """:func:`top_k_global` with keys given as :data:`KeySpec`; also returns per-leaf counts.

    Args:
      key_specs: per leaf, ``(function, arrays)`` with ``function(*arrays)`` the ``uint32`` keys.
      eligible: bool arrays of the leaves' shapes.
      k: int scalar (may be traced); clipped to ``[0, total #eligible]``.
      n_eligible: the per-leaf counts of ``eligible``, when the caller knows them (saves a pass).

    Returns:
      ``(masks, counts)``: the selection masks and the int32 number selected in each leaf.

    Example:
      >>> import jax.numpy as jnp
      >>> specs = [(order_key, (jnp.array([1.0, 3.0]),)), (order_key, (jnp.array([3.0, 2.0]),))]
      >>> masks, counts = select_global(specs, [jnp.ones(2, bool)] * 2, jnp.int32(2))
      >>> [m.tolist() for m in masks], counts.tolist()
      ([[False, True], [True, False]], [1, 1])
    """
    if not key_specs:
        return [], jnp.zeros((0,), jnp.int32)
    n = len(key_specs)
    groups = _groups([range(n)])
    return _select(key_specs, eligible, jnp.reshape(k, (1,)), groups, n_eligible=n_eligible)


def _const(x: jax.Array) -> KeySpec:
    return (lambda x: x), (x,)


def top_k_per_leaf(
    keys: Sequence[jax.Array], eligible: Sequence[jax.Array], k: jax.Array
) -> list[jax.Array]:
    """In each leaf ``i``, selects the ``k[i]`` eligible entries with the largest key.

    Ties are taken by lowest row-major flat index.

    Args:
      keys: ``uint32`` arrays from :func:`order_key`.
      eligible: bool arrays of the same shapes; ineligible entries are never selected.
      k: int vector, one count per leaf (may be traced); clipped to ``[0, #eligible]``.

    Returns:
      Bool arrays with exactly ``clip(k[i], 0, #eligible_i)`` entries set in leaf ``i``.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> keys = [gj.order_key(jnp.array([2.0, 5.0, 5.0, 1.0]))]
      >>> gj.top_k_per_leaf(keys, [jnp.ones(4, bool)], jnp.array([2]))[0].tolist()
      [False, True, True, False]
    """
    return select_per_leaf([_const(x) for x in keys], eligible, k)[0]


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

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> keys = [gj.order_key(jnp.array([1.0, 4.0])), gj.order_key(jnp.array([4.0, 4.0]))]
      >>> [m.tolist() for m in gj.top_k_global(keys, [jnp.ones(2, bool)] * 2, jnp.int32(2))]
      [[False, True], [True, False]]
    """
    return select_global([_const(x) for x in keys], eligible, k)[0]
