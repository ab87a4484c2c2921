"""Inference and training FLOPs of a (sparse) network relative to its dense version.

Counts the multiply-adds of every conv and dense kernel, as RigL does: a kernel applied at P output
positions costs ``2 * kernel.size * P`` FLOPs per example dense, and ``density`` times that sparse.
Output positions come from a shape-only forward pass (``capture_intermediates``). Biases, norms and
pooling are left out (they are a small share and stay dense).
"""

import jax
import jax.numpy as jnp
import numpy as np

import ggr_jax as gj
from experiments.metrics import layer_of


def kernel_flops(model, variables, input_shape) -> dict[str, float]:
    """Dense FLOPs per example for each kernel (ndim >= 2 leaf), keyed by its params path
    (``gj.path_str``, e.g. ``Dense_0/kernel``)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)

    def forward(v, x):
        return model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"])

    _, state = jax.eval_shape(forward, variables, x)
    outputs = {}  # module path -> output shape
    for keys, leaf in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        if len(keys) >= 2 and gj.path_str(keys[-2:-1]) == "__call__":
            outputs[gj.path_str(keys[:-2])] = leaf.shape
    flops = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        module = gj.path_str(keys[:-1])
        if leaf.ndim < 2 or module not in outputs:
            continue
        out = outputs[module]
        positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        flops[gj.path_str(keys)] = 2.0 * leaf.size * positions
    return flops


def relative_flops(flops: dict[str, float], masks) -> float:
    """Sparse / dense inference FLOPs; kernels without a mask count as dense."""
    density = {}
    for keys, m in jax.tree_util.tree_flatten_with_path(masks)[0]:
        m = np.asarray(m)
        density[gj.path_str(keys)] = float(m.sum()) / m.size
    total = sum(flops.values())
    sparse = sum(f * density.get(p, 1.0) for p, f in flops.items())
    return sparse / total if total else 1.0


def layer_flops(model, variables, input_shape) -> dict[str, float]:
    """:func:`kernel_flops` keyed by layer name (as in metrics records, e.g. ``Dense_0``)."""
    return {layer_of(p): f for p, f in kernel_flops(model, variables, input_shape).items()}


def training_flops_ratio(
    layer_flops: dict[str, float], records: list[dict], steps: int, dense_every_step: bool
) -> float:
    """Training FLOPs of a run relative to dense training, counted as RigL does.

    A dense step costs ``3 f_D`` (forward, gradient of the inputs, gradient of the weights). A
    sparse step costs ``3 f_S``, with ``f_S`` from the per-layer densities at that step; a step
    that reads the dense gradient (every topology update, and every step of a method with
    ``dense_every_step``: SNFS, accumulated regrowth signals) costs ``2 f_S + f_D``.
    Reference: Evci et al. 2020, https://arxiv.org/abs/1911.11134 (appendix H).

    Args:
      layer_flops: dense inference FLOPs per example of each kernel, by layer name.
      records: the run's metrics records (``init`` and ``topology`` records give the densities).
      steps: training steps of the run.
      dense_every_step: whether every step reads the dense gradient.

    Returns:
      The ratio (1.0 for dense training).

    Example:
      >>> recs = [{"type": "init", "density": {"a": 0.1}},
      ...         {"type": "topology", "step": 5, "density": {"a": 0.1}}]
      >>> round(training_flops_ratio({"a": 2.0}, recs, 10, False), 4)  # (9*3*.2 + 2*.2+2)/60
      0.13
    """
    dense = sum(layer_flops.values())
    if not dense or steps <= 0:
        return 1.0

    def sparse(density: dict) -> float:
        return sum(f * density.get(k, 1.0) for k, f in layer_flops.items())

    def step_cost(f_s: float) -> float:
        return 2 * f_s + (dense if dense_every_step else f_s)

    init = next(r for r in records if r["type"] == "init")
    done, f_s, total = 0, sparse(init["density"]), 0.0
    for r in sorted((r for r in records if r["type"] == "topology"), key=lambda r: r["step"]):
        total += (r["step"] - done) * step_cost(f_s) + 2 * f_s + dense
        done, f_s = r["step"] + 1, sparse(r["density"])
    total += max(steps - done, 0) * step_cost(f_s)
    return total / (3 * dense * steps)
