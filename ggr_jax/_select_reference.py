"""The semantics of the selection kernel, spelled out as a sort (NumPy, for tests and readers).

:func:`top_k_reference` is what :func:`ggr_jax.top_k_global` and :func:`ggr_jax.top_k_per_leaf`
compute, written the obvious way: list every eligible entry, sort by key (largest first), then
by leaf, then by flat index (lowest first), and take the first ``k``. The kernel in
``_select.py`` must agree with it on every input, ties included; tests/test_select.py checks
that on random problems with many ties.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def top_k_reference(
    keys: Sequence[ArrayLike],
    eligible: Sequence[ArrayLike],
    k: ArrayLike,
    *,
    per_leaf: bool,
) -> list[np.ndarray]:
    """Sort-based top-k: largest key first, ties by leaf order then by lowest flat index.

    Args:
      keys: ``uint32`` arrays, one per leaf (e.g. from :func:`ggr_jax.order_key`).
      eligible: bool arrays of the same shapes; ineligible entries are never selected.
      k: with ``per_leaf``, one count per leaf; otherwise one count over all leaves. A count is
        clipped to ``[0, #eligible]``.
      per_leaf: select in each leaf separately (``True``) or over all leaves taken together.

    Returns:
      Bool arrays shaped like ``keys``, the selected entries set.

    Example:
      >>> keys = [np.array([5, 7, 7], np.uint32), np.array([7, 9], np.uint32)]
      >>> elig = [np.ones(3, bool), np.ones(2, bool)]
      >>> [m.astype(int).tolist() for m in top_k_reference(keys, elig, 3, per_leaf=False)]
      [[0, 1, 1], [0, 1]]
      >>> [m.astype(int).tolist() for m in top_k_reference(keys, elig, [1, 1], per_leaf=True)]
      [[0, 1, 0], [0, 1]]
    """
    flat_keys = [np.asarray(x).ravel().astype(np.int64) for x in keys]
    flat_elig = [np.asarray(e).ravel().astype(bool) for e in eligible]
    out = [np.zeros(x.shape, bool) for x in flat_keys]
    leaves = range(len(flat_keys))
    groups = [[i] for i in leaves] if per_leaf else [list(leaves)]
    counts = np.atleast_1d(np.asarray(k, np.int64))
    for g, members in enumerate(groups):
        entries = sorted(
            (-int(flat_keys[i][j]), i, j) for i in members for j in np.flatnonzero(flat_elig[i])
        )
        for _, i, j in entries[: max(int(counts[g]), 0)]:
            out[i][j] = True
    return [o.reshape(np.shape(x)) for o, x in zip(out, keys, strict=True)]
