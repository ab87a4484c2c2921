"""Optax transforms: masking gradients/updates, accumulating gradients, and ``dynamic_sparse``.

Masks change during training, so they cannot be the static mask of ``optax.masked``. Here they
either flow into ``update`` as a keyword extra argument (``masks=``) through ``optax.chain``, or
live in the state of :func:`dynamic_sparse`, which also runs the topology updates on schedule.
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
from ggr_jax._optimizer_state import reset_optimizer_state
from ggr_jax._redistribute import check_method, redistribute
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


class AccumulatedGradients(NamedTuple):
    """State of :func:`accumulate_gradients` with ``signal="mean"`` or ``"mean_abs"``."""

    grad_sum: PyTree  # like params, float32: sum of g (or |g|) since the last topology update
    grad_count: jax.Array  # shape=(), int32: number of summed steps


class GradientEMA(NamedTuple):
    """State of :func:`accumulate_gradients` with ``signal="ema"``."""

    grad_ema: PyTree  # like params, float32: exponential moving average of g
    ema_decay: jax.Array  # shape=(), float32: the EMA's decay
    ema_count: jax.Array  # shape=(), int32: steps averaged (for the bias correction)


def _signal_step(signal: str, acc: Any, g: jax.Array, decay: Any) -> jax.Array:
    """One step of a gradient signal's accumulator (float32)."""
    g = g.astype(jnp.float32)
    if signal == "ema":
        return decay * acc + (1.0 - decay) * g
    return acc + (jnp.abs(g) if signal == "mean_abs" else g)


def accumulate_gradients(
    signal: str = "mean", *, decay: float = 0.9
) -> optax.GradientTransformation:
    """Accumulates the dense gradients so that regrowth can read a less noisy signal than one batch.

    Put it first in the chain (before :func:`mask_gradients`: inactive weights' gradients are
    the point) and read the signal with :func:`accumulated_gradients`. ``"mean"`` and
    ``"mean_abs"`` start afresh at each topology update (:func:`reset_optimizer_state` does
    it); the EMA runs on.

    Args:
      signal: ``"mean"`` (signed mean of g since the last update: noise averages out),
        ``"ema"`` (signed exponential moving average of g, bias-corrected) or ``"mean_abs"``
        (mean of |g|: keeps the noise).
      decay: the EMA's decay, in [0, 1).

    Returns:
      An optax transformation that passes the gradients through unchanged.

    Example:
      >>> import jax.numpy as jnp, optax, ggr_jax as gj
      >>> tx = optax.chain(gj.accumulate_gradients("mean"), optax.sgd(0.1))
      >>> p = {"w": jnp.ones(2)}
      >>> s = tx.init(p)
      >>> for g in ([1., -3.], [-1., -1.]):
      ...     s = tx.update({"w": jnp.array(g)}, s, p)[1]
      >>> gj.accumulated_gradients(s)["w"]
      Array([ 0., -2.], dtype=float32)
    """
    if signal not in ("mean", "ema", "mean_abs"):
        raise ValueError(f"signal must be 'mean', 'ema' or 'mean_abs', got {signal!r}")
    check_unit_interval(decay, name="decay", closed_right=False)

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        count = jnp.zeros((), jnp.int32)
        if signal == "ema":
            return GradientEMA(zeros, jnp.asarray(decay, jnp.float32), count)
        return AccumulatedGradients(zeros, count)

    def update_fn(updates, state, params=None):
        del params
        if signal == "ema":
            ema = jax.tree.map(
                lambda a, g: _signal_step(signal, a, g, state.ema_decay), state.grad_ema, updates
            )
            return updates, state._replace(grad_ema=ema, ema_count=state.ema_count + 1)
        sums = jax.tree.map(lambda a, g: _signal_step(signal, a, g, None), state.grad_sum, updates)
        return updates, AccumulatedGradients(sums, state.grad_count + 1)

    return optax.GradientTransformation(init_fn, update_fn)


def accumulated_gradients(opt_state: optax.OptState) -> PyTree:
    """The signal of the :func:`accumulate_gradients` inside ``opt_state``.

    The mean of g (or of |g|) since the last reset, or the bias-corrected EMA of g.
    """
    ema = optax.tree_utils.tree_get(opt_state, "grad_ema")
    if ema is not None:
        decay = optax.tree_utils.tree_get(opt_state, "ema_decay")
        count = optax.tree_utils.tree_get(opt_state, "ema_count").astype(jnp.float32)
        correction = jnp.maximum(1.0 - decay**count, 1e-12)
        return jax.tree.map(lambda e: e / correction, ema)
    sums = optax.tree_utils.tree_get(opt_state, "grad_sum")
    if sums is None:
        raise ValueError("opt_state holds no accumulate_gradients() state")
    count = optax.tree_utils.tree_get(opt_state, "grad_count")
    return jax.tree.map(lambda s: s / jnp.maximum(count, 1).astype(s.dtype), sums)


