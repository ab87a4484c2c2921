"""Exact integer apportionment of a total over a few layers (largest remainder, with caps).

Works on a short vector (one entry per layer) with either ``numpy`` (float64, exact at init time)
or ``jax.numpy`` (traceable, inside a training step); ``xp`` picks which.
"""

from __future__ import annotations

from typing import Any


def largest_remainder(ideal: Any, total: Any, xp: Any) -> Any:
    """Rounds non-negative ``ideal`` counts to integers that sum to ``total`` exactly.

    Each entry is floored, then the ``total - sum(floors)`` entries with the largest fractional
    parts get one more (ties: lower index first). Assumes ``sum(ideal) == total`` up to rounding
    and that ``total`` is an integer.

    Args:
      ideal: vector of non-negative floats.
      total: the integer the result sums to.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      Integer vector (int64 for numpy, int32 for jax) with ``sum == total``.
    """
    itype = xp.int64 if xp.__name__ == "numpy" else xp.int32
    base = xp.floor(ideal)
    frac = ideal - base
    base = base.astype(itype)
    deficit = xp.asarray(total).astype(itype) - xp.sum(base)
    n = frac.shape[0]
    idx = xp.arange(n)
    # rank[i] = number of entries that come before i (larger remainder, or equal and lower index)
    before = (frac[None, :] > frac[:, None]) | (
        (frac[None, :] == frac[:, None]) & (idx[None, :] < idx[:, None])
    )
    rank = xp.sum(before, axis=1)  # 0 for the largest remainder
    # Float rounding can leave sum(floors) one or two above ``total``: take those back from the
    # smallest remainders among entries that are positive.
    rank_low = n - 1 - rank
    take_back = (rank_low < -deficit) & (base > 0)
    return base + (rank < deficit).astype(itype) - take_back.astype(itype)


def capped_shares(total: Any, weights: Any, caps: Any, xp: Any) -> Any:
    """Splits ``total`` proportionally to ``weights`` with per-entry caps, in exact integers.

    Entries whose share would exceed their cap are fixed at the cap and the rest is re-split
    over the others (water filling; at most ``len(weights)`` rounds). When all weights of the
    entries still open are zero, the rest is split proportionally to the remaining caps.

    Args:
      total: integer to split; clipped to ``sum(caps)``.
      weights: non-negative vector.
      caps: non-negative integer vector.
      xp: ``numpy`` or ``jax.numpy``.

    Returns:
      Integer vector ``n`` with ``0 <= n <= caps`` and ``sum(n) == min(total, sum(caps))``.
    """
    caps_f = caps.astype(xp.float32 if xp.__name__ != "numpy" else xp.float64)
    total_f = xp.minimum(xp.asarray(total).astype(caps_f.dtype), xp.sum(caps_f))

    def shares(fixed):
        open_w = xp.where(fixed, 0.0, weights)
        open_w = xp.where(xp.sum(open_w) > 0, open_w, xp.where(fixed, 0.0, caps_f))
        rest = total_f - xp.sum(xp.where(fixed, caps_f, 0.0))
        return rest * open_w / xp.maximum(xp.sum(open_w), 1e-30)

    fixed = caps_f <= 0
    for _ in range(weights.shape[0]):
        fixed = fixed | (shares(fixed) > caps_f)
    ideal = xp.clip(xp.where(fixed, caps_f, shares(fixed)), 0.0, caps_f)
    return largest_remainder(ideal, xp.round(total_f), xp)
