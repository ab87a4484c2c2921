"""N:M structured sparsity: masks with exactly N active weights in every group of M, kept so.

A group is ``M`` consecutive entries along the input axis of a kernel (axis ``-2`` in Flax's
``(..., in, out)`` layout; pass ``axis=-1`` for Equinox's ``(out, in)``), for one output unit
and one position of any other axis (a conv kernel's window). This is the layout that 2:4 sparse
tensor cores accelerate (Mishra et al. 2021, https://arxiv.org/abs/2104.08378) and that SR-STE
trains (Zhou et al. 2021, https://arxiv.org/abs/2102.04010).

:func:`nm_random_masks` draws such masks. :func:`nm_redistribute` is the topology update that
keeps them: it prunes the ``floor(fraction * active)`` smallest-magnitude weights of each layer,
as :func:`redistribute` does, and then regrows, **in each group**, exactly as many connections
as that group lost, chosen among the group's free positions. Every group therefore keeps its
count, whatever the scores. Selection inside a group of ``M`` is a rank count: ``M`` fused
elementwise passes, no sort, ties broken by the lower index. A method with ``nm_group=M``
(``gj.rigl()._replace(nm_group=4)``) makes :func:`redistribute`, and so :func:`dynamic_sparse`,
run this update.

Which methods apply: the per-layer density is fixed at ``N / M``, so only allocations that keep
each layer's count make sense. ``static()``, ``set_()`` (random placement), ``rigl()``
(gradient placement), ``Method(place="momentum")`` (SNFS's placement by |momentum|) and
``Method(place="mixed", rho=...)`` (GGR's mix of gradient and random placement) all run, with
per-layer allocation. GGR's cross-layer allocation (``ggr()``, ``allocate="global_gradient"``)
and SNFS's (``snfs()``, ``allocate="momentum"``) move connections between layers, which N:M
forbids: they raise a ``ValueError`` that says so.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ggr_jax._select import count_true, order_key, random_keys, select_per_leaf
from ggr_jax._tree import (
    PyTree,
    check_like,
    check_masks,
    check_spec,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    map_sparse,
    unflatten_at,
)


def _group_axis(path: str, shape: tuple[int, ...], m: int, axis: int) -> int:
    """The normalised grouped axis; raises unless ``shape[axis]`` is a multiple of ``m``."""
    if len(shape) < 2:
        raise ValueError(f"N:M needs a kernel of ndim >= 2; leaf {path!r} has shape {shape}")
    a = axis % len(shape)
    if shape[a] % m:
        raise ValueError(
            f"N:M with M={m}: axis {axis} of leaf {path!r} has {shape[a]} entries, "
            f"not a multiple of {m} (shape {shape})"
        )
    return a


def _grouped(x: jax.Array, a: int, m: int) -> jax.Array:
    """``x`` reshaped so that axis ``a`` becomes ``(shape[a] // m, m)``; groups are on ``a + 1``."""
    return x.reshape(x.shape[:a] + (x.shape[a] // m, m) + x.shape[a + 1 :])


def group_top_k(keys: jax.Array, eligible: jax.Array, k: Any, *, axis: int) -> jax.Array:
    """In every group along ``axis`` (of length M), the ``k`` eligible entries of largest key.

    Exact: an entry is chosen when fewer than ``k`` eligible entries of its group come before it
    (a larger key, or an equal key at a lower index). ``M`` elementwise passes, no sort.

    Args:
      keys: ``uint32`` keys (e.g. from :func:`order_key`), groups along ``axis``.
      eligible: bool array of the same shape.
      k: per-group counts, broadcastable against ``keys`` with ``axis`` of length 1 (may be
        traced); a group with fewer eligible entries takes all of them.
      axis: the axis of the groups.

    Returns:
      A bool array: ``min(k, #eligible)`` entries set in every group.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> keys = jnp.array([[5, 1, 7, 7], [0, 4, 9, 3]], jnp.uint32)
      >>> gj.group_top_k(keys, keys > 0, 2, axis=1)
      Array([[False, False,  True,  True],
             [False,  True,  True, False]], dtype=bool)
    """
    m = keys.shape[axis]
    index = lax.broadcasted_iota(jnp.int32, keys.shape, axis)
    ahead = jnp.zeros(keys.shape, jnp.int32)
    for j in range(m):
        kj = lax.index_in_dim(keys, j, axis)
        ej = lax.index_in_dim(eligible, j, axis)
        ahead = ahead + (ej & ((kj > keys) | ((kj == keys) & (index > j)))).astype(jnp.int32)
    return eligible & (ahead < jnp.asarray(k, jnp.int32))


def nm_random_masks(
    params: PyTree, *, n: Any, m: int, key: jax.Array, spec: PyTree | None = None, axis: int = -2
) -> PyTree:
    """Random N:M masks: exactly ``n`` active entries in every group of ``m`` along ``axis``.

    Args:
      params: pytree of arrays (only shapes are used).
      n: active entries per group, in [0, m] (may be traced).
      m: group size (static); ``shape[axis]`` of every sparsified leaf must be a multiple of it.
      key: PRNG key; each leaf gets its own subkey.
      spec: static spec from :func:`sparsifiable` (default: kernels of ndim >= 2).
      axis: the input axis (``-2`` for Flax kernels, ``-1`` for Equinox's ``(out, in)``).

    Returns:
      Pytree of bool masks (``None`` for dense leaves), density ``n / m`` in every layer.

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> masks = gj.nm_random_masks({"w": jnp.ones((8, 3))}, n=2, m=4, key=jax.random.key(0))
      >>> masks["w"].reshape(2, 4, 3).sum(axis=1)
      Array([[2, 2, 2],
             [2, 2, 2]], dtype=int32)
    """
    if is_concrete(n) and not 0 <= int(n) <= m:
        raise ValueError(f"N:M needs 0 <= n <= m, got n={n}, m={m}")
    paths, leaves, treedef = leaves_with_paths(params)
    sparse = [i for i, f in enumerate(check_spec(params, spec)) if f]
    keys = jax.random.split(key, max(len(sparse), 1))
    out = []
    for j, i in enumerate(sparse):
        shape = tuple(np.shape(leaves[i]))
        a = _group_axis(paths[i], shape, m, axis)
        scores = _grouped(random_keys(keys[j], shape), a, m)
        out.append(group_top_k(scores, jnp.ones(scores.shape, bool), n, axis=a + 1).reshape(shape))
    return unflatten_at(treedef, len(leaves), sparse, out)


def is_nm(masks: PyTree, *, n: Any, m: int, axis: int = -2) -> PyTree:
    """Per leaf, whether every group of ``m`` along ``axis`` has exactly ``n`` active entries.

    Returns bool scalars (``None`` for dense leaves); jittable.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> gj.is_nm({"w": jnp.array([[1, 0, 1, 0], [1, 1, 0, 0]], bool).T}, n=1, m=2)
      {'w': Array(False, dtype=bool)}
    """

    def one(mask):
        a = _group_axis("mask", tuple(mask.shape), m, axis)
        counts = jnp.sum(_grouped(mask, a, m), axis=a + 1, dtype=jnp.int32)
        return jnp.all(counts == jnp.asarray(n, jnp.int32))

    return map_sparse(one, masks)


def _is_static(method: Any) -> bool:
    return method.allocate == "none"


def check_nm_method(method: Any, m: int | None = None) -> None:
    """Raises ``ValueError`` unless ``method`` can keep groups at their counts (see above)."""
    group = getattr(method, "nm_group", None)
    if group is not None and (not isinstance(group, int) or isinstance(group, bool) or group < 1):
        raise ValueError(f"method.nm_group must be a positive int or None, got {group!r}")
    if group is not None and m is not None and group != m:
        raise ValueError(f"method {method.name!r}: method.nm_group={group} but m={m}")
    if not _is_static(method) and method.allocate != "per_layer":
        raise ValueError(
            f"method {method.name!r} allocates regrowth across layers (allocate="
            f"{method.allocate!r}), but under N:M every layer's density is fixed at N/M and each "
            "group regrows what it lost; keep its placement with per-layer allocation, e.g. "
            "Method('ggr_nm', allocate='per_layer', place='mixed', rho=0.5) for GGR or "
            "Method('snfs_nm', allocate='per_layer', place='momentum') for SNFS"
        )
    if not _is_static(method) and method.place not in ("gradient", "random", "mixed", "momentum"):
        raise ValueError(f"method {method.name!r}: place={method.place!r} cannot regrow under N:M")
    check_unit_interval(method.rho, name="method.rho")


def _regrow(
    method: Any,
    kept: jax.Array,
    dropped: jax.Array,
    signal: jax.Array | None,
    key: jax.Array,
    a: int,
    m: int,
) -> jax.Array:
    """In each group (axis ``a + 1`` of the grouped arrays), as many new connections as it lost."""
    g = a + 1
    need = jnp.sum(dropped, axis=g, keepdims=True, dtype=jnp.int32)
    free = ~kept
    shape = kept.shape[:a] + (kept.shape[a] * kept.shape[g],) + kept.shape[g + 1 :]

    def restrict(keys):  # just-pruned positions only as a last resort
        return keys if method.regrow_pruned else jnp.where(dropped, jnp.uint32(0), keys)

    k_rand, k_round = jax.random.split(key)
    if method.place == "random":
        return group_top_k(restrict(_grouped(random_keys(k_rand, shape), a, m)), free, need, axis=g)
    assert signal is not None  # gradient, momentum or mixed placement reads a signal
    by_signal = restrict(order_key(jnp.abs(signal).astype(jnp.float32)))
    if method.place != "mixed":
        return group_top_k(by_signal, free, need, axis=g)
    # mixed: rho * need by signal (stochastic rounding per group: unbiased per layer), rest random
    share = method.rho * need.astype(jnp.float32)
    n_sig = jnp.floor(share + jax.random.uniform(k_round, need.shape)).astype(jnp.int32)
    first = group_top_k(by_signal, free, n_sig, axis=g)
    rand = restrict(_grouped(random_keys(k_rand, shape), a, m))
    return first | group_top_k(rand, free & ~first, need - n_sig, axis=g)


def _finish(treedef, w_leaves, m_leaves, sparse, new_w, new_m, dropped, skipped):
    leaves_p, leaves_m = list(w_leaves), list(m_leaves)
    for j, i in enumerate(sparse):
        leaves_p[i], leaves_m[i] = new_w[j], new_m[j]
    n = len(m_leaves)
    active = [count_true(x) for x in new_m]
    info = {
        "active": unflatten_at(treedef, n, sparse, active),
        "dropped": unflatten_at(treedef, n, sparse, list(dropped)),
        "grown": unflatten_at(treedef, n, sparse, list(dropped)),
        "moved": jnp.int32(0),
        "skipped": jnp.asarray(skipped, jnp.bool_),
    }
    return (
        jax.tree_util.tree_unflatten(treedef, leaves_p),
        jax.tree_util.tree_unflatten(treedef, leaves_m),
        info,
    )


def nm_redistribute(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    key: jax.Array,
    *,
    method: Any,
    fraction: Any,
    m: int,
    axis: int = -2,
    momentum: PyTree | None = None,
    skip_nonfinite: bool = True,
) -> tuple[PyTree, PyTree, dict[str, Any]]:
    """A topology update that keeps every group of ``m`` (along ``axis``) at its active count.

    Each layer drops its ``floor(fraction * active)`` smallest-magnitude weights (the selection
    kernel of :func:`redistribute`); each group then regrows exactly as many as it lost, among
    its free positions, placed as ``method.place`` says (largest |g|, random, largest |momentum|,
    or ``rho`` of them by |g| and the rest random). N:M masks stay N:M, for any N.

    Args:
      params, masks, grads, key: as for :func:`redistribute`.
      method: a :class:`Method` with per-layer allocation (see the module docstring: ``ggr()``'s
        and ``snfs()``'s cross-layer allocations raise ``ValueError``).
      fraction: share of each layer's active weights to drop, in [0, 1] (may be traced).
      m: the group size (static).
      axis: the input axis the groups run along (``-2``: Flax's ``(..., in, out)``).
      momentum: per-weight momentum, for ``place="momentum"``.
      skip_nonfinite: leave the topology unchanged when params, grads or momentum hold NaN/Inf.

    Returns:
      ``(new_params, new_masks, info)`` as :func:`redistribute` returns them (``moved`` is 0).

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> w = jnp.arange(1., 25.).reshape(8, 3)
      >>> masks = gj.nm_random_masks({"w": w}, n=2, m=4, key=jax.random.key(0))
      >>> p, new, info = jax.jit(gj.nm_redistribute, static_argnames=("method", "m"))(
      ...     gj.apply_masks({"w": w}, masks), masks, {"w": -w}, jax.random.key(1),
      ...     method=gj.rigl(), fraction=0.5, m=4)
      >>> bool(gj.is_nm(new, n=2, m=4)["w"]), int(info["dropped"]["w"])
      (True, 6)
    """
    _check_inputs(params, masks, grads, momentum, method=method, fraction=fraction, m=m)
    paths, m_leaves, treedef = leaves_with_paths(masks)
    w_leaves, g_leaves = leaves_with_paths(params)[1], leaves_with_paths(grads)[1]
    s_leaves = leaves_with_paths(momentum)[1] if method.place == "momentum" else g_leaves
    sparse = [i for i, x in enumerate(m_leaves) if x is not None]
    layers = _Layers(
        masks=[m_leaves[i] for i in sparse],
        weights=[w_leaves[i] for i in sparse],
        signals=[s_leaves[i] for i in sparse],
        axes=[_group_axis(paths[i], tuple(np.shape(w_leaves[i])), m, axis) for i in sparse],
    )

    def finish(new_w, new_m, dropped, skipped):
        return _finish(treedef, w_leaves, m_leaves, sparse, new_w, new_m, dropped, skipped)

    def unchanged(skipped):
        kept = [jnp.where(x, w, jnp.zeros((), w.dtype)) for x, w in zip(*layers[:2], strict=True)]
        return finish(kept, layers.masks, jnp.zeros(len(sparse), jnp.int32), skipped)

    if _is_static(method) or not sparse:
        return unchanged(False)

    def update():
        return finish(*_update(layers, key, method=method, fraction=fraction, m=m), False)

    if not skip_nonfinite:
        return update()
    trees = [w_leaves, g_leaves] + ([s_leaves] if method.place == "momentum" else [])
    bad = sum(count_true(~jnp.isfinite(t[i])) for t in trees for i in sparse)
    return lax.cond(bad == 0, update, lambda: unchanged(True))


class _Layers(NamedTuple):
    """The sparse leaves of an N:M update, in leaf order, with each one's group axis."""

    masks: list[jax.Array]
    weights: list[jax.Array]
    signals: list[jax.Array]  # |g| or |momentum| ranks regrowth (unused by random placement)
    axes: list[int]


def _check_inputs(params, masks, grads, momentum, *, method, fraction, m) -> None:
    check_nm_method(method, m)
    check_masks(params, masks)
    check_like(params, grads, name="grads")
    check_unit_interval(fraction, name="fraction")
    if not _is_static(method) and method.place == "momentum":
        if momentum is None:
            raise ValueError(f"method {method.name!r} places by momentum: pass momentum=")
        check_like(params, momentum, name="momentum")


def _update(
    layers: _Layers, key: jax.Array, *, method: Any, fraction: Any, m: int
) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
    """Per layer: drop the smallest-magnitude share, then regrow group by group what each lost.

    Returns ``(new_weights, new_masks, n_dropped)`` over the sparse leaves.
    """
    active = jnp.stack([count_true(x) for x in layers.masks])
    f = jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)
    n_drop = jnp.floor(f * active.astype(jnp.float32)).astype(jnp.int32)
    drop, n_drop = select_per_leaf(
        [(lambda w: order_key(-jnp.abs(w)), (w,)) for w in layers.weights],
        layers.masks,
        n_drop,
        n_eligible=active,
    )
    subkeys = jax.random.split(key, len(layers.masks))
    new_m, new_w = [], []
    for j, (x, w, s, a) in enumerate(zip(*layers, strict=True)):
        kept = _grouped(x & ~drop[j], a, m)
        signal = None if method.place == "random" else _grouped(s, a, m)
        grown = _regrow(method, kept, _grouped(drop[j], a, m), signal, subkeys[j], a, m)
        new_m.append((kept | grown).reshape(w.shape))
        new_w.append(jnp.where(x & new_m[-1], w, jnp.zeros((), w.dtype)))
    return new_w, new_m, n_drop
