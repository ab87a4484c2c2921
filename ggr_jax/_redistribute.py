"""One topology update as a pipeline of stages: prune -> allocate -> place.

:func:`redistribute` prunes each layer's smallest-magnitude weights (:func:`prune`), asks the
method's *allocate* stage how many connections each layer regrows (:data:`ALLOCATE`), and its
*place* stage where they go inside the layer (:data:`PLACE`). A stage is one top-level function
looked up by name in its table: a new growth criterion is one function and one table entry
(docs/concepts.md shows one). Every selection goes through the threshold kernel of
``_select.py``: no sort, no concatenation of leaves, exact counts.

Reference: Parger et al. 2022, "Gradient-based Weight Density Balancing for Robust Dynamic
Sparse Training", https://arxiv.org/abs/2210.14012
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ggr_jax._apportion import capped_shares
from ggr_jax._methods import NORMALIZE, SIGNAL, Method
from ggr_jax._nm import check_nm_method, nm_redistribute
from ggr_jax._select import (
    KeySpec,
    count_true,
    order_key,
    random_keys,
    select_global,
    select_per_leaf,
)
from ggr_jax._tree import (
    PyTree,
    check_like,
    check_masks,
    check_scalar,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    unflatten_at,
)


class Layers(NamedTuple):
    """The sparsified leaves of one update, in leaf order (one entry per layer)."""

    weights: list[jax.Array]
    masks: list[jax.Array]  # bool, before the update
    grads: list[jax.Array]  # the regrowth signal (any per-weight array like the weights)
    momentum: list[jax.Array] | None  # SNFS's momentum, when given
    active: jax.Array  # int32[L]: active weights before the update
    sizes: jax.Array  # int32[L]
    floors: jax.Array  # int32[L]: min_active, at most active


class Pruned(NamedTuple):
    """What the prune left: the dropped weights and where each layer may regrow."""

    drop: list[jax.Array]  # bool: the weights dropped
    n_drop: jax.Array  # int32[L]
    free: list[jax.Array]  # bool: inactive after the prune (eligible for regrowth)
    n_free: jax.Array  # int32[L]


class Allocation(NamedTuple):
    """How many connections each layer regrows (and, for a global top-k, which ones)."""

    n_grow: jax.Array  # int32[L], sums to the number dropped
    picked: list[jax.Array] | None = None  # bool: the global top-k's own choice, when it made one


def magnitude(x: jax.Array) -> jax.Array:
    """|x| as float32: the score of a gradient or a momentum."""
    return jnp.abs(x).astype(jnp.float32)


def _count(xs: list[jax.Array]) -> jax.Array:
    return jnp.stack([count_true(x) for x in xs]) if xs else jnp.zeros(0, jnp.int32)


def selection_keys(method: Method, pruned: Pruned, scores: list[KeySpec]) -> list[KeySpec]:
    """Selection keys of float scores. Scores are recomputed where each selection pass needs
    them (XLA fuses them there), so no float32 or uint32 copy of a layer is kept alive. Without
    ``regrow_pruned``, just-dropped positions get the lowest key: a last resort."""
    specs: list[KeySpec] = [(lambda *a, f=f: order_key(f(*a)), a) for f, a in scores]
    if method.regrow_pruned:
        return specs
    return [
        (lambda d, *a, f=f: jnp.where(d, jnp.uint32(0), f(*a)), (d, *a))
        for d, (f, a) in zip(pruned.drop, specs, strict=True)
    ]


def _gradient_scores(layers: Layers) -> list[KeySpec]:
    return [(magnitude, (g,)) for g in layers.grads]


def _momentum_scores(layers: Layers) -> list[KeySpec]:
    if layers.momentum is None:
        raise AssertionError("momentum checked by redistribute")
    return [(magnitude, (m,)) for m in layers.momentum]


# --- prune ----------------------------------------------------------------------------------------


def _unit_keep(w: jax.Array, m: jax.Array) -> jax.Array:
    """Each output unit's (last axis) largest-|w| active weight; False in units with none."""
    out = w.shape[-1] if w.ndim else 1
    mag = jnp.where(m, jnp.abs(w).astype(jnp.float32), -1.0).reshape(-1, out)
    first = jnp.argmax(mag, axis=0)  # lowest index among ties
    keep = jnp.arange(mag.shape[0])[:, None] == first[None, :]
    return keep.reshape(w.shape) & m


