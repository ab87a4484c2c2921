"""GGR with an Equinox model: masks over the model's float arrays, weights in (out, in) layout.

``eqx.partition(model, eqx.is_inexact_array)`` splits the model into params (a pytree of the
same ``eqx.nn.MLP`` class, arrays as leaves) and the rest; masks, densities and
:func:`ggr_jax.update_topology` work on that params tree directly. Equinox's ``Linear`` stores
its weight as (out, in), the transpose of Flax's kernels; the library default for ``min_active``
applies unchanged. One jitted step runs the topology update under ``lax.cond`` when it is due,
before the step's optimizer update, which then applies the same gradients on the new masks.

Run: ``python examples/equinox_mlp.py --steps 300``
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import ggr_jax as gj


def teacher_data(key: jax.Array, n: int = 512) -> tuple[jax.Array, jax.Array]:
    """Inputs and the labels of a random linear teacher (4 classes)."""
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, 32))
    return x, jnp.argmax(x @ jax.random.normal(kw, (32, 4)), axis=-1)


def main(steps: int = 300, sparsity: float = 0.9, update_every: int = 50) -> dict:
    """Trains a 32-64-64-4 ``eqx.nn.MLP`` at ``sparsity`` with GGR; returns losses and masks."""
    model = eqx.nn.MLP(32, 4, 64, depth=2, key=jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x, y = teacher_data(jax.random.key(0))

    masks = gj.random_masks(params, gj.erk_densities(params, sparsity), jax.random.key(2))
    params = gj.apply_masks(params, masks)
    tx = optax.chain(
        gj.accumulate_gradients(),  # ggr()'s signal: the mean gradient since the last update
        gj.mask_gradients(),
        optax.sgd(0.1, momentum=0.9),
        gj.mask_updates(),
    )
    opt_state = tx.init(params)
    fraction = optax.cosine_decay_schedule(0.3, steps)

    def loss_fn(params):
        logits = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, masks, step, key):
        loss, grads = jax.value_and_grad(loss_fn)(params)  # dense grads
        params, masks, opt_state, info = gj.update_topology(
            params,
            masks,
            grads,
            opt_state,
            jax.random.fold_in(key, step),
            optimizer=tx,
            method=gj.ggr(),
            fraction=fraction(step),
            due=gj.is_update_step(step, update_every, steps),
        )
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state, masks, loss, info["moved"]

    losses, moved = [], 0
    for step in range(steps):
        params, opt_state, masks, loss, m = train_step(
            params, opt_state, masks, step, jax.random.key(3)
        )
        moved += int(m)
        losses.append(float(loss))
    return {
        "losses": losses,
        "moved": moved,
        "density": [float(layer.weight) for layer in gj.mask_densities(masks).layers],
        "model": eqx.combine(params, static),
        "params": params,
        "masks": masks,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = main(args.steps)
    print(f"loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}, moved {out['moved']}")
    print("density per layer:", [round(d, 3) for d in out["density"]])
