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
_NORMALIZE = (None, "l2", "rms", "mean", "max", "weight")
_SIGNAL = ("batch", "mean", "ema", "mean_abs")


class Method(NamedTuple):
    """A dynamic sparse training method as a configuration of prune -> allocate -> place.

    Attributes:
      name: label used in logs.
      allocate: how many connections each layer regrows: ``"per_layer"`` (as many as it
        dropped), ``"global_gradient"`` (GGR: a top-k over all layers' gradients together),
        ``"momentum"`` (SNFS: proportional to the layer's mean |momentum|), ``"none"`` (static
        sparse training: no prune, no regrowth; then ``place`` is ``"none"`` too).
      place: where they go inside a layer: ``"gradient"`` (largest |g|), ``"random"``,
        ``"mixed"`` (``round(rho * n)`` by gradient, the rest random), ``"momentum"``.
      rho: share of the regrown connections placed by gradient when ``place == "mixed"``.
      normalize: how GGR's global top-k puts each layer's |g| on one scale (only with
        ``allocate="global_gradient"``); see :func:`ggr`.
      regrow_pruned: whether just-pruned positions may be regrown in the same update (as in
        RigL). When False they are used only if a layer has no other free position left.
      signal: which per-weight gradient signal regrowth reads (the caller provides it:
        :func:`dynamic_sparse` and :func:`accumulate_gradients` do): ``"batch"`` (this batch's
        gradient), ``"mean"`` (the signed mean gradient since the last update), ``"ema"`` (a
        signed exponential moving average of the gradients), ``"mean_abs"`` (the mean |g| since
        the last update). Regrowth ranks by the magnitude of the signal.
      unit_floor: the prune never removes the last active incoming weight of an output unit (the
        last axis: Flax's ``(in, out)`` and ``HWIO`` layouts): each unit keeps its
        largest-magnitude active weight out of the prune.
    """

    name: str
    allocate: str = "per_layer"
    place: str = "gradient"
    rho: float = 1.0
    normalize: str | None = None
    regrow_pruned: bool = True
    signal: str = "batch"
    unit_floor: bool = False

    @property
    def needs_momentum(self) -> bool:
        return self.allocate == "momentum" or self.place == "momentum"

    @property
    def is_static(self) -> bool:
        return self.allocate == "none"


def static() -> Method:
    """Static sparse training: the masks never change."""
    return Method("static", allocate="none", place="none")


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
    unit_floor: bool = False,
) -> Method:
    """GGR: Global Gradient-based Redistribution.

    Each layer drops its smallest-magnitude weights; the number each layer regrows is how many
    of the ``R`` largest scores over the free positions of all layers together fall into it
    (a global top-k); inside a layer ``round(rho * n)`` go where |g| is largest and the rest at
    random (the paper inserts by "a combination of gradient-based and random insertion" without
    fixing the share). The paper leaves open how the scores of different layers are compared,
    which gradient is read and the share ``rho``; the defaults are ours, chosen on validation
    data (docs/results.md).

    ``normalize`` says what the global top-k compares. Within a layer every choice keeps the
    order of |g|, so only the split between layers changes:

    * ``None``: raw |g|. Assumes gradients of all layers are on one scale; they are not in
      general (a layer with more fan-in or a rescaled parametrisation gets other magnitudes).
    * ``"l2"``: |g| / ||g||_2 of the layer. Every layer gets the same total gradient energy, so
      a layer's entries shrink with sqrt(its size): favours small layers.
    * ``"rms"``: |g| / RMS(g) of the layer. A typical entry of every layer is 1, whatever the
      layer's size or scale: layers compete by the shape of their gradient distribution (a
      layer whose free positions stand out from its own typical gradient grows).
    * ``"mean"``: |g| / mean |g| of the layer (as ``"rms"``, with the L1 scale).
    * ``"max"``: |g| / max |g| of the layer (sensitive to one outlier).
    * ``"weight"``: |g| times the RMS of the layer's active weights: a first-order estimate of
      the loss change when a new connection grows to the size of the layer's weights
      (|dL| ~ |g| * |w|). Invariant to rescaling a layer's weights (w -> c w, g -> g / c).

    Args:
      rho: share of each layer's regrowth placed by |g| (the rest random), in [0, 1].
      normalize: see above.
      regrow_pruned: whether just-pruned positions may regrow in the same update.
      signal: ``"batch"``, ``"mean"``, ``"ema"`` or ``"mean_abs"`` (see :class:`Method`).
      unit_floor: keep at least one active incoming weight per output unit (see
        :class:`Method`).

    Returns:
      The :class:`Method`.

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
        unit_floor=unit_floor,
    )


def _check_method(method: Method) -> None:
    """One place for every check of a method's fields and of their combinations."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a ggr_jax.Method (e.g. gj.ggr()), got {method!r}")
    for field, allowed in (("allocate", _ALLOCATE), ("place", _PLACE), ("normalize", _NORMALIZE),
                           ("signal", _SIGNAL)):
        if getattr(method, field) not in allowed:
            raise ValueError(f"method.{field} must be one of {allowed}, got {getattr(method, field)!r}")
    if (method.allocate == "none") != (method.place == "none"):
        raise ValueError(
            f"method {method.name!r}: allocate={method.allocate!r} with place={method.place!r}; "
            "static training is allocate='none' with place='none' (gj.static()), and a "
            "dynamic method needs both")
    if method.normalize is not None and method.allocate != "global_gradient":
        raise ValueError(f"method {method.name!r}: normalize={method.normalize!r} applies only "
                         "to allocate='global_gradient'")
    check_unit_interval(method.rho, name="method.rho")
    for field in ("regrow_pruned", "unit_floor"):
        if not isinstance(getattr(method, field), bool):
            raise ValueError(f"method.{field} must be a bool, got {getattr(method, field)!r}")


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