def prune(method: Method, layers: Layers, fraction: jax.Array) -> Pruned:
    """Drops ``floor(fraction * active)`` smallest-|w| active weights per layer (fewer where the
    layer would fall below its floor, or, with ``unit_floor``, take a unit's last weight)."""
    prunable, n_prunable = layers.masks, layers.active
    if method.unit_floor:
        unit_keep = [_unit_keep(w, m) for w, m in zip(layers.weights, layers.masks, strict=True)]
        prunable = [m & ~u for m, u in zip(layers.masks, unit_keep, strict=True)]
        n_prunable = layers.active - _count(unit_keep)
    wanted = jnp.floor(fraction * layers.active.astype(jnp.float32)).astype(jnp.int32)
    n_drop = jnp.minimum(wanted, jnp.minimum(layers.active - layers.floors, n_prunable))
    drop, _ = select_per_leaf(
        [(lambda w: order_key(-jnp.abs(w)), (w,)) for w in layers.weights],
        prunable,
        n_drop,
        n_eligible=n_prunable,
    )
    free = [~(m & ~d) for m, d in zip(layers.masks, drop, strict=True)]
    n_free = layers.sizes - layers.active + n_drop  # (counts the kernel need not count again)
    return Pruned(drop, n_drop, free, n_free)


# --- allocate: how many connections each layer regrows ------------------------------------------


def allocate_per_layer(method: Method, layers: Layers, pruned: Pruned) -> Allocation:
    """RigL, SET: each layer regrows what it dropped."""
    del method, layers
    return Allocation(pruned.n_drop)


def _scale(
    how: str | None, g: jax.Array, w: jax.Array, m: jax.Array, active: jax.Array
) -> jax.Array:
    """The float32 factor that puts one layer's |g| on GGR's common scale (see :func:`ggr`)."""
    if how is None:
        return jnp.ones((), jnp.float32)
    if how == "weight":
        w2 = jnp.sum(jnp.where(m, jnp.square(w.astype(jnp.float32)), 0.0))
        return jnp.sqrt(w2 / jnp.maximum(active, 1).astype(jnp.float32))
    a = jnp.abs(g).astype(jnp.float32)
    scale = {
        "l2": lambda: jnp.sqrt(jnp.sum(a * a)),
        "rms": lambda: jnp.sqrt(jnp.mean(a * a)),
        "mean": lambda: jnp.mean(a),
        "max": lambda: jnp.max(a),
    }[how]()
    return 1.0 / jnp.where(scale > 0, scale, 1.0)


def allocate_global_gradient(method: Method, layers: Layers, pruned: Pruned) -> Allocation:
    """GGR: the layers' shares of the global top-k of (normalised) |g| over all free positions."""
    scales = [
        _scale(method.normalize, g, w, m, a)
        for g, w, m, a in zip(
            layers.grads, layers.weights, layers.masks, list(layers.active), strict=True
        )
    ]
    scored: list[KeySpec] = [
        (lambda g, c: magnitude(g) * c, (g, c)) for g, c in zip(layers.grads, scales, strict=True)
    ]
    picked, n_grow = select_global(
        selection_keys(method, pruned, scored),
        pruned.free,
        jnp.sum(pruned.n_drop),
        n_eligible=pruned.n_free,
    )
    return Allocation(n_grow, picked)


def allocate_momentum(method: Method, layers: Layers, pruned: Pruned) -> Allocation:
    """SNFS: shares proportional to the mean |momentum| of each layer's active weights, with the
    overflow of full layers spread over the others."""
    del method
    mean_mom = jnp.stack(
        [
            jnp.sum(jnp.where(m, f(*a), 0.0))
            for m, (f, a) in zip(layers.masks, _momentum_scores(layers), strict=True)
        ]
    )
    mean_mom = mean_mom / jnp.maximum(layers.active, 1).astype(jnp.float32)
    return Allocation(capped_shares(jnp.sum(pruned.n_drop), mean_mom, pruned.n_free, jnp))


# --- place: where the connections go inside each layer ------------------------------------------

Placed = tuple[list[jax.Array], jax.Array]  # (bool masks of the regrown weights, int32[L] counts)


def place_gradient(
    method: Method, layers: Layers, pruned: Pruned, alloc: Allocation, key: jax.Array
) -> Placed:
    """The free positions of largest |g| (a global top-k's own pick, which a per-layer
    normalisation leaves in the same order inside each layer)."""
    del key
    if alloc.picked is not None:
        return alloc.picked, alloc.n_grow
    return _largest(method, pruned, alloc, _gradient_scores(layers))


