"""What an update is compared with: training steps, the memory floor and two sort baselines.

* :func:`make_steps`: a dense optax step (SGD + momentum), the same step with ggr_jax's masking
  transforms, and the usual mask-wrapping optimizer (float masks multiplied into the gradients
  and the params, as jaxpruner does).
* :func:`floor_pass`: the memory floor, one elementwise pass over the params (read 4 bytes and
  write 4 bytes per f32 param). An update reads at least the params, masks and gradients once.
* :func:`argsort_rigl`: per-layer top-k by ``jnp.argsort`` (jaxpruner's approach, re-implemented
  here: jaxpruner itself is neither installed nor declared in ggr_jax's extras).
* :func:`concat_top_k_ggr`: GGR's global regrowth by ``lax.top_k`` over ``jnp.concatenate`` of
  every layer (static k).
* :data:`METHODS` / :func:`update_fn`: ggr_jax's updates, through the public ``gj.redistribute``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

import ggr_jax as gj

METHODS = {  # stable id -> method
    "static": gj.static(),
    "set": gj.set(),
    "rigl": gj.rigl(),
    "snfs": gj.snfs(),
    "ggr": gj.ggr(),
    "ggr_rho1": gj.ggr(rho=1.0),
}


def update_fn(method: gj.Method) -> Callable:
    """``(params, masks, grads, key, fraction) -> redistribute(...)``; grads as momentum."""

    def update(params, masks, grads, key, fraction):
        momentum = grads if method.needs_momentum else None
        return gj.redistribute(
            params, masks, grads, key, method=method, fraction=fraction, momentum=momentum
        )

    return update


def make_steps(
    loss: Callable, lr: float = 0.05
) -> dict[str, tuple[Callable, optax.GradientTransformation]]:
    """Jitted steps of ``loss(params, x, y)`` with their optimizers, by stable id.

    ``dense_step(params, opt_state, x, y)``; ``masked_step`` and ``wrapper_step`` take ``masks``
    after ``opt_state``. Everything is an argument, as in a user's loop.
    """
    dense_tx = optax.sgd(lr, momentum=0.9)
    masked_tx = optax.chain(gj.mask_gradients(), optax.sgd(lr, momentum=0.9), gj.mask_updates())

    @jax.jit
    def dense_step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = dense_tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def masked_step(params, opt_state, masks, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = masked_tx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def wrapper_step(params, opt_state, masks, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        fmask = jax.tree.map(
            lambda m, p: jnp.ones_like(p) if m is None else m.astype(p.dtype),
            masks,
            params,
            is_leaf=lambda m: m is None,
        )
        updates, opt_state = dense_tx.update(jax.tree.map(jnp.multiply, grads, fmask), opt_state)
        params = optax.apply_updates(params, updates)
        return jax.tree.map(jnp.multiply, params, fmask), opt_state, value

    return {
        "dense_step": (dense_step, dense_tx),
        "masked_step": (masked_step, masked_tx),
        "wrapper_step": (wrapper_step, dense_tx),
    }


def floor_pass(params: Any) -> Any:
    """The memory floor: one elementwise pass over every param (``w * 2``)."""
    return jax.tree.map(lambda w: w * 2.0, params)


FLOOR_BYTES_PER_PARAM = 8  # f32: read 4, write 4


def _argsort_top_k(scores: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
    """The k largest eligible entries by a full argsort (dynamic k via the inverse permutation)."""
    flat = jnp.where(eligible, scores, -jnp.inf).ravel()
    order = jnp.argsort(-flat)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < k).reshape(scores.shape) & eligible


def argsort_rigl(params, masks, grads, fraction):
    """RigL with per-layer argsort top-k for prune and regrowth (jaxpruner's approach)."""
    out_p, out_m = {}, {}
    for name, layer in params.items():
        w, m, g = layer["kernel"], masks[name]["kernel"], grads[name]["kernel"]
        active = jnp.sum(m, dtype=jnp.int32)
        n_drop = jnp.floor(fraction * active.astype(jnp.float32)).astype(jnp.int32)
        keep = _argsort_top_k(jnp.abs(w), m, active - n_drop)
        grow = _argsort_top_k(jnp.abs(g), ~keep, n_drop)
        out_m[name] = {"kernel": keep | grow, "bias": None}
        out_p[name] = {"kernel": jnp.where(keep, w, 0.0), "bias": layer["bias"]}
    return out_p, out_m


def concat_top_k_ggr(params, masks, grads, *, n_drop: tuple[int, ...]):
    """GGR's prune (lax.top_k per layer) and global regrowth (lax.top_k over the concatenation).

    ``lax.top_k`` needs a static k: the per-layer drop counts are fixed at trace time.
    """
    names = list(params)
    kept, flat_scores = {}, []
    for name, r in zip(names, n_drop, strict=True):
        w, m = params[name]["kernel"], masks[name]["kernel"]
        smallest = jnp.where(m, -jnp.abs(w), -jnp.inf).ravel()  # -|w| of active weights
        _, idx = lax.top_k(smallest, r)
        drop = jnp.zeros(w.size, bool).at[idx].set(True).reshape(w.shape)
        kept[name] = m & ~drop
        flat_scores.append(jnp.where(kept[name], -jnp.inf, jnp.abs(grads[name]["kernel"])).ravel())
    scores = jnp.concatenate(flat_scores)
    _, idx = lax.top_k(scores, sum(n_drop))
    grow = jnp.zeros(scores.shape, bool).at[idx].set(True)
    out_p, out_m, start = {}, {}, 0
    for name in names:
        w = params[name]["kernel"]
        g = lax.dynamic_slice_in_dim(grow, start, w.size).reshape(w.shape)
        start += w.size
        out_m[name] = {"kernel": kept[name] | g, "bias": None}
        out_p[name] = {"kernel": jnp.where(kept[name], w, 0.0), "bias": params[name]["bias"]}
    return out_p, out_m
