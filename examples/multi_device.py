"""Dynamic sparse training (GGR) on a device mesh: sharded params, masks and optimizer state.

Runs as is on 8 fake CPU devices, and unchanged on a TPU/GPU slice::

    python examples/multi_device.py                   # this machine: 8 host devices, 2 x 4 mesh
    python examples/multi_device.py --distributed     # each host of a pod slice runs this

Params, masks and momentum are sharded over a ``data x model`` mesh (FSDP along ``data``, tensor
parallel along ``model``), the batch along ``data``. The jitted step runs the topology update
(:func:`ggr_jax.update_topology`) inside ``lax.cond`` before its optimizer update; every
selection in it is a threshold search whose passes are per-shard counts, so only scalars cross
devices, and the masks keep the params' sharding.
"""

from __future__ import annotations

import argparse
import os

# Fake host devices when running on a CPU; a no-op for accelerators (only the CPU backend reads it).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import ggr_jax as gj  # noqa: E402


class MLP(nn.Module):
    features: tuple[int, ...] = (512, 256, 10)

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            x = nn.relu(x) if i < len(self.features) - 1 else x
        return x


def make_mesh() -> Mesh:
    """A ``data x model`` mesh over every device (2 x n/2 when the count is even)."""
    n = jax.device_count()
    return Mesh(np.array(jax.devices()).reshape(2 if n % 2 == 0 else 1, -1), ("data", "model"))


def init_sharded(model: nn.Module, mesh: Mesh):
    """Sharded params and masks (ERK, 90 % sparse), created in place on their devices."""

    def spec(path, x):  # kernel rows over data (FSDP), columns over model, where they divide
        axes = ("data", "model")[-x.ndim :]
        return NamedSharding(
            mesh,
            P(*(a if d % mesh.shape[a] == 0 else None for a, d in zip(axes, x.shape, strict=True))),
        )

    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 784)))
    shardings = jax.tree_util.tree_map_with_path(spec, abstract)

    def init(key):
        params = model.init(key, jnp.zeros((1, 784)))
        masks = gj.random_masks(params, gj.erk_densities(params, 0.9), jax.random.fold_in(key, 1))
        return gj.apply_masks(params, masks), masks

    mask_shardings = jax.tree.map(lambda s, p: s if p.ndim == 2 else None, shardings, abstract)
    params, masks = jax.jit(init, out_shardings=(shardings, mask_shardings))(jax.random.key(0))
    return params, masks, shardings


def make_step(model: nn.Module, tx: optax.GradientTransformation, steps: int):
    """The jitted training step: topology update (when due), then the optimizer update."""
    schedule = optax.cosine_decay_schedule(0.3, decay_steps=steps * 3 // 4)

    @jax.jit
    def step(params, masks, opt_state, x, y, step):
        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        # the topology update first (when due), then the optimizer update on the new masks
        params, masks, opt_state, info = gj.update_topology(
            params,
            masks,
            grads,
            opt_state,
            jax.random.fold_in(jax.random.key(1), step),
            optimizer=tx,
            method=gj.ggr(),
            fraction=schedule(step),
            due=gj.is_update_step(step, 50, steps * 3 // 4),
        )
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        params = optax.apply_updates(params, updates)
        return params, masks, opt_state, loss, info["moved"]

    return step


def batch(t: int, mesh: Mesh, size: int = 256):
    """Batch ``t`` of a fixed synthetic task (labels from a random linear teacher), sharded
    along ``data``: each device receives only its rows."""
    teacher = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)
    sharding = NamedSharding(mesh, P("data"))
    host = np.random.default_rng(t).normal(size=(size, 784)).astype(np.float32)
    labels = (host @ teacher).argmax(-1).astype(np.int32)
    x = jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])
    y = jax.make_array_from_callback(labels.shape, sharding, lambda i: labels[i])
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (one process per host)",
    )
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.distributed:
        jax.distributed.initialize()  # cluster auto-detection (TPU pods, SLURM, ...)

    mesh, model = make_mesh(), MLP()
    params, masks, shardings = init_sharded(model, mesh)
    tx = optax.chain(
        gj.accumulate_gradients(),  # ggr()'s signal: the mean gradient since the last update
        gj.mask_gradients(),
        optax.sgd(0.05, momentum=0.9),
        gj.mask_updates(),
    )
    opt_state = jax.jit(tx.init)(params)  # momentum inherits the params' sharding
    step = make_step(model, tx, args.steps)
    total = int(sum(np.sum(m) for m in jax.tree.leaves(masks)))
    for t in range(args.steps):
        params, masks, opt_state, loss, moved = step(params, masks, opt_state, *batch(t, mesh), t)
        if t % 50 == 0 or t == args.steps - 1:
            dens = {
                "/".join(str(k.key) for k in path[1:-1]): round(float(d), 3)
                for path, d in jax.tree_util.tree_flatten_with_path(gj.mask_densities(masks))[0]
            }
            print(f"step {t:4d}  loss {float(loss):.3f}  moved {int(moved):5d}  density {dens}")

    kernel = masks["params"]["Dense_0"]["kernel"]
    assert kernel.sharding.is_equivalent_to(shardings["params"]["Dense_0"]["kernel"], 2)
    assert int(sum(np.sum(m) for m in jax.tree.leaves(masks))) == total  # exact counts
    print(
        f"{jax.device_count()} devices, mesh {dict(mesh.shape)}; masks sharded "
        f"{kernel.sharding.spec}; {total} active weights throughout"
    )


if __name__ == "__main__":
    main()