class DynamicSparseState(NamedTuple):
    """State of :func:`dynamic_sparse`."""

    step: jax.Array  # shape=(), int32: number of update calls so far
    key: jax.Array  # PRNG key; the topology update at step t uses fold_in(key, t)
    masks: PyTree  # bool leaves like params; None for dense leaves
    inner_state: optax.OptState  # the wrapped optimizer's state
    signal: PyTree  # float32 like the sparse params: g (or |g|) sum or g EMA ((): unused)
    signal_count: jax.Array  # shape=(), int32: steps summed into signal
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

    Each step masks the gradients and updates; every ``update_every`` steps while the step is
    below ``end_step`` it also runs :func:`redistribute` (under ``lax.cond``) on the params after
    this step's update, returns updates that land the params exactly on the new masks, and resets
    the optimizer state of pruned and regrown weights. Masks, key and step live in the state.

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
      momentum_decay: decay of the gradient EMA kept for ``snfs()`` and for
        ``signal="ema"``.

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
    uses_signal = method.signal != "batch" or method.needs_momentum
    # SNFS's momentum and GGR's "ema" signal run on across updates; "mean"/"mean_abs" restart.
    runs_on = method.needs_momentum or method.signal == "ema"

    def init_fn(params):
        check_masks(params, masks)
        if check_params:
            _check_on_masks(params, masks)
        signal = map_sparse(lambda m: jnp.zeros(m.shape, jnp.float32), masks) if uses_signal else ()
        zero = map_sparse(lambda m: jnp.zeros((), jnp.int32), masks)
        info = {
            "active": map_sparse(lambda m: jnp.sum(m, dtype=jnp.int32), masks),
            "dropped": zero,
            "grown": zero,
            "moved": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.bool_),
        }
        return DynamicSparseState(
            jnp.zeros((), jnp.int32),
            key,
            masks,
            inner.init(params),
            signal,
            jnp.zeros((), jnp.int32),
            info,
        )

    def update_fn(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError("dynamic_sparse needs params: call tx.update(grads, state, params)")
        masks_now = state.masks
        if check_params:
            _check_on_masks(params, masks_now)
        updates, inner_state = inner.update(
            apply_masks(grads, masks_now), state.inner_state, params, **extra_args
        )
        updates = apply_masks(updates, masks_now)
        signal, count = state.signal, state.signal_count + 1
        if method.needs_momentum:
            signal = map_sparse(
                lambda m, s, g: momentum_decay * s + (1 - momentum_decay) * g.astype(jnp.float32),
                masks_now,
                signal,
                grads,
            )
        elif method.signal != "batch":
            signal = map_sparse(
                lambda m, s, g: _signal_step(method.signal, s, g, momentum_decay),
                masks_now,
                signal,
                grads,
            )
        step = state.step
        due = (step > 0) & (step % update_every == 0) & (step < end_step)

        def topology_update():
            moved = optax.apply_updates(params, updates)
            grad_signal, momentum = grads, None
            if method.needs_momentum:
                momentum = map_sparse(
                    lambda m, s, g: s, masks_now, signal, grads, dense=lambda s, g: g
                )
            elif method.signal != "batch":
                n = count.astype(jnp.float32)
                norm = 1.0 - momentum_decay**n if method.signal == "ema" else n
                grad_signal = map_sparse(
                    lambda m, s, g: s / norm, masks_now, signal, grads, dense=lambda s, g: g
                )
            _, new_masks, info = redistribute(
                moved,
                masks_now,
                grad_signal,
                jax.random.fold_in(state.key, step),
                method=method,
                fraction=fraction_at(step),
                min_active=min_active,
                momentum=momentum,
            )
            new_updates = map_sparse(
                lambda m, u, p: jnp.where(m, u, -p),
                new_masks,
                updates,
                params,
                dense=lambda u, p: u,
            )
            new_inner = reset_optimizer_state(inner, inner_state, masks_now, new_masks)
            if method.needs_momentum:
                # Regrown weights start with zero momentum; inactive positions keep theirs, as
                # it is their growth signal at the next update.
                new_signal = map_sparse(
                    lambda m, mn, s: jnp.where(mn & ~m, 0.0, s), masks_now, new_masks, signal
                )
                new_count = count
            elif runs_on:
                new_signal, new_count = signal, count
            else:
                new_signal = jax.tree.map(jnp.zeros_like, signal)
                new_count = jnp.zeros((), jnp.int32)
            return new_updates, new_masks, new_inner, new_signal, new_count, info

        def no_update():
            return updates, masks_now, inner_state, signal, count, state.info

        updates, new_masks, inner_state, signal, count, info = lax.cond(
            due, topology_update, no_update
        )
        return updates, DynamicSparseState(
            step + 1, state.key, new_masks, inner_state, signal, count, info
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_masks(opt_state: optax.OptState) -> PyTree:
    """The current masks held by a :func:`dynamic_sparse` state (anywhere inside ``opt_state``)."""
    masks = optax.tree_utils.tree_get(opt_state, "masks")
    if masks is None:
        raise ValueError("opt_state holds no dynamic_sparse() state")
    return masks