def place_momentum(
    method: Method, layers: Layers, pruned: Pruned, alloc: Allocation, key: jax.Array
) -> Placed:
    """SNFS: the free positions of largest |momentum|."""
    del key
    return _largest(method, pruned, alloc, _momentum_scores(layers))


def _largest(method: Method, pruned: Pruned, alloc: Allocation, scores: list[KeySpec]) -> Placed:
    """Per leaf, the ``alloc.n_grow`` free positions of largest score."""
    keys = selection_keys(method, pruned, scores)
    return select_per_leaf(keys, pruned.free, alloc.n_grow, n_eligible=pruned.n_free)


def _random(
    method: Method,
    layers: Layers,
    pruned: Pruned,
    free: list[jax.Array],
    n: jax.Array,
    n_free: jax.Array,
    key: jax.Array,
) -> Placed:
    subkeys = jax.random.split(key, len(layers.weights))
    noise: list[KeySpec] = [
        (lambda k, shape=w.shape: random_keys(k, shape), (k,))
        for k, w in zip(subkeys, layers.weights, strict=True)
    ]
    if not method.regrow_pruned:
        noise = [
            (lambda d, k, f=f: jnp.where(d, jnp.uint32(0), f(k)), (d, *a))
            for d, (f, a) in zip(pruned.drop, noise, strict=True)
        ]
    return select_per_leaf(noise, free, n, interpolate=True, n_eligible=n_free)


def place_random(
    method: Method, layers: Layers, pruned: Pruned, alloc: Allocation, key: jax.Array
) -> Placed:
    """SET: uniformly random free positions (a counter-based hash: exact counts, no sort)."""
    return _random(method, layers, pruned, pruned.free, alloc.n_grow, pruned.n_free, key)


def place_mixed(
    method: Method, layers: Layers, pruned: Pruned, alloc: Allocation, key: jax.Array
) -> Placed:
    """GGR: ``round(rho * n)`` by largest |g|, the rest at random among the remaining positions."""
    n_grad = jnp.round(method.rho * alloc.n_grow.astype(jnp.float32)).astype(jnp.int32)
    by_grad, c_grad = select_per_leaf(
        selection_keys(method, pruned, _gradient_scores(layers)),
        pruned.free,
        n_grad,
        n_eligible=pruned.n_free,
    )
    rest = [f & ~b for f, b in zip(pruned.free, by_grad, strict=True)]
    by_rand, c_rand = _random(
        method, layers, pruned, rest, alloc.n_grow - n_grad, pruned.n_free - c_grad, key
    )
    return [b | r for b, r in zip(by_grad, by_rand, strict=True)], c_grad + c_rand


AllocateFn = Callable[[Method, Layers, Pruned], Allocation]
PlaceFn = Callable[[Method, Layers, Pruned, Allocation, jax.Array], Placed]
ALLOCATE: dict[str, AllocateFn] = {
    "per_layer": allocate_per_layer,
    "global_gradient": allocate_global_gradient,
    "momentum": allocate_momentum,
}
PLACE: dict[str, PlaceFn] = {
    "gradient": place_gradient,
    "random": place_random,
    "mixed": place_mixed,
    "momentum": place_momentum,
}


