"""One topology update in a training step: schedule, growth signal, redistribute, optimizer reset.

The order, used by :func:`dynamic_sparse` and by the experiments' train step alike: at a step
where :func:`is_update_step` is true, :func:`update_topology` runs **before** that step's
optimizer update and reads the same batch's gradients (or the signal accumulated since the last
update, or SNFS's momentum), then the optimizer updates the new topology with those gradients::

    grads = jax.grad(loss)(params)
    momentum = gradient_momentum(momentum, grads)          # snfs() only
    params, masks, opt_state, info = update_topology(..., due=is_update_step(step, ...))
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)

so weights regrown at step t receive step t's gradient at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ggr_jax._methods import Method
from ggr_jax._optimizer_state import reset_optimizer_state
from ggr_jax._redistribute import redistribute
from ggr_jax._signals import accumulated_gradients
from ggr_jax._tree import PyTree

Rewire = Callable[[PyTree, PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, dict[str, Any]]]


def is_update_step(step: Any, update_every: int, end_step: int) -> Any:
    """Whether a topology update is due at ``step``: every ``update_every`` steps in (0, end_step).

    Works on Python ints (a ``bool``) and on traced steps (a bool array, e.g. for ``due=`` of
    :func:`update_topology`).

    Example:
      >>> import ggr_jax as gj
      >>> [t for t in range(12) if gj.is_update_step(t, 3, 10)]
      [3, 6, 9]
    """
    return (step > 0) & (step % update_every == 0) & (step < end_step)


def growth_signal(method: Any, grads: PyTree, opt_state: optax.OptState) -> PyTree:
    """The per-weight signal regrowth reads: the batch's ``grads`` for ``signal="batch"``,
    else the :func:`accumulate_gradients` signal held in ``opt_state``."""
    if method.signal == "batch":
        return grads
    if all(optax.tree_utils.tree_get(opt_state, f) is None for f in ("grad_sum", "grad_ema")):
        raise ValueError(
            f"method {method.name!r} regrows by signal={method.signal!r}, accumulated in the "
            f"optimizer: chain gj.accumulate_gradients({method.signal!r}) in front of it"
        )
    return accumulated_gradients(opt_state)


def update_topology(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    opt_state: optax.OptState,
    key: jax.Array,
    *,
    optimizer: optax.GradientTransformation | Any,
    method: Method,
    fraction: Any,
    min_active: int | Callable[[str, tuple[int, ...]], int] | None = None,
    momentum: PyTree | None = None,
    due: Any = None,
    rewire: Rewire | None = None,
) -> tuple[PyTree, PyTree, optax.OptState, dict[str, Any]]:
    """One topology update of a training step: signal, :func:`redistribute`, optimizer reset.

    Reads the method's growth signal (the batch's ``grads``, or the :func:`accumulate_gradients`
    signal inside ``opt_state``), rewires the masks with :func:`redistribute` and zeroes the
    optimizer state of pruned and regrown weights with :func:`reset_optimizer_state`. Call it
    before the step's optimizer update and give that update the returned params, masks and
    state (see the module docstring for the order). Pure and jittable; with ``due`` it runs
    under ``lax.cond``, compiled once, and costs nothing on the steps that skip it.

    Args:
      params, masks, grads: the step's params, masks and dense gradients.
      opt_state: the state of ``optimizer`` (the masked chain, with its gradient accumulator).
      key: PRNG key of this update (e.g. ``jax.random.fold_in(key, step)``).
      optimizer: the optax transformation that made ``opt_state`` (or its ``init``).
      method: e.g. ``ggr()``, ``rigl()``, ``snfs()``.
      fraction: share of each layer's active weights to drop (may be traced).
      min_active: per-layer floor, see :func:`redistribute`.
      momentum: SNFS's momentum (:func:`gradient_momentum`), for ``snfs()``.
      due: a bool scalar (may be traced): update only when true, under ``lax.cond``; ``None``
        updates unconditionally.
      rewire: replaces :func:`redistribute`: ``rewire(params, masks, signal, key)`` returns
        ``(params, masks, info)`` with redistribute's ``info`` fields (e.g. a magnitude prune).

    Returns:
      ``(params, masks, opt_state, info)``; ``info`` as :func:`redistribute`'s, all zeros
      when ``due`` is false.

    Example:
      >>> import jax, jax.numpy as jnp, optax, ggr_jax as gj
      >>> params = {"w": jnp.array([[3., 0.], [1., 2.]])}
      >>> masks = {"w": params["w"] != 0}
      >>> tx = optax.chain(gj.mask_gradients(), optax.sgd(0.1), gj.mask_updates())
      >>> grads = {"w": jnp.array([[0., 5.], [0., 0.]])}
      >>> params, masks, opt_state, info = gj.update_topology(
      ...     params, masks, grads, tx.init(params), jax.random.key(0), optimizer=tx,
      ...     method=gj.rigl(), fraction=0.4, min_active=0, due=jnp.bool_(True))
      >>> masks["w"], int(info["grown"]["w"])
      (Array([[ True,  True],
             [False,  True]], dtype=bool), 1)
    """

    def update(operand):
        params, masks, opt_state = operand
        signal = growth_signal(method, grads, opt_state)
        if rewire is not None:
            new_params, new_masks, info = rewire(params, masks, signal, key)
        else:
            new_params, new_masks, info = redistribute(
                params,
                masks,
                signal,
                key,
                method=method,
                fraction=fraction,
                min_active=min_active,
                momentum=momentum if method.needs_momentum else None,
            )
        new_opt_state = reset_optimizer_state(optimizer, opt_state, masks, new_masks)
        return (new_params, new_masks, new_opt_state), info

    operand = (params, masks, opt_state)
    if due is None:
        (params, masks, opt_state), info = update(operand)
    else:
        (params, masks, opt_state), info = _when(due, update, operand)
    return params, masks, opt_state, info


def _when(due: Any, update: Callable[[Any], tuple[Any, Any]], operand: Any) -> tuple[Any, Any]:
    """``update(operand)`` if ``due``, else ``(operand, zeros like update's second output)``."""
    info_shape = jax.eval_shape(update, operand)[1]

    def keep(operand):
        return operand, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), info_shape)

    return jax.lax.cond(due, update, keep, operand)