def _scale(how: str | None, g: jax.Array, w: jax.Array, m: jax.Array, active: jax.Array
           ) -> jax.Array:
    """The float32 factor that puts one layer's |g| on GGR's common scale (see :func:`ggr`)."""
    if how is None:
        return jnp.ones((), jnp.float32)
    if how == "weight":
        w2 = jnp.sum(jnp.where(m, jnp.square(w.astype(jnp.float32)), 0.0))
        return jnp.sqrt(w2 / jnp.maximum(active, 1).astype(jnp.float32))
    a = jnp.abs(g).astype(jnp.float32)
    scale = {"l2": lambda: jnp.sqrt(jnp.sum(a * a)), "rms": lambda: jnp.sqrt(jnp.mean(a * a)),
             "mean": lambda: jnp.mean(a), "max": lambda: jnp.max(a)}[how]()
    return 1.0 / jnp.where(scale > 0, scale, 1.0)


def _unit_keep(w: jax.Array, m: jax.Array) -> jax.Array:
    """Each output unit's (last axis) largest-|w| active weight; False in units with none."""
    out = w.shape[-1] if w.ndim else 1
    mag = jnp.where(m, jnp.abs(w).astype(jnp.float32), -1.0).reshape(-1, out)
    first = jnp.argmax(mag, axis=0)  # lowest index among ties
    keep = jnp.arange(mag.shape[0])[:, None] == first[None, :]
    return keep.reshape(w.shape) & m


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

    if method.is_static or not sparse:
        return unchanged(False)

    def update():
        active = count(masks_in)
        floor_min = jnp.minimum(jnp.stack(mins), active)
        prunable, n_prunable = masks_in, active
        if method.unit_floor:
            unit_keep = [_unit_keep(w, m) for w, m in zip(weights, masks_in)]
            prunable = [m & ~u for m, u in zip(masks_in, unit_keep)]
            n_prunable = active - count(unit_keep)
        n_drop = jnp.minimum(jnp.floor(fraction * active.astype(jnp.float32)).astype(jnp.int32),
                             jnp.minimum(active - floor_min, n_prunable))
        drop, _ = select_per_leaf([(lambda w: order_key(-jnp.abs(w)), (w,)) for w in weights],
                                  prunable, n_drop, n_eligible=n_prunable)
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
            scales = [_scale(method.normalize, g_leaves[i], w, m, a)
                      for i, w, m, a in zip(sparse, weights, masks_in, list(active))]
            scored = [(lambda g, c: magnitude(g) * c, (g_leaves[i], c))
                      for i, c in zip(sparse, scales)]
            global_pick, n_grow = select_global(keys(scored), free, total, n_eligible=n_free)
        elif method.allocate == "momentum":
            mean_mom = jnp.stack([jnp.sum(jnp.where(m, f(*a), 0.0))
                                  for m, (f, a) in zip(masks_in, mom)])
            mean_mom = mean_mom / jnp.maximum(active, 1).astype(jnp.float32)
            n_grow = capped_shares(total, mean_mom, n_free, jnp)
        else:
            raise AssertionError(method.allocate)  # unreachable: _check_method

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
            elif method.place == "mixed":
                n_grad = jnp.round(method.rho * n_grow.astype(jnp.float32)).astype(jnp.int32)
                by_grad, c_grad = select_per_leaf(keys(signal), free, n_grad, n_eligible=n_free)
                rest = [f & ~b for f, b in zip(free, by_grad)]
                by_rand, c_rand = select_per_leaf(noise, rest, n_grow - n_grad, interpolate=True,
                                                  n_eligible=n_free - c_grad)
                grow, grown = [b | r for b, r in zip(by_grad, by_rand)], c_grad + c_rand
            else:
                raise AssertionError(method.place)  # unreachable: _check_method

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