def check_method(method: Method) -> None:
    """One place for every check of a method's fields and of their combinations."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a ggr_jax.Method (e.g. gj.ggr()), got {method!r}")
    for field, allowed in (
        ("allocate", ("none", *ALLOCATE)),
        ("place", ("none", *PLACE)),
        ("normalize", NORMALIZE),
        ("signal", SIGNAL),
    ):
        value = getattr(method, field)
        if value not in allowed:
            raise ValueError(f"method.{field} must be one of {allowed}, got {value!r}")
    if (method.allocate == "none") != (method.place == "none"):
        raise ValueError(
            f"method {method.name!r}: allocate={method.allocate!r} with place={method.place!r}; "
            "static training is allocate='none' with place='none' (gj.static()), and a "
            "dynamic method needs both"
        )
    if method.normalize is not None and method.allocate != "global_gradient":
        raise ValueError(
            f"method {method.name!r}: normalize={method.normalize!r} applies only "
            "to allocate='global_gradient'"
        )
    check_unit_interval(method.rho, name="method.rho")
    for field in ("regrow_pruned", "unit_floor"):
        if not isinstance(getattr(method, field), bool):
            raise ValueError(f"method.{field} must be a bool, got {getattr(method, field)!r}")
    if method.nm_group is not None:
        check_nm_method(method)


def _min_active(min_active: Any, path: str, shape: tuple[int, ...]) -> Any:
    """The per-layer floor: an int (may be traced), a callable of (path, shape), or shape[-1]."""
    if min_active is None:
        value = shape[-1] if shape else 1
    elif callable(min_active):
        value = min_active(path, shape)
    else:
        value = min_active
    if is_concrete(value) and int(value) < 0:
        raise ValueError(f"min_active for leaf {path!r} must be >= 0, got {value}")
    return jnp.maximum(jnp.asarray(value, jnp.int32), 0)


class _Tree(NamedTuple):
    """Where the sparsified leaves sit in the flattened tree, to write results back."""

    treedef: Any
    leaves: list[Any]  # all leaves of params
    masks: list[Any]  # all leaves of masks (None for dense leaves)
    sparse: list[int]  # positions of the sparsified leaves

    def result(self, new_weights, new_masks, dropped, grown, active, skipped):
        leaves_p, leaves_m = list(self.leaves), list(self.masks)
        for j, i in enumerate(self.sparse):
            leaves_p[i], leaves_m[i] = new_weights[j], new_masks[j]
        per_leaf = lambda v: unflatten_at(self.treedef, len(self.masks), self.sparse, list(v))
        info = {
            "active": per_leaf(active),
            "dropped": per_leaf(dropped),
            "grown": per_leaf(grown),
            "moved": jnp.sum(jnp.maximum(grown - dropped, 0)).astype(jnp.int32),
            "skipped": jnp.asarray(skipped, jnp.bool_),
        }
        return (
            jax.tree_util.tree_unflatten(self.treedef, leaves_p),
            jax.tree_util.tree_unflatten(self.treedef, leaves_m),
            info,
        )


def _split(params, masks, grads, momentum, min_active) -> tuple[_Tree, Layers]:
    paths, m_leaves, treedef = leaves_with_paths(masks)
    w_leaves, g_leaves = leaves_with_paths(params)[1], leaves_with_paths(grads)[1]
    mo_leaves = leaves_with_paths(momentum)[1] if momentum is not None else None
    sparse = [i for i, m in enumerate(m_leaves) if m is not None]
    masks_in = [m_leaves[i] for i in sparse]
    active = _count(masks_in)
    floors = [_min_active(min_active, paths[i], tuple(np.shape(w_leaves[i]))) for i in sparse]
    layers = Layers(
        weights=[w_leaves[i] for i in sparse],
        masks=masks_in,
        grads=[g_leaves[i] for i in sparse],
        momentum=[mo_leaves[i] for i in sparse] if mo_leaves is not None else None,
        active=active,
        sizes=jnp.asarray([int(np.size(w_leaves[i])) for i in sparse], jnp.int32),
        floors=jnp.minimum(jnp.stack(floors), active) if sparse else active,
    )
    return _Tree(treedef, w_leaves, m_leaves, sparse), layers


def _nonfinite(layers: Layers) -> jax.Array:
    """How many NaN/Inf entries weights, grads and momentum hold: one fused pass per leaf."""
    moms = layers.momentum if layers.momentum is not None else [None] * len(layers.weights)
    counts = []
    for w, g, mo in zip(layers.weights, layers.grads, moms, strict=True):
        ok = jnp.isfinite(w) & jnp.isfinite(g)
        counts.append(count_true(~(ok & jnp.isfinite(mo)) if mo is not None else ~ok))
    return sum(counts, jnp.zeros((), jnp.int32))


def _update(method: Method, tree: _Tree, layers: Layers, fraction: jax.Array, key: jax.Array):
    pruned = prune(method, layers, fraction)
    alloc = ALLOCATE[method.allocate](method, layers, pruned)
    grow, grown = PLACE[method.place](method, layers, pruned, alloc, key)
    new_masks = [(m & ~d) | g for m, d, g in zip(layers.masks, pruned.drop, grow, strict=True)]
    # A weight pruned and regrown in the same update never leaves the mask: it keeps its value,
    # as its optimizer state is kept by reset_optimizer_state(masks, new_masks) and as
    # dynamic_sparse applies the update. Pruned weights and weights new to the mask are 0.
    new_weights = [
        jnp.where(m & nm, w, jnp.zeros((), w.dtype))
        for m, nm, w in zip(layers.masks, new_masks, layers.weights, strict=True)
    ]
    active = layers.active - pruned.n_drop + grown
    return tree.result(new_weights, new_masks, pruned.n_drop, alloc.n_grow, active, False)


def _unchanged(tree: _Tree, layers: Layers, skipped: Any):
    zero = jnp.zeros(len(layers.weights), jnp.int32)
    kept = [
        jnp.where(m, w, jnp.zeros((), w.dtype))
        for m, w in zip(layers.masks, layers.weights, strict=True)
    ]
    return tree.result(kept, layers.masks, zero, zero, layers.active, skipped)


def redistribute(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    key: jax.Array,
    *,
    method: Method,
    fraction: Any,
    min_active: int | Callable[[str, tuple[int, ...]], int] | None = None,
    momentum: PyTree | None = None,
    skip_nonfinite: bool = True,
) -> tuple[PyTree, PyTree, dict[str, Any]]:
    """One topology update: prune by magnitude per layer, allocate regrowth, place it.

    A pure function: jit it, call it under ``lax.cond``, shard its inputs. The total number of
    active weights is unchanged; pruned weights and weights new to the masks are exactly 0 in the
    returned params (reset their optimizer state with :func:`reset_optimizer_state`). A weight
    pruned and regrown in the same update stays in the masks and keeps its value.

    Args:
      params: pytree of arrays.
      masks: bool masks parallel to params (``None`` for dense leaves).
      grads: dense gradients of the loss w.r.t. params (the gradients of inactive weights are
        what regrowth looks at), or any per-weight signal of the same structure.
      key: PRNG key for random placement.
      method: a :class:`Method`, e.g. ``ggr()``, ``rigl()``, ``set_()``, ``snfs()``, ``static()``.
      fraction: share of each layer's active weights to drop, a scalar in [0, 1] (an array
        raises); may be traced (e.g. from an optax schedule), in which case it is clipped to
        [0, 1].
      min_active: fewest active weights a layer keeps in total (a per-layer count): an int, a
        callable ``(path, shape) -> int``, or ``None`` for ``shape[-1]`` (as many as the layer
        has output units in Flax's ``(in, out)`` layout; it does not keep one weight in *each*
        unit: that is ``Method.unit_floor``).
      momentum: per-weight momentum, required by ``snfs()``.
      skip_nonfinite: when grads, params or momentum hold NaN/Inf, leave the topology unchanged
        and report ``info["skipped"] = True``.

    Returns:
      ``(new_params, new_masks, info)``. ``info`` holds per-leaf pytrees ``active``,
      ``dropped`` and ``grown`` (int32, ``None`` for dense leaves), the scalar ``moved``
      (connections that changed layer: the sum over layers of ``max(grown - dropped, 0)``) and
      the bool scalar ``skipped``.

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> params = {"a": jnp.array([[3., 0.], [1., 2.]]), "b": jnp.array([[5., 0.], [4., 0.]])}
      >>> masks = {"a": params["a"] != 0, "b": params["b"] != 0}
      >>> grads = {"a": jnp.zeros((2, 2)), "b": jnp.array([[0., 9.], [0., 8.]])}
      >>> p, m, info = jax.jit(gj.redistribute, static_argnames="method")(
      ...     params, masks, grads, jax.random.key(0), method=gj.ggr(rho=1.0), fraction=0.5,
      ...     min_active=0)
      >>> m["a"].sum() + m["b"].sum(), int(info["moved"])
      (Array(5, dtype=int32), 1)
    """
    check_method(method)
    check_masks(params, masks)
    check_like(params, grads, name="grads")
    check_scalar(fraction, name="fraction")
    check_unit_interval(fraction, name="fraction")
    if method.needs_momentum:
        if momentum is None:
            raise ValueError(f"method {method.name!r} needs momentum= (a pytree like params)")
        check_like(params, momentum, name="momentum")
    if method.nm_group is not None:  # N:M: each group regrows what it lost
        return nm_redistribute(
            params,
            masks,
            grads,
            key,
            method=method,
            fraction=fraction,
            m=method.nm_group,
            momentum=momentum,
            skip_nonfinite=skip_nonfinite,
        )
    tree, layers = _split(params, masks, grads, momentum, min_active)
    if method.is_static or not tree.sparse:
        return _unchanged(tree, layers, False)
    fraction = jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)

    def update():
        return _update(method, tree, layers, fraction, key)

    if not skip_nonfinite:
        return update()
    return lax.cond(_nonfinite(layers) == 0, update, lambda: _unchanged(tree, layers, True))
