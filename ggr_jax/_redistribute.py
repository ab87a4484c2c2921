"""One topology update: prune -> allocate -> place, and the methods that configure it.

GGR, RigL, SET, SNFS and static sparse training are all configurations of the same pure,
jittable :func:`redistribute`. Every selection goes through the threshold kernel of
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
from ggr_jax._select import count_true, order_key, random_keys, select_global, select_per_leaf
from ggr_jax._tree import (
    PyTree,
    check_like,
    check_masks,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    unflatten_at,
)

_ALLOCATE = ("none", "per_layer", "global_gradient", "momentum")
_PLACE = ("none", "gradient", "random", "mixed", "momentum")
_NORMALIZE = (None, "l2", "mean", "max")
_SIGNAL = ("batch", "accumulated")


class Method(NamedTuple):
    """A dynamic sparse training method as a configuration of prune -> allocate -> place.

    Attributes:
      name: label used in logs.
      prune: drop ``floor(fraction * active)`` smallest-magnitude weights per layer.
      allocate: how many connections each layer regrows: ``"per_layer"`` (as many as it
        dropped), ``"global_gradient"`` (GGR: a top-k over all layers' gradients together),
        ``"momentum"`` (SNFS: proportional to the layer's mean |momentum|), ``"none"``.
      place: where they go inside a layer: ``"gradient"`` (largest |g|), ``"random"``,
        ``"mixed"`` (``round(rho * n)`` by gradient, the rest random), ``"momentum"``.
      rho: share of the regrown connections placed by gradient when ``place == "mixed"``.
      normalize: per-layer gradient normalisation before GGR's global top-k: ``None``,
        ``"l2"`` (divide by the layer's gradient L2 norm), ``"mean"`` (by its mean |g|),
        ``"max"`` (by its max |g|).
      regrow_pruned: whether just-pruned positions may be regrown in the same update (as in
        RigL). When False they are used only if a layer has no other free position left.
      signal: which gradient :func:`dynamic_sparse` passes: ``"batch"`` (the current batch) or
        ``"accumulated"`` (mean |g| since the last update).
    """

    name: str
    prune: bool = True
    allocate: str = "per_layer"
    place: str = "gradient"
    rho: float = 1.0
    normalize: str | None = None
    regrow_pruned: bool = True
    signal: str = "batch"

    @property
    def needs_momentum(self) -> bool:
        return self.allocate == "momentum" or self.place == "momentum"


def static() -> Method:
    """Static sparse training: the masks never change."""
    return Method("static", prune=False, allocate="none", place="none")


def set_() -> Method:
    """SET: magnitude pruning, per-layer regrowth at random positions.

    Reference: Mocanu et al. 2018, https://arxiv.org/abs/1707.04780
    """
    return Method("set", allocate="per_layer", place="random")


def rigl(*, signal: str = "batch") -> Method:
    """RigL: magnitude pruning, per-layer regrowth where |gradient| is largest.

    Reference: Evci et al. 2020, https://arxiv.org/abs/1911.11134
    """
    return Method("rigl", allocate="per_layer", place="gradient", signal=signal)


def snfs() -> Method:
    """SNFS (sparse momentum): regrowth counts by mean |momentum| per layer, placed by |momentum|.

    ``redistribute`` then needs ``momentum=``; :func:`dynamic_sparse` keeps an EMA of gradients.

    Reference: Dettmers & Zettlemoyer 2019, https://arxiv.org/abs/1907.04840
    """
    return Method("snfs", allocate="momentum", place="momentum")


def ggr(
    *,
    rho: float = 0.5,
    normalize: str | None = None,
    regrow_pruned: bool = True,
    signal: str = "batch",
) -> Method:
    """GGR: Global Gradient-based Redistribution.

    Each layer drops its smallest-magnitude weights; the number each layer regrows is how many
    of the ``R`` largest |gradients| over the free positions of all layers together fall into it
    (a global top-k); inside a layer ``round(rho * n)`` go where |g| is largest and the rest at
    random (the paper inserts by "a combination of gradient-based and random insertion" without
    fixing the share). ``rho``, ``normalize``, ``regrow_pruned`` and ``signal`` are the paper's
    open choices; the defaults are ours (see docs/results.md for the evidence).

    Reference: Parger et al. 2022, https://arxiv.org/abs/2210.14012

    Example:
      >>> import ggr_jax as gj
      >>> gj.ggr(rho=0.5).allocate
      'global_gradient'
    """
    return Method(
        "ggr",
        allocate="global_gradient",
        place="mixed" if rho != 1.0 else "gradient",
        rho=rho,
        normalize=normalize,
        regrow_pruned=regrow_pruned,
        signal=signal,
    )


def _check_method(method: Method) -> None:
    if not isinstance(method, Method):
        raise ValueError(f"method must be a ggr_jax.Method (e.g. gj.ggr()), got {method!r}")
    for field, allowed in (("allocate", _ALLOCATE), ("place", _PLACE), ("normalize", _NORMALIZE),
                           ("signal", _SIGNAL)):
        if getattr(method, field) not in allowed:
            raise ValueError(f"method.{field} must be one of {allowed}, got {getattr(method, field)!r}")
    check_unit_interval(method.rho, name="method.rho")


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


def _normalize(g: jax.Array, how: str | None) -> jax.Array:
    if how is None:
        return g
    if how == "l2":
        scale = jnp.sqrt(jnp.sum(g * g))
    elif how == "mean":
        scale = jnp.mean(g)
    else:
        scale = jnp.max(g)
    return g / jnp.where(scale > 0, scale, 1.0)


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
      fraction: share of each layer's active weights to drop, in [0, 1]; may be traced (e.g.
        from an optax schedule), in which case it is clipped to [0, 1].
      min_active: fewest active weights a layer keeps: an int, a callable ``(path, shape) ->
        int``, or ``None`` for one per output unit (``shape[-1]``, Flax's layout).
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
    _check_method(method)
    check_masks(params, masks)
    check_like(params, grads, name="grads")
    check_unit_interval(fraction, name="fraction")
    if method.needs_momentum:
        if momentum is None:
            raise ValueError(f"method {method.name!r} needs momentum= (a pytree like params)")
        check_like(params, momentum, name="momentum")

    paths, m_leaves, treedef = leaves_with_paths(masks)
    _, w_leaves, _ = leaves_with_paths(params)
    _, g_leaves, _ = leaves_with_paths(grads)
    mo_leaves = leaves_with_paths(momentum)[1] if momentum is not None else None
    n = len(m_leaves)
    sparse = [i for i, m in enumerate(m_leaves) if m is not None]
    masks_in = [m_leaves[i] for i in sparse]
    weights = [w_leaves[i] for i in sparse]
    # Scores and keys are recomputed where each selection pass needs them (XLA fuses them there),
    # so that no float32 or uint32 copy of the params is kept alive during the update.
    # Scores are (function, arrays) pairs: see ggr_jax._select.KeySpec.
    def magnitude(x):
        return jnp.abs(x).astype(jnp.float32)

    signal = [(magnitude, (g_leaves[i],)) for i in sparse]
    mom = [(magnitude, (mo_leaves[i],)) for i in sparse] if mo_leaves else None
    mins = [_min_active(min_active, paths[i], tuple(np.shape(w_leaves[i]))) for i in sparse]
    sizes = jnp.asarray([int(np.size(w)) for w in weights], jnp.int32)
    fraction = jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)

    def count(xs):
        return jnp.stack([count_true(x) for x in xs]) if xs else jnp.zeros(0, jnp.int32)

    def finish(new_masks, new_weights, dropped, grown, skipped, active=None):
        leaves_p = list(w_leaves)
        leaves_m = list(m_leaves)
        for j, i in enumerate(sparse):
            leaves_p[i] = new_weights[j]
            leaves_m[i] = new_masks[j]
        info = {
            "active": unflatten_at(treedef, n, sparse,
                                   list(count(new_masks) if active is None else active)),
            "dropped": unflatten_at(treedef, n, sparse, list(dropped)),
            "grown": unflatten_at(treedef, n, sparse, list(grown)),
            "moved": jnp.sum(jnp.maximum(grown - dropped, 0)).astype(jnp.int32),
            "skipped": jnp.asarray(skipped, jnp.bool_),
        }
        return (jax.tree_util.tree_unflatten(treedef, leaves_p),
                jax.tree_util.tree_unflatten(treedef, leaves_m), info)

    def unchanged(skipped):
        zero = jnp.zeros(len(sparse), jnp.int32)
        kept_w = [jnp.where(m, w, jnp.zeros((), w.dtype)) for m, w in zip(masks_in, weights)]
        return finish(masks_in, kept_w, zero, zero, skipped)

    if not method.prune or not sparse:
        return unchanged(False)

    def update():
        active = count(masks_in)
        floor_min = jnp.minimum(jnp.stack(mins), active)
        n_drop = jnp.minimum(jnp.floor(fraction * active.astype(jnp.float32)).astype(jnp.int32),
                             active - floor_min)
        drop, _ = select_per_leaf([(lambda w: order_key(-jnp.abs(w)), (w,)) for w in weights],
                                  masks_in, n_drop, n_eligible=active)
        kept = [m & ~d for m, d in zip(masks_in, drop)]
        free = [~k for k in kept]
        n_free = sizes - active + n_drop  # (counts the kernel need not count again)
        total = jnp.sum(n_drop)

        def restrict(specs):
            if method.regrow_pruned:
                return specs
            return [(lambda d, *a, f=f: jnp.where(d, jnp.uint32(0), f(*a)), (d, *a))  # last resort
                    for d, (f, a) in zip(drop, specs)]

        def keys(scores):
            return restrict([(lambda *a, f=f: order_key(f(*a)), a) for f, a in scores])

        global_pick = None
        if method.allocate == "per_layer":
            n_grow = n_drop
        elif method.allocate == "global_gradient":
            scored = signal
            if method.normalize is not None:
                scored = [(lambda x: x, (_normalize(f(*a), method.normalize),)) for f, a in signal]
            global_pick, n_grow = select_global(keys(scored), free, total, n_eligible=n_free)
        else:  # momentum
            mean_mom = jnp.stack([jnp.sum(jnp.where(m, f(*a), 0.0))
                                  for m, (f, a) in zip(masks_in, mom)])
            mean_mom = mean_mom / jnp.maximum(active, 1).astype(jnp.float32)
            n_grow = capped_shares(total, mean_mom, n_free, jnp)

        if method.place == "gradient" and global_pick is not None:
            grow, grown = global_pick, n_grow  # per-layer normalisation keeps the order in a layer
        elif method.place in ("gradient", "momentum"):
            grow, grown = select_per_leaf(keys(signal if method.place == "gradient" else mom),
                                          free, n_grow, n_eligible=n_free)
        else:
            subkeys = jax.random.split(key, len(weights))
            noise = restrict([(lambda k, shape=w.shape: random_keys(k, shape), (k,))
                              for k, w in zip(subkeys, weights)])
            if method.place == "random":
                grow, grown = select_per_leaf(noise, free, n_grow, interpolate=True,
                                              n_eligible=n_free)
            else:  # mixed
                n_grad = jnp.round(method.rho * n_grow.astype(jnp.float32)).astype(jnp.int32)
                by_grad, c_grad = select_per_leaf(keys(signal), free, n_grad, n_eligible=n_free)
                rest = [f & ~b for f, b in zip(free, by_grad)]
                by_rand, c_rand = select_per_leaf(noise, rest, n_grow - n_grad, interpolate=True,
                                                  n_eligible=n_free - c_grad)
                grow, grown = [b | r for b, r in zip(by_grad, by_rand)], c_grad + c_rand

        new_masks = [k | g for k, g in zip(kept, grow)]
        # A weight pruned and regrown in the same update never leaves the mask: it keeps its value,
        # as its optimizer state is kept by reset_optimizer_state(masks, new_masks) and as
        # dynamic_sparse applies the update. Pruned weights and weights new to the mask are 0.
        new_weights = [jnp.where(m & nm, w, jnp.zeros((), w.dtype))
                       for m, nm, w in zip(masks_in, new_masks, weights)]
        return finish(new_masks, new_weights, n_drop, n_grow, False, active - n_drop + grown)

    if not skip_nonfinite:
        return update()
    def nonfinite(i):  # one fused pass per leaf over its weights, gradients (and momentum)
        ok = jnp.isfinite(w_leaves[i]) & jnp.isfinite(g_leaves[i])
        return count_true(~(ok & jnp.isfinite(mo_leaves[i])) if mo_leaves else ~ok)

    finite = sum(nonfinite(i) for i in sparse) == 0
    return lax.cond(finite, update, lambda: unchanged(True))
