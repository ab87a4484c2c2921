"""Growth signals read by a topology update: accumulated gradients and SNFS's momentum.

Regrowth ranks inactive weights by a per-weight signal. One batch's gradient is the plain
signal; :func:`accumulate_gradients` keeps a less noisy one (the mean of g or of |g| since the
last topology update, or an EMA of g) inside the optimizer state, and :func:`gradient_momentum`
is the exponential average of g that ``snfs()`` allocates and places by.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ggr_jax._tree import PyTree, check_unit_interval


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


def gradient_momentum(momentum: PyTree, grads: PyTree, *, decay: float = 0.9) -> PyTree:
    """One step of SNFS's momentum: ``decay * momentum + (1 - decay) * grads`` in float32.

    ``snfs()`` allocates regrowth by each layer's mean momentum magnitude and places it at the
    largest momentum (Dettmers & Zettlemoyer 2019, https://arxiv.org/abs/1907.04840). Start from
    zeros like the params and call it every step with the dense gradients; pass the result to
    :func:`update_topology` (or :func:`redistribute`) as ``momentum=``. Topology updates leave it
    as it is.

    Args:
      momentum: float32 pytree like the params.
      grads: the step's dense gradients (any float dtype).
      decay: the average's coefficient, in [0, 1].

    Returns:
      The new momentum (float32, the structure of ``momentum``).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> m = {"w": jnp.zeros(2)}
      >>> for g in ([1., -1.], [1., 1.]):
      ...     m = gj.gradient_momentum(m, {"w": jnp.array(g)}, decay=0.5)
      >>> m["w"]
      Array([0.75, 0.25], dtype=float32)
    """
    check_unit_interval(decay, name="decay")
    return jax.tree.map(
        lambda m, g: decay * m + (1 - decay) * g.astype(jnp.float32), momentum, grads
    )
