"""ggr_jax: dynamic sparse training in JAX, built around Global Gradient-based Redistribution.

Masks are a pytree parallel to params (bool arrays; ``None`` for dense leaves), masking lives in
optax transforms, and one pure, jittable :func:`redistribute` implements GGR, RigL, SET, SNFS
and static sparse training as configurations of prune -> allocate -> place.

Reference: Parger et al. 2022, https://arxiv.org/abs/2210.14012
"""

from ggr_jax._distributions import custom_densities, er_densities, erk_densities, uniform_densities
from ggr_jax._export import compress, decompress, is_compressed, model_bytes
from ggr_jax._gmp import full_masks, gmp_schedule, magnitude_prune
from ggr_jax._inference import (
    EllKernel,
    linen_apply,
    mlp_apply,
    nnx_sparsify,
    sparse_linear_class,
    sparse_matmul,
    sparsify,
    to_bcoo,
    to_ell,
)
from ggr_jax._masks import active_counts, apply_masks, global_density, mask_densities, random_masks
from ggr_jax._methods import Method, ggr, rigl, set_, snfs, static
from ggr_jax._nm import group_top_k, is_nm, nm_random_masks, nm_redistribute
from ggr_jax._optimizer_state import reset_optimizer_state
from ggr_jax._redistribute import redistribute
from ggr_jax._select import order_key, top_k_global, top_k_per_leaf
from ggr_jax._signals import (
    AccumulatedGradients,
    GradientEMA,
    accumulate_gradients,
    accumulated_gradients,
    gradient_momentum,
)
from ggr_jax._topology import is_update_step, update_topology
from ggr_jax._transforms import (
    DynamicSparseState,
    dynamic_sparse,
    get_masks,
    mask_gradients,
    mask_updates,
)
from ggr_jax._tree import path_str, sparsifiable

set = set_  # noqa: A001  (``gj.set()`` reads like the other methods)

__version__ = "0.1.0"

__all__ = [
    "AccumulatedGradients",
    "DynamicSparseState",
    "EllKernel",
    "GradientEMA",
    "Method",
    "accumulate_gradients",
    "accumulated_gradients",
    "active_counts",
    "apply_masks",
    "compress",
    "custom_densities",
    "decompress",
    "dynamic_sparse",
    "er_densities",
    "erk_densities",
    "full_masks",
    "get_masks",
    "ggr",
    "global_density",
    "gmp_schedule",
    "gradient_momentum",
    "group_top_k",
    "is_compressed",
    "is_nm",
    "is_update_step",
    "linen_apply",
    "magnitude_prune",
    "mask_densities",
    "mask_gradients",
    "mask_updates",
    "mlp_apply",
    "model_bytes",
    "nm_random_masks",
    "nm_redistribute",
    "nnx_sparsify",
    "order_key",
    "path_str",
    "random_masks",
    "redistribute",
    "reset_optimizer_state",
    "rigl",
    "set",
    "snfs",
    "sparse_linear_class",
    "sparse_matmul",
    "sparsifiable",
    "sparsify",
    "static",
    "to_bcoo",
    "to_ell",
    "top_k_global",
    "top_k_per_leaf",
    "uniform_densities",
    "update_topology",
]
