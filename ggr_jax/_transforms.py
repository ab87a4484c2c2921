"""Optax transforms: masking gradients/updates, and ``dynamic_sparse``.

Masks change during training, so they cannot be the static mask of ``optax.masked``. Here they
either flow into ``update`` as a keyword extra argument (``masks=``) through ``optax.chain``, or
live in the state of :func:`dynamic_sparse`, which also runs the topology updates on schedule
(through :func:`update_topology`, the one orchestration of an update).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ggr_jax._masks import apply_masks
from ggr_jax._methods import Method
from ggr_jax._redistribute import check_method
from ggr_jax._signals import accumulate_gradients, gradient_momentum
from ggr_jax._topology import is_update_step, update_topology
from ggr_jax._tree import (
    PyTree,
    check_masks,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    map_sparse,
)


def _masking(what: str) -> optax.GradientTransformationExtraArgs:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, masks=None, **extra_args):
        del params, extra_args
        if masks is None:
            raise ValueError(f"mask_{what} needs the masks: call tx.update(..., masks=masks)")
        return apply_masks(updates, masks), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mask_gradients() -> optax.GradientTransformationExtraArgs:
    """Zeroes the gradients of inactive weights, so optimizer moments never see them.

    Put it first in an ``optax.chain`` and pass ``masks=`` to ``update``.

    Example:
      >>> import jax.numpy as jnp, optax, ggr_jax as gj
      >>> tx = optax.chain(gj.mask_gradients(), optax.sgd(0.5), gj.mask_updates())
      >>> p, m = {"w": jnp.ones(2)}, {"w": jnp.array([True, False])}
      >>> u, _ = tx.update(p, tx.init(p), p, masks=m)
      >>> u["w"]
      Array([-0.5,  0. ], dtype=float32)
    """
    return _masking("gradients")


def mask_updates() -> optax.GradientTransformationExtraArgs:
    """Zeroes the updates of inactive weights (after weight decay, momentum, ...).

    Put it last in an ``optax.chain`` and pass ``masks=`` to ``update``: params that are 0
    outside the masks then stay exactly 0 with any optimizer.
    """
    return _masking("updates")


class DynamicSparseState(NamedTuple):
    """State of :func:`dynamic_sparse`."""

    step: jax.Array  # shape=(), int32: number of update calls so far
    key: jax.Array  # PRNG key; the topology update at step t uses fold_in(key, t)
    masks: PyTree  # bool leaves like params; None for dense leaves
    inner_state: optax.OptState  # the wrapped optimizer's state
    signal: optax.OptState  # accumulate_gradients' state (EmptyState for signal="batch")
    momentum: PyTree  # snfs(): float32 gradient momentum like params (gradient_momentum); ()
    info: dict[str, Any]  # info of the last topology update (see redistribute)


def _schedule(x: float | optax.Schedule) -> optax.Schedule:
    if callable(x):
        return x
    check_unit_interval(x, name="drop_fraction")
    return optax.constant_schedule(x)


_OFF_MASK_ADVICE = (
    "A transform after dynamic_sparse in an optax.chain changed its updates (e.g. "
    "scale_by_learning_rate, clip_by_global_norm, add_decayed_weights), or the params were not "
    "masked (apply_masks) before init, or its updates were not applied as they are. Put every "
    "transform inside it: dynamic_sparse(optax.chain(...), masks, ...)"
)


def _off_mask_message(names, counts, worst) -> str:
    bad = [
        f"{n!r}: {int(c)} weights, max |w| {float(w):.3g}"
        for n, c, w in zip(names, counts, worst, strict=True)
        if c
    ]
    return f"dynamic_sparse: params are nonzero outside the masks ({'; '.join(bad)}). " + (
        _OFF_MASK_ADVICE
    )


def _raise_off_mask(names, counts, worst) -> None:
    raise ValueError(_off_mask_message(names, counts, worst))


def _check_on_masks(params: PyTree, masks: PyTree) -> None:
    """Raises if a sparsified param is nonzero outside its mask: now when params are concrete,
    else when the compiled step runs (a host callback under ``lax.cond``, taken only then)."""
    paths, m_leaves, _ = leaves_with_paths(masks)
    _, p_leaves, _ = leaves_with_paths(params)
    sparse = [
        (path, m, p) for path, m, p in zip(paths, m_leaves, p_leaves, strict=True) if m is not None
    ]
    if not sparse:
        return
    names = tuple(path for path, _, _ in sparse)
    if all(is_concrete(p) and is_concrete(m) for _, m, p in sparse):
        counts = [int(np.sum((np.asarray(p) != 0) & ~np.asarray(m))) for _, m, p in sparse]
        if any(counts):
            worst = [float(np.max(np.abs(np.where(m, 0, p)), initial=0)) for _, m, p in sparse]
            _raise_off_mask(names, counts, worst)
        return
    traced_counts = jnp.stack([jnp.sum((p != 0) & ~m, dtype=jnp.int32) for _, m, p in sparse])
    traced_worst = jnp.stack(
        [
            jnp.max(jnp.where(m, 0, jnp.abs(p)).astype(jnp.float32), initial=0.0)
            for _, m, p in sparse
        ]
    )
    lax.cond(
        jnp.any(traced_counts > 0),
        lambda c, w: jax.debug.callback(functools.partial(_raise_off_mask, names), c, w),
        lambda c, w: None,
        traced_counts,
        traced_worst,
    )


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a positive" if low == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} int, got {value!r}")
    return int(value)


def _no_info(masks: PyTree) -> dict[str, Any]:
    """The ``info`` of :func:`redistribute` before any update: the active counts, no change."""
    zero = map_sparse(lambda m: jnp.zeros((), jnp.int32), masks)
    return {
        "active": map_sparse(lambda m: jnp.sum(m, dtype=jnp.int32), masks),
        "dropped": zero,
        "grown": zero,
        "moved": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.bool_),
    }


def dynamic_sparse(
    inner: optax.GradientTransformation,
    masks: PyTree,
    *,
    key: jax.Array,
    method: Method,
    update_every: int,
    end_step: int,
    drop_fraction: float | optax.Schedule = 0.3,
    min_active: int | Callable[[str, tuple[int, ...]], int] | None = None,
    momentum_decay: float = 0.9,
    check_params: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optimizer into dynamic sparse training with the topology update on schedule.

    Each step masks the gradients and updates. Every ``update_every`` steps while the step is
    below ``end_step`` the step first runs :func:`update_topology` (under ``lax.cond``) on the
    params it receives: :func:`redistribute` with the method's signal, then a reset of the
    optimizer state of pruned and regrown weights; the optimizer then updates the new topology
    with the same gradients (the order of the experiments, see :mod:`ggr_jax._topology`). The
    updates it returns land the params exactly on the new masks. Masks, key and step live in
    the state.

    **It must be the last transform**: its updates keep the params exactly 0 outside the masks
    only if they reach ``optax.apply_updates`` unchanged. Put the learning rate, clipping and
    weight decay inside it (``dynamic_sparse(optax.chain(optax.clip_by_global_norm(1.0),
    optax.adamw(1e-3)), ...)``), never after it in a chain: a later transform scales or shifts
    the updates that prune weights, and they stay nonzero outside the masks. With
    ``check_params`` (default) every update checks that the params it receives are 0 outside
    the masks and raises ``ValueError`` naming the leaves if not: at ``init`` and on concrete
    params at once, under ``jit`` as an error when the step runs (a host callback that runs only
    then; the check itself is one fused reduction over the sparse params).

    Args:
      inner: any optax optimizer (it sees masked gradients).
      masks: initial masks, e.g. from :func:`random_masks`; params must already be masked.
      key: PRNG key for random placement.
      method: e.g. ``ggr()``, ``rigl()``, ``set_()``, ``snfs()``, ``static()``.
      update_every: steps between topology updates (delta T).
      end_step: no topology update from this step on.
      drop_fraction: fraction of active weights dropped per update, a float or an optax
        schedule of the step (e.g. ``optax.cosine_decay_schedule(0.3, end_step)``).
      min_active: per-layer floor, see :func:`redistribute`.
      momentum_decay: decay of SNFS's gradient momentum (:func:`gradient_momentum`) and of the
        gradient EMA of ``signal="ema"`` (:func:`accumulate_gradients`).
      check_params: check that the params are 0 outside the masks at every update (see above).

    Returns:
      A ``GradientTransformationExtraArgs``; ``update`` needs ``params``. Read the masks with
      :func:`get_masks` and the last update's counts with ``state.info``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, ggr_jax as gj
      >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}
      >>> masks = gj.random_masks(params, gj.uniform_densities(params, 0.5), jax.random.key(0))
      >>> params = gj.apply_masks(params, masks)
      >>> tx = gj.dynamic_sparse(optax.sgd(0.1), masks, key=jax.random.key(1), method=gj.rigl(),
      ...                        update_every=2, end_step=10)
      >>> state = tx.init(params)
      >>> for _ in range(3):
      ...     grads = jax.tree.map(jnp.ones_like, params)
      ...     updates, state = tx.update(grads, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> int(gj.get_masks(state)["w"].sum())
      16
    """
    update_every = _check_int(update_every, "update_every", 1)  # numpy ints are ints too
    end_step = _check_int(end_step, "end_step", 0)
    check_unit_interval(momentum_decay, name="momentum_decay")
    check_method(method)
    fraction_at = _schedule(drop_fraction)
    inner = optax.with_extra_args_support(inner)
    signal_tx = optax.identity()
    if method.signal != "batch":
        signal_tx = accumulate_gradients(method.signal, decay=momentum_decay)
    # What update_topology resets: the signal's state and the inner optimizer's, as one chain.
    both = optax.chain(signal_tx, inner)

    def init_fn(params):
        check_masks(params, masks)
        if check_params:
            _check_on_masks(params, masks)
        momentum: PyTree = ()
        if method.needs_momentum:
            momentum = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        step = jnp.zeros((), jnp.int32)
        inner_state, signal = inner.init(params), signal_tx.init(params)
        return DynamicSparseState(step, key, masks, inner_state, signal, momentum, _no_info(masks))

    def update_fn(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("dynamic_sparse needs params: call tx.update(grads, state, params)")
        if check_params:
            _check_on_masks(params, state.masks)
        step, momentum = state.step, state.momentum
        if method.needs_momentum:
            momentum = gradient_momentum(momentum, grads, decay=momentum_decay)
        due = is_update_step(step, update_every, end_step)
        new_params, masks, (signal, inner_state), info = update_topology(
            params,
            state.masks,
            grads,
            (state.signal, state.inner_state),
            jax.random.fold_in(state.key, step),
            optimizer=both,
            method=method,
            fraction=fraction_at(step),
            min_active=min_active,
            momentum=momentum if method.needs_momentum else None,
            due=due,
        )
        _, signal = signal_tx.update(grads, signal)
        updates, inner_state = inner.update(
            apply_masks(grads, masks), inner_state, new_params, **extra_args
        )
        # Active weights move by the inner updates; the rest land exactly on 0 (pruned ones too).
        updates = map_sparse(
            lambda m, u, p: jnp.where(m, u, -p), masks, updates, params, dense=lambda u, p: u
        )
        info = jax.tree.map(lambda new, old: jnp.where(due, new, old), info, state.info)
        new_state = DynamicSparseState(
            step + 1, state.key, masks, inner_state, signal, momentum, info
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_masks(opt_state: optax.OptState) -> PyTree:
    """The current masks held by a :func:`dynamic_sparse` state (anywhere inside ``opt_state``)."""
    masks = optax.tree_utils.tree_get(opt_state, "masks")
    if masks is None:
        raise ValueError("opt_state holds no dynamic_sparse() state")
    return masks
