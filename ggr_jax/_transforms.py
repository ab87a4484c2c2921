"""Optax transforms: masking gradients/updates, accumulating gradients, and ``dynamic_sparse``.

Masks change during training, so they cannot be the static mask of ``optax.masked``. Here they
either flow into ``update`` as a keyword extra argument (``masks=``) through ``optax.chain``, or
live in the state of :func:`dynamic_sparse`, which also runs the topology updates on schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ggr_jax._masks import apply_masks
from ggr_jax._optimizer_state import reset_optimizer_state
from ggr_jax._redistribute import Method, _check_method, redistribute
from ggr_jax._tree import PyTree, check_masks, check_unit_interval, map_sparse


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


class AccumulatedGradients(NamedTuple):
    """State of :func:`accumulate_gradients`."""

    abs_grad_sum: PyTree  # like params, float32: sum of |g| since the last topology update
    abs_grad_count: jax.Array  # shape=(), int32: number of summed steps


def accumulate_gradients() -> optax.GradientTransformation:
    """Sums ``|g|`` over steps so that regrowth can use a less noisy signal than one batch.

    Put it first in the chain (before :func:`mask_gradients`: inactive weights' gradients are
    the point). Read the mean with :func:`accumulated_gradients`;
    :func:`reset_optimizer_state` starts the sum afresh after each topology update.

    Example:
      >>> import jax.numpy as jnp, optax, ggr_jax as gj
      >>> tx = optax.chain(gj.accumulate_gradients(), optax.sgd(0.1))
      >>> p = {"w": jnp.ones(2)}
      >>> s = tx.update({"w": jnp.array([1., -3.])}, tx.init(p), p)[1]
      >>> gj.accumulated_gradients(s)["w"]
      Array([1., 3.], dtype=float32)
    """

    def init_fn(params):
        sums = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return AccumulatedGradients(sums, jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        sums = jax.tree.map(lambda s, g: s + jnp.abs(g).astype(jnp.float32), state.abs_grad_sum,
                            updates)
        return updates, AccumulatedGradients(sums, state.abs_grad_count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def accumulated_gradients(opt_state: optax.OptState) -> PyTree:
    """The mean ``|g|`` since the last reset, from any state that holds :func:`accumulate_gradients`."""
    sums = optax.tree_utils.tree_get(opt_state, "abs_grad_sum")
    count = optax.tree_utils.tree_get(opt_state, "abs_grad_count")
    if sums is None:
        raise ValueError("opt_state holds no accumulate_gradients() state")
    return jax.tree.map(lambda s: s / jnp.maximum(count, 1).astype(s.dtype), sums)


class DynamicSparseState(NamedTuple):
    """State of :func:`dynamic_sparse`."""

    step: jax.Array  # shape=(), int32: number of update calls so far
    key: jax.Array  # PRNG key; the topology update at step t uses fold_in(key, t)
    masks: PyTree  # bool leaves like params; None for dense leaves
    inner_state: optax.OptState  # the wrapped optimizer's state
    signal: PyTree  # float32 like the sparse params: |g| sum or gradient EMA ((): unused)
    signal_count: jax.Array  # shape=(), int32: steps summed into signal
    info: dict[str, Any]  # info of the last topology update (see redistribute)


def _schedule(x: float | optax.Schedule) -> optax.Schedule:
    if callable(x):
        return x
    check_unit_interval(x, name="drop_fraction")
    return optax.constant_schedule(x)


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
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optimizer into dynamic sparse training with the topology update on schedule.

    Each step masks the gradients and updates; every ``update_every`` steps while the step is
    below ``end_step`` it also runs :func:`redistribute` (under ``lax.cond``) on the params after
    this step's update, returns updates that land the params exactly on the new masks, and resets
    the optimizer state of pruned and regrown weights. Masks, key and step live in the state.

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
      momentum_decay: decay of the gradient EMA kept for ``snfs()``.

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
    if not isinstance(update_every, int) or update_every < 1:
        raise ValueError(f"update_every must be a positive int, got {update_every!r}")
    if not isinstance(end_step, int) or end_step < 0:
        raise ValueError(f"end_step must be a non-negative int, got {end_step!r}")
    check_unit_interval(momentum_decay, name="momentum_decay")
    _check_method(method)
    fraction_at = _schedule(drop_fraction)
    inner = optax.with_extra_args_support(inner)
    uses_signal = method.signal == "accumulated" or method.needs_momentum

    def init_fn(params):
        check_masks(params, masks)
        signal = (map_sparse(lambda m: jnp.zeros(m.shape, jnp.float32), masks)
                  if uses_signal else ())
        zero = map_sparse(lambda m: jnp.zeros((), jnp.int32), masks)
        info = {"active": map_sparse(lambda m: jnp.sum(m, dtype=jnp.int32), masks),
                "dropped": zero, "grown": zero, "moved": jnp.zeros((), jnp.int32),
                "skipped": jnp.zeros((), jnp.bool_)}
        return DynamicSparseState(jnp.zeros((), jnp.int32), key, masks, inner.init(params), signal,
                                  jnp.zeros((), jnp.int32), info)

    def update_fn(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("dynamic_sparse needs params: call tx.update(grads, state, params)")
        masks_now = state.masks
        updates, inner_state = inner.update(apply_masks(grads, masks_now), state.inner_state,
                                            params, **extra_args)
        updates = apply_masks(updates, masks_now)
        signal, count = state.signal, state.signal_count + 1
        if method.needs_momentum:
            signal = map_sparse(lambda m, s, g: momentum_decay * s
                                + (1 - momentum_decay) * g.astype(jnp.float32),
                                masks_now, signal, grads)
        elif method.signal == "accumulated":
            signal = map_sparse(lambda m, s, g: s + jnp.abs(g).astype(jnp.float32),
                                masks_now, signal, grads)
        step = state.step
        due = (step > 0) & (step % update_every == 0) & (step < end_step)

        def topology_update():
            moved = optax.apply_updates(params, updates)
            grad_signal, momentum = grads, None
            if method.needs_momentum:
                momentum = map_sparse(lambda m, s, g: s, masks_now, signal, grads,
                                      dense=lambda s, g: g)
            elif method.signal == "accumulated":
                grad_signal = map_sparse(lambda m, s, g: s / count.astype(jnp.float32), masks_now,
                                         signal, grads, dense=lambda s, g: g)
            _, new_masks, info = redistribute(
                moved, masks_now, grad_signal, jax.random.fold_in(state.key, step), method=method,
                fraction=fraction_at(step), min_active=min_active, momentum=momentum)
            new_updates = map_sparse(lambda m, u, p: jnp.where(m, u, -p), new_masks, updates,
                                     params, dense=lambda u, p: u)
            new_inner = reset_optimizer_state(inner, inner_state, masks_now, new_masks)
            if method.needs_momentum:
                # Regrown weights start with zero momentum; inactive positions keep theirs, as
                # it is their growth signal at the next update.
                new_signal = map_sparse(lambda m, mn, s: jnp.where(mn & ~m, 0.0, s), masks_now,
                                        new_masks, signal)
                new_count = count
            else:
                new_signal = jax.tree.map(jnp.zeros_like, signal)
                new_count = jnp.zeros((), jnp.int32)
            return new_updates, new_masks, new_inner, new_signal, new_count, info

        def no_update():
            return updates, masks_now, inner_state, signal, count, state.info

        updates, new_masks, inner_state, signal, count, info = lax.cond(
            due, topology_update, no_update)
        return updates, DynamicSparseState(step + 1, state.key, new_masks, inner_state, signal,
                                           count, info)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_masks(opt_state: optax.OptState) -> PyTree:
    """The current masks held by a :func:`dynamic_sparse` state (anywhere inside ``opt_state``)."""
    masks = optax.tree_utils.tree_get(opt_state, "masks")
    if masks is None:
        raise ValueError("opt_state holds no dynamic_sparse() state")
    return masks
