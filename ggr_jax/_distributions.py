"""Initial per-layer densities: uniform, ER, ERK and custom, with exact integer active counts.

Every function returns a pytree parallel to params whose sparsified leaves hold the density
``count / size`` of an exact integer ``count`` and whose dense leaves hold ``None``. For uniform,
ER and ERK the counts add up to exactly ``round((1 - sparsity) * N)``, where ``N`` is the total
size of the sparsified leaves only (leaves the spec marks dense do not count in ``N``).

With a concrete ``sparsity`` (a Python float, as at init) the solve runs in float64 NumPy and the
counts are exact for any layer size. With a traced ``sparsity`` the same code runs in float32
``jax.numpy`` under ``jit``; counts are then exact for layers below about 2**22 elements.

``sparsity`` must be a scalar (an array raises). With a concrete ``sparsity``, a sparsified leaf
left with no active weight at all (a very high sparsity, many small layers) gives a
``UserWarning`` naming it; under ``jit`` nothing can warn.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from ggr_jax._apportion import largest_remainder
from ggr_jax._tree import (
    PyTree,
    check_scalar,
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
    check_scalar(sparsity, name="sparsity")
    check_unit_interval(sparsity, name="sparsity", closed_right=False)
    paths, leaves, treedef, layers = _layers(params, spec)
    xp = _xp(sparsity)
    ftype = np.float64 if xp is np else jnp.float32
    shapes = [tuple(np.shape(leaves[i])) for i in layers]
    sizes = xp.asarray([int(np.prod(s, dtype=np.int64)) for s in shapes], dtype=ftype)
    # An empty leaf (only under an explicit spec) takes no budget and has density 1.
    raw = xp.asarray([raw_fn(s) if 0 not in s else 0.0 for s in shapes], dtype=ftype)
    s = xp.clip(xp.asarray(sparsity, dtype=ftype), 0.0, 1.0)
    target = xp.round((1.0 - s) * xp.sum(sizes))
    forced = xp.asarray(forced_dense if forced_dense is not None else [False] * len(layers))
    dense = forced
    forced_total = xp.sum(xp.where(forced, sizes, 0.0))
    if xp is np and forced_total > target:
        raise ValueError(
            f"sparsity {float(sparsity)} leaves {int(target)} active weights, fewer than the "
            f"{int(forced_total)} of the layers kept dense"
        )
    # Under jit an infeasible dense_first cannot raise: the layers kept dense then share the whole
    # budget (the total stays exact) and every other layer gets 0.
    share = xp.minimum(1.0, target / xp.maximum(forced_total, 1.0))
    for _ in range(len(layers) + 1):  # each round makes >= 1 more layer dense, or nothing changes
        budget = target - xp.sum(xp.where(dense, sizes, 0.0))
        eps = xp.maximum(budget, 0.0) / xp.maximum(xp.sum(xp.where(dense, 0.0, raw * sizes)), 1e-30)
        dense = dense | (eps * raw > 1.0)
    density = xp.where(forced, share, xp.where(dense, 1.0, eps * raw))
    counts = largest_remainder(density * sizes, target, xp)
    out = xp.where(sizes > 0, counts.astype(ftype) / xp.maximum(sizes, 1.0), 1.0)
    if xp is np and target > 0 and np.any((counts == 0) & (sizes > 0)):
        empty = [paths[layers[j]] for j in np.flatnonzero((counts == 0) & (sizes > 0))]
        warnings.warn(
            f"at sparsity {float(sparsity)} ({int(target)} active weights in all) the sparsified "
            f"leaves {empty} get no active weights: they cut the network. Lower the sparsity, "
            "or give them a density with custom_densities",
            stacklevel=3,
        )
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
        layers then share the remaining budget uniformly so the total is still exact. A concrete
        ``sparsity`` whose budget is smaller than that leaf raises ``ValueError``; a traced one
        (under ``jit``, where nothing can raise) gives that leaf the whole budget and the others
        0, so the total stays ``round((1 - sparsity) * N)``.

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
      power_scale: exponent on the raw ERK score (1.0 is ERK, 0.0 is uniform); a finite Python
        number.

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
    if not is_concrete(power_scale) or not np.isfinite(power_scale) or np.ndim(power_scale):
        raise ValueError(f"power_scale must be a finite Python number, got {power_scale!r}")
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
