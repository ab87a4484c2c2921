"""GGR with a Flax NNX model and ``nnx.Optimizer``: ``masks=`` passes through ``update``.

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards its keyword arguments to the optax
transform, so the masking chain gets its masks as it does in plain optax. Masks are built over
the pure params (``nnx.as_pure(nnx.state(model, nnx.Param))``), the structure the optimizer hands
to optax. Every ``update_every`` steps a separately jitted step runs :func:`ggr_jax.update_topology`
first (GGR's regrowth from the mean gradient since the last update, held by
``accumulate_gradients``; the optimizer moments of the changed weights reset), writes the new
params and state into the model and the optimizer, then the step's optimizer update with the same
gradients on the new masks.

Run: ``python examples/flax_nnx.py --steps 300``
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import ggr_jax as gj


class MLP(nnx.Module):
    """A 32-64-64-4 perceptron; ``nnx.Linear`` kernels are (in, out)."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(32, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 64, rngs=rngs)
        self.l3 = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


def teacher_data(key: jax.Array, n: int = 512) -> tuple[jax.Array, jax.Array]:
    """Inputs and the labels of a random linear teacher (4 classes)."""
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, 32))
    return x, jnp.argmax(x @ jax.random.normal(kw, (32, 4)), axis=-1)


def pure_params(model: nnx.Module):
    """The model's params as a pure pytree of arrays: the tree ``nnx.Optimizer`` gives optax."""
    return nnx.as_pure(nnx.state(model, nnx.Param))


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, masks, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads, masks=masks)  # forwarded to tx.update(..., masks=masks)
    return loss


@nnx.jit
def update_step(model, optimizer, masks, x, y, key, fraction):
    """A training step with a topology update first; returns the loss, new masks and ``moved``."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)  # dense grads
    params, new_masks, opt_state, info = gj.update_topology(
        pure_params(model),
        masks,
        pure_params(grads),
        nnx.as_pure(optimizer.opt_state),
        key,
        optimizer=optimizer.tx,
        method=gj.ggr(),
        fraction=fraction,
    )
    nnx.update(model, params)
    nnx.update(optimizer.opt_state, nnx.state(opt_state))
    optimizer.update(model, grads, masks=new_masks)  # the same grads, on the new masks
    return loss, new_masks, info["moved"]


def main(steps: int = 300, sparsity: float = 0.9, update_every: int = 50) -> dict:
    """Trains the MLP at ``sparsity`` with GGR and returns losses and per-layer densities."""
    model = MLP(nnx.Rngs(1))
    x, y = teacher_data(jax.random.key(0))
    params = pure_params(model)
    masks = gj.random_masks(params, gj.erk_densities(params, sparsity), jax.random.key(2))
    nnx.update(model, gj.apply_masks(params, masks))

    tx = optax.chain(
        gj.accumulate_gradients(),  # ggr()'s signal: the mean gradient since the last update
        gj.mask_gradients(),
        optax.sgd(0.1, momentum=0.9),
        gj.mask_updates(),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    fraction = optax.cosine_decay_schedule(0.3, steps)

    losses, moved = [], 0
    for step in range(steps):
        if gj.is_update_step(step, update_every, steps):
            key = jax.random.fold_in(jax.random.key(3), step)
            loss, masks, m = update_step(model, optimizer, masks, x, y, key, fraction(step))
            moved += int(m)
        else:
            loss = train_step(model, optimizer, masks, x, y)
        losses.append(float(loss))
    return {
        "losses": losses,
        "moved": moved,
        "density": {name: float(d["kernel"]) for name, d in gj.mask_densities(masks).items()},
        "params": pure_params(model),
        "masks": masks,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    out = main(args.steps)
    print(f"loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}, moved {out['moved']}")
    print("density per layer:", {k: round(v, 3) for k, v in out["density"].items()})
