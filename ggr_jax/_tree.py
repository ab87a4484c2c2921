"""Leaf paths, the static "sparsifiable" spec, and input validation shared by every module.

Masks are a pytree parallel to params: a boolean array of the param's shape for each sparsified
leaf, and ``None`` for each dense leaf. ``None`` is treated as a leaf everywhere in this package
(``is_leaf=is_none``) so that masks, densities and per-layer counts keep the params structure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def is_none(x: Any) -> bool:
    """True for ``None``: the marker of a dense (not sparsified) leaf."""
    return x is None


def path_str(path: Sequence[Any]) -> str:
    """A readable leaf path such as ``params/Dense_0/kernel``: the names leaves go by here.

    Error messages, ``sparsifiable(include=..., exclude=...)`` and a ``min_active`` callable
    name leaves this way: dict keys, attribute names and sequence indices joined with ``/``.

    Args:
      path: a key path, as ``jax.tree_util.tree_flatten_with_path`` gives it.

    Returns:
      The path as a string.

    Example:
      >>> import jax, jax.numpy as jnp, ggr_jax as gj
      >>> tree = {"params": {"Dense_0": {"kernel": jnp.ones((2, 3))}}, "stats": [jnp.ones(3)]}
      >>> [gj.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      ['params/Dense_0/kernel', 'stats/0']
    """
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaves_with_paths(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    """Flattens ``tree`` (``None`` counted as a leaf) into paths, leaves and the treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    return [path_str(p) for p, _ in flat], [x for _, x in flat], treedef


def map_sparse(f: Callable[..., Any], masks: PyTree, *trees: PyTree, dense: Any = None) -> PyTree:
    """Maps ``f(mask, *leaves)`` over the sparsified leaves of ``masks``.

    Dense leaves (``mask is None``) become ``dense(*leaves)`` when ``dense`` is a callable, and
    ``dense`` itself otherwise (``None`` by default).
    """

    def one(m, *xs):
        if m is None:
            return dense(*xs) if callable(dense) else dense
        return f(m, *xs)

    return jax.tree.map(one, masks, *trees, is_leaf=is_none)


def sparsifiable(
    params: PyTree,
    *,
    min_ndim: int = 2,
    include: str | None = None,
    exclude: str | None = None,
) -> PyTree:
    """The static spec of which leaves are sparsified: a pytree of Python bools.

    By default every non-empty array leaf with ``ndim >= min_ndim`` (dense and conv kernels) is
    sparsified; biases, norm scales, other vectors and zero-size leaves stay dense.

    Args:
      params: any pytree of arrays (Flax Linen params, ``nnx.State``, Equinox arrays). ``None``
        leaves (as left by ``eqx.partition``) are kept as ``None``.
      min_ndim: leaves with fewer dimensions stay dense.
      include: optional regex; when given, a leaf is sparsified only if its path matches it
        (``re.search``) and it has ``ndim >= min_ndim``.
      exclude: optional regex; leaves whose path matches it stay dense.

    Returns:
      A pytree with the structure of ``params`` holding ``True`` / ``False`` (``None`` stays None).

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> gj.sparsifiable({"w": jnp.ones((3, 4)), "b": jnp.ones(4)})
      {'b': False, 'w': True}
    """
    paths, leaves, treedef = leaves_with_paths(params)
    out: list[bool | None] = []
    for path, x in zip(paths, leaves, strict=True):
        if x is None:
            out.append(None)
            continue
        ok = np.ndim(x) >= min_ndim and np.size(x) > 0  # an empty leaf has nothing to prune
        if include is not None and not re.search(include, path):
            ok = False
        if exclude is not None and re.search(exclude, path):
            ok = False
        out.append(bool(ok))
    return jax.tree_util.tree_unflatten(treedef, out)


def unflatten_at(treedef, n: int, positions: list[int], values: list[Any]) -> PyTree:
    """A tree of ``treedef`` (``n`` leaves) holding ``values`` at leaf ``positions``, else None."""
    out: list[Any] = [None] * n
    for i, v in zip(positions, values, strict=True):
        out[i] = v
    return jax.tree_util.tree_unflatten(treedef, out)


def check_spec(params: PyTree, spec: PyTree | None) -> list[bool]:
    """Validates a spec against params and returns its flat list of bools (None -> False)."""
    if spec is None:
        spec = sparsifiable(params)
    _, p_leaves, p_def = leaves_with_paths(params)
    paths, s_leaves, s_def = leaves_with_paths(spec)
    if p_def != s_def:
        raise ValueError(
            f"spec tree structure does not match params: spec {s_def} vs params {p_def}"
        )
    flat = []
    for path, s, x in zip(paths, s_leaves, p_leaves, strict=True):
        if s is None or x is None:
            flat.append(False)
            continue
        if not isinstance(s, (bool, np.bool_)):
            raise ValueError(f"spec leaf {path!r} must be a Python bool, got {s!r}")
        flat.append(bool(s))
    return flat


def check_masks(params: PyTree, masks: PyTree, *, name: str = "masks") -> None:
    """Raises ``ValueError`` (at trace time) when ``masks`` cannot be the masks of ``params``.

    Checks the tree structure (``None`` for dense leaves), that every mask leaf is a bool array,
    and that its shape equals the param's shape.
    """
    _, p_leaves, p_def = leaves_with_paths(params)
    paths, m_leaves, m_def = leaves_with_paths(masks)
    if p_def != m_def:
        raise ValueError(
            f"{name} tree structure does not match params (use None for dense leaves): "
            f"{name} {m_def} vs params {p_def}"
        )
    for path, m, x in zip(paths, m_leaves, p_leaves, strict=True):
        if m is None:
            continue
        if x is None:
            raise ValueError(f"{name} leaf {path!r} is an array but the param is None")
        dtype = getattr(m, "dtype", None)
        if dtype is None or jnp.dtype(dtype) != jnp.bool_:
            raise ValueError(f"{name} leaf {path!r} must be a bool array, got dtype {dtype}")
        if tuple(m.shape) != tuple(np.shape(x)):
            raise ValueError(
                f"{name} leaf {path!r} has shape {tuple(m.shape)}, param has {tuple(np.shape(x))}"
            )


def check_like(params: PyTree, other: PyTree, *, name: str, ref: str = "params") -> None:
    """Raises ``ValueError`` unless ``other`` (called ``name``) has the structure, the ``None``
    leaves and the leaf shapes of ``params`` (called ``ref``)."""
    _, p_leaves, p_def = leaves_with_paths(params)
    paths, o_leaves, o_def = leaves_with_paths(other)
    if p_def != o_def:
        raise ValueError(f"{name} tree structure does not match {ref}: {o_def} vs {p_def}")
    leaf = "param" if ref == "params" else f"{ref}' leaf"
    for path, o, x in zip(paths, o_leaves, p_leaves, strict=True):
        if (o is None) != (x is None):
            raise ValueError(f"{name} leaf {path!r} is {o!r} where the {leaf} is {x!r}")
        if o is not None and np.shape(o) != np.shape(x):
            raise ValueError(
                f"{name} leaf {path!r} has shape {np.shape(o)}, {leaf} has {np.shape(x)}"
            )


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds a value now (a Python number or a non-traced array)."""
    return not isinstance(x, jax.core.Tracer)


def check_scalar(x: Any, *, name: str) -> None:
    """Raises ``ValueError`` (at trace time) unless ``x`` is a scalar: a Python number or a
    0-d array, traced or not."""
    if np.ndim(x) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(x)}: {x!r}")


def check_unit_interval(x: Any, *, name: str, closed_right: bool = True) -> None:
    """Raises ``ValueError`` if a concrete ``x`` lies outside [0, 1] (or [0, 1)).

    Traced values cannot be checked at trace time; callers clip them.
    """
    if not is_concrete(x):
        return
    v = np.asarray(x)
    hi_ok = (v <= 1) if closed_right else (v < 1)
    if not np.all((v >= 0) & hi_ok) or not np.all(np.isfinite(v)):
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {v.tolist()}")
