"""GGR with a Flax Linen model: masks over ``params``, the topology update under ``lax.cond``.

The whole training step, topology update included, is one jitted function: every
``update_every`` steps :func:`ggr_jax.update_topology` runs under ``lax.cond`` (prune by
magnitude, regrow by GGR's global top-k of the mean gradient since the last update, reset the
optimizer moments of the changed weights) before the step's optimizer update, which then applies
the same gradients on the new masks.

Run: ``python examples/flax_linen.py --steps 300``
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import ggr_jax as gj


class MLP(nn.Module):
    """A 32-64-64-4 perceptron; kernels are (in, out)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(64)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(4)(x)


def teacher_data(key: jax.Array, n: int = 512) -> tuple[jax.Array, jax.Array]:
    """Inputs and the labels of a random linear teacher (4 classes)."""
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, 32))
    return x, jnp.argmax(x @ jax.random.normal(kw, (32, 4)), axis=-1)


def main(steps: int = 300, sparsity: float = 0.9, update_every: int = 50) -> dict:
    """Trains the MLP at ``sparsity`` with GGR and returns losses and per-layer densities."""
    model = MLP()
    x, y = teacher_data(jax.random.key(0))
    params = model.init(jax.random.key(1), x)["params"]

    densities = gj.erk_densities(params, sparsity)  # kernels sparse, biases dense (None)
    masks = gj.random_masks(params, densities, jax.random.key(2))
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
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, masks, step):
        loss, grads = jax.value_and_grad(loss_fn)(params)  # dense grads
        params, masks, opt_state, info = gj.update_topology(
            params,
            masks,
            grads,
            opt_state,
            jax.random.fold_in(jax.random.key(3), step),
            optimizer=tx,
            method=gj.ggr(),
            fraction=fraction(step),
            due=gj.is_update_step(step, update_every, steps),
        )
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)  # new masks
        params = optax.apply_updates(params, updates)
        return params, opt_state, masks, loss, info["moved"]

    losses, moved = [], 0
    for step in range(steps):
        params, opt_state, masks, loss, m = train_step(params, opt_state, masks, step)
        losses.append(float(loss))
        moved += int(m)
    return {
        "losses": losses,
        "moved": moved,
        "density": {name: float(d["kernel"]) for name, d in gj.mask_densities(masks).items()},
        "params": params,
        "masks": masks,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = main(args.steps)
    print(f"loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}, moved {out['moved']}")
    print("density per layer:", {k: round(v, 3) for k, v in out["density"].items()})
