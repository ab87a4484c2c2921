"""Initial per-layer densities: uniform, ER, ERK and custom, with exact integer active counts.

Every function returns a pytree parallel to params whose sparsified leaves hold the density
``count / size`` of an exact integer ``count`` and whose dense leaves hold ``None``. For uniform,
ER and ERK the counts add up to exactly ``round((1 - sparsity) * N)``, where ``N`` is the total
size of the sparsified leaves only (leaves the spec marks dense do not count in ``N``).

With a concrete ``sparsity`` (a Python float, as at init) the solve runs in float64 NumPy and the
counts are exact for any layer size. With a traced ``sparsity`` the same code runs in float32
``jax.numpy`` under ``jit``; counts are then exact for layers below about 2**22 elements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ggr_jax._apportion import largest_remainder
from ggr_jax._tree import (
    PyTree,
    check_spec,
    check_unit_interval,
    is_concrete,
    leaves_with_paths,
    unflatten_at,
)


def _xp(*values: Any) -> Any:
    return np if all(is_concrete(v) for v in values) else jnp


def _layers(params: PyTree, spec: PyTree | None):
    paths, leaves, treedef = leaves_with_paths(params)
    flags = check_spec(params, spec)
    layers = [i for i, f in enumerate(flags) if f]
    if not layers:
        raise ValueError("no sparsifiable leaves: the spec marks every leaf dense")
    return paths, leaves, treedef, layers


def _solve(
    params: PyTree,
    sparsity: Any,
    spec: PyTree | None,
    raw_fn,
    forced_dense: list[bool] | None = None,
) -> PyTree:
    """Solves eps so that sum_l min(1, eps * raw_l) * N_l == round((1 - S) * N), exactly."""
    check_unit_interval(sparsity, name="sparsity", closed_right=False)
    paths, leaves, treedef, layers = _layers(params, spec)
    xp = _xp(sparsity)
    ftype = np.float64 if xp is np else jnp.float32
    shapes = [tuple(np.shape(leaves[i])) for i in layers]
    sizes = xp.asarray([int(np.prod(s, dtype=np.int64)) for s in shapes], dtype=ftype)
    raw = xp.asarray([raw_fn(s) for s in shapes], dtype=ftype)
    s = xp.clip(xp.asarray(sparsity, dtype=ftype), 0.0, 1.0)
    target = xp.round((1.0 - s) * xp.sum(sizes))
    dense = xp.asarray(forced_dense if forced_dense is not None else [False] * len(layers))
    if xp is np and forced_dense is not None and sizes[dense].sum() > target:
        raise ValueError(
            f"sparsity {float(sparsity)} leaves {int(target)} active weights, fewer than the "
            f"{int(sizes[dense].sum())} of the layers kept dense"
        )
    for _ in range(len(layers) + 1):  # each round makes >= 1 more layer dense, or nothing changes
        budget = target - xp.sum(xp.where(dense, sizes, 0.0))
        eps = xp.maximum(budget, 0.0) / xp.maximum(xp.sum(xp.where(dense, 0.0, raw * sizes)), 1e-30)
        dense = dense | (eps * raw > 1.0)
    density = xp.where(dense, 1.0, eps * raw)
    counts = largest_remainder(density * sizes, target, xp)
    out = counts.astype(ftype) / sizes
    return unflatten_at(treedef, len(leaves), layers, [out[j] for j in range(len(layers))])


def uniform_densities(
    params: PyTree, sparsity: Any, *, spec: PyTree | None = None, dense_first: bool = False
) -> PyTree:
    """The same density ``1 - sparsity`` in every sparsified layer.

    Args:
      params: pytree of arrays.
      sparsity: target sparsity in [0, 1) over the sparsified leaves.
      spec: static spec from :func:`sparsifiable` (default: ``sparsifiable(params)``).
      dense_first: keep the first sparsified leaf (in tree order) dense, as RigL does; the other
        layers then share the remaining budget uniformly so the total is still exact.

    Returns:
      Pytree of densities (``None`` for dense leaves).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> d = gj.uniform_densities({"a": jnp.ones((10, 10)), "b": jnp.ones((10, 10))}, 0.9)
      >>> float(d["a"]), float(d["b"])
      (0.1, 0.1)
    """
    n_sparse = sum(check_spec(params, spec))
    forced = [dense_first and j == 0 for j in range(n_sparse)]
    return _solve(params, sparsity, spec, lambda shape: 1.0, forced)


def er_densities(params: PyTree, sparsity: Any, *, spec: PyTree | None = None) -> PyTree:
    """Erdos-Renyi densities: ``d_l`` proportional to ``(n_in + n_out) / (n_in * n_out)``.

    ``n_in, n_out`` are the last two dimensions (Flax layout ``(..., in, out)``). Layers whose
    density would pass 1 become dense and the rest is re-solved.

    Reference: Mocanu et al. 2018, https://arxiv.org/abs/1707.04780

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> d = gj.er_densities({"a": jnp.ones((100, 10)), "b": jnp.ones((10, 10))}, 0.8)
      >>> float(d["b"]) > float(d["a"])
      True
    """
    paths, leaves, _, layers = _layers(params, spec)
    for i in layers:
        if np.ndim(leaves[i]) < 2:
            raise ValueError(
                f"ER needs (..., n_in, n_out) leaves; sparsified leaf {paths[i]!r} "
                f"has shape {np.shape(leaves[i])}"
            )
    return _solve(params, sparsity, spec, lambda s: (s[-2] + s[-1]) / (s[-2] * s[-1]))


def erk_densities(
    params: PyTree, sparsity: Any, *, spec: PyTree | None = None, power_scale: float = 1.0
) -> PyTree:
    """Erdos-Renyi-Kernel densities: ``d_l`` proportional to ``(sum(shape) / prod(shape))**power``.

    Kernel dimensions are included (RigL's ERK). Layers whose density would pass 1 become dense
    and the rest is re-solved until none does; the counts sum to ``round((1 - S) * N)`` exactly.

    Args:
      params: pytree of arrays.
      sparsity: target sparsity in [0, 1).
      spec: static spec from :func:`sparsifiable`.
      power_scale: exponent on the raw ERK score (1.0 is ERK, 0.0 is uniform).

    Returns:
      Pytree of densities (``None`` for dense leaves).

    Reference: Evci et al. 2020 (RigL), https://arxiv.org/abs/1911.11134

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> p = {"a": jnp.ones((784, 300)), "b": jnp.ones((300, 100)), "c": jnp.ones((100, 10))}
      >>> d = gj.erk_densities(p, 0.95)
      >>> round(sum(float(d[k]) * p[k].size for k in p)) == round(0.05 * (784*300 + 300*100 + 1000))
      True
    """
    return _solve(
        params, sparsity, spec, lambda s: (sum(s) / np.prod(s, dtype=np.float64)) ** power_scale
    )


def custom_densities(
    params: PyTree,
    densities: Mapping[str, float],
    *,
    spec: PyTree | None = None,
    default: float | None = None,
) -> PyTree:
    """User-given densities by leaf path: ``{regex: density}``, first match (``re.search``) wins.

    Args:
      params: pytree of arrays.
      densities: mapping from a regex over leaf paths (``"Dense_0/kernel"``) to a density in [0, 1].
      spec: static spec from :func:`sparsifiable`.
      default: density for sparsified leaves that no regex matches; ``None`` makes that an error.

    Returns:
      Pytree of densities ``round(d * size) / size`` (``None`` for dense leaves).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> d = gj.custom_densities({"a": jnp.ones((10, 10))}, {"a": 0.25})
      >>> float(d["a"])
      0.25
    """
    paths, leaves, treedef, layers = _layers(params, spec)
    out = []
    for i in layers:
        match = next(
            (d for pattern, d in densities.items() if re.search(pattern, paths[i])), default
        )
        if match is None:
            raise ValueError(f"no density given for sparsified leaf {paths[i]!r} (and no default)")
        check_unit_interval(match, name=f"density of leaf {paths[i]!r}")
        size = int(np.prod(np.shape(leaves[i]), dtype=np.int64))
        xp = _xp(match)
        out.append(xp.round(xp.asarray(match) * size) / size)
    return unflatten_at(treedef, len(leaves), layers, out)
