"""Inference FLOPs of a (sparse) network relative to its dense version.

Counts the multiply-adds of every conv and dense kernel, as RigL does: a kernel applied at P output
positions costs ``2 * kernel.size * P`` FLOPs per example dense, and ``density`` times that sparse.
Output positions come from a shape-only forward pass (``capture_intermediates``). Biases, norms and
pooling are left out (they are a small share and stay dense).
"""

import jax
import jax.numpy as jnp
import numpy as np


def _path(keys) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def kernel_flops(model, variables, input_shape) -> dict[tuple[str, ...], float]:
    """Dense FLOPs per example for each kernel (ndim >= 2 leaf), keyed by its params path."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)

    def forward(v, x):
        return model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])

    _, state = jax.eval_shape(forward, variables, x)
    outputs = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        path = _path(keys)
        if len(path) >= 2 and path[-2] == "__call__":
            outputs[path[:-2]] = leaf.shape
    flops = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        path = _path(keys)
        if leaf.ndim < 2 or path[:-1] not in outputs:
            continue
        out = outputs[path[:-1]]
        positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        flops[path] = 2.0 * leaf.size * positions
    return flops


def relative_flops(flops: dict[tuple[str, ...], float], masks) -> float:
    """Sparse / dense inference FLOPs; kernels without a mask count as dense."""
    density = {}
    for keys, m in jax.tree_util.tree_flatten_with_path(masks)[0]:
        m = np.asarray(m)
        density[_path(keys)] = float(m.sum()) / m.size
    total = sum(flops.values())
    sparse = sum(f * density.get(p, 1.0) for p, f in flops.items())
    return sparse / total if total else 1.0
