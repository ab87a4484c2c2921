"""Sparse inference: a trained sparse dense-layer kernel as a sparse matrix, and forward passes.

Two formats for a kernel ``W`` of shape ``(in, out)`` (Flax's layout, ``y = x @ W``):

* ``jax.experimental.sparse.BCOO`` (:func:`to_bcoo`): JAX's general sparse format, multiplied by
  ``x @ W`` through ``bcoo_dot_general``. Note that ``jax.experimental.sparse`` is
  **experimental**: its API and performance may change between JAX releases.
* :class:`EllKernel` (:func:`to_ell`): per output unit, the row indices and values of its active
  weights, padded to the largest count (ELLPACK, by column). ``x @ W`` is gathers of the inputs
  and multiply-adds over the padded width, written with ``jax.numpy`` and ``lax.scan``: for an
  unstructured mask the width is the fullest column's count; for N:M masks every column holds
  exactly ``N * in / M`` and there is no padding.

Whether either beats the dense matmul depends on the device, the batch and the sparsity: a dense
matmul runs at near peak FLOP rate, a sparse one is bound by gathers, so on a CPU sparse wins
only at high sparsity and small batch. ``benchmarks/sparse_inference.py`` measures it.

:func:`sparsify` converts every sparsified 2-D kernel of a params tree and :func:`mlp_apply`
runs an MLP given as ``(kernel, bias)`` pairs (from Linen params or an ``nnx.State``). With Flax
installed (it is not a dependency of ``ggr_jax``: these two import it when called),
:func:`linen_apply` runs any Flax Linen model with its ``nn.Dense`` layers sparse, and
:func:`nnx_sparsify` returns a Flax NNX model whose ``nnx.Linear`` layers are sparse.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse as jsparse

from ggr_jax._tree import PyTree, check_masks, leaves_with_paths

_GATHER_ROWS = 4  # ELL matmul: one big gather up to this many rows of x, a scan above


class EllKernel(NamedTuple):
    """A sparse ``(in, out)`` kernel by output column: ``W[indices[j, k], j] = values[j, k]``.

    Attributes:
      indices: ``int32[out, width]``, row (input) indices; padding points at row 0.
      values: ``dtype[out, width]``, the weights; padding holds 0.
    """

    indices: jax.Array
    values: jax.Array


def _check_kernel(kernel: Any, mask: Any) -> None:
    if np.ndim(kernel) != 2 or np.shape(mask) != np.shape(kernel):
        raise ValueError(
            f"a sparse kernel must be 2-D (in, out) with a mask of its shape; got "
            f"kernel {np.shape(kernel)} and mask {np.shape(mask)}"
        )


def to_bcoo(kernel: jax.Array, mask: jax.Array, *, nse: int | None = None) -> jsparse.BCOO:
    """The masked kernel as a ``jax.experimental.sparse.BCOO`` matrix (experimental API).

    Args:
      kernel: ``(in, out)`` array.
      mask: bool array of its shape.
      nse: number of stored entries; default: the mask's count (needs a concrete mask; give it
        under ``jit``).

    Returns:
      A BCOO matrix equal to ``where(mask, kernel, 0)``; ``x @ bcoo`` is ``x @ W``.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> w = jnp.array([[1., 2.], [3., 4.]])
      >>> m = gj.to_bcoo(w, jnp.array([[True, False], [False, True]]))
      >>> m.nse, (jnp.ones((1, 2)) @ m)
      (2, Array([[1., 4.]], dtype=float32))
    """
    _check_kernel(kernel, mask)
    nse = int(np.count_nonzero(np.asarray(mask))) if nse is None else nse
    dense = jnp.where(mask, kernel, jnp.zeros((), kernel.dtype))
    return jsparse.BCOO.fromdense(dense, nse=nse)


def to_ell(kernel: jax.Array, mask: jax.Array, *, width: int | None = None) -> EllKernel:
    """The masked kernel in ELL format by output column (see :class:`EllKernel`).

    Jittable with a given ``width``: a column's active rows are placed by a cumulative count and
    one scatter, no sort. Columns with more than ``width`` active entries would lose the extra
    ones, so ``width`` must be at least the fullest column's count.

    Args:
      kernel: ``(in, out)`` array.
      mask: bool array of its shape.
      width: entries stored per column; default: the fullest column's count (concrete mask).

    Returns:
      An :class:`EllKernel`.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> w = jnp.array([[1., 2.], [3., 4.], [5., 6.]])
      >>> e = gj.to_ell(w, jnp.array([[True, False], [False, False], [True, True]]))
      >>> e.indices, e.values
      (Array([[0, 2],
             [2, 0]], dtype=int32), Array([[1., 5.],
             [6., 0.]], dtype=float32))
    """
    _check_kernel(kernel, mask)
    if width is None:
        width = max(int(np.asarray(mask).sum(axis=0).max(initial=0)), 1)
    n_in, n_out = kernel.shape
    slot = jnp.cumsum(mask, axis=0, dtype=jnp.int32) - 1  # position in the column, per row
    slot = jnp.where(mask, slot, width)  # inactive entries go out of bounds and are dropped
    rows = jnp.broadcast_to(jnp.arange(n_in, dtype=jnp.int32)[:, None], (n_in, n_out))
    cols = jnp.broadcast_to(jnp.arange(n_out, dtype=jnp.int32)[None, :], (n_in, n_out))
    indices = jnp.zeros((n_out, width), jnp.int32).at[cols, slot].set(rows, mode="drop")
    values = jnp.zeros((n_out, width), kernel.dtype).at[cols, slot].set(kernel, mode="drop")
    return EllKernel(indices, values)


def sparse_matmul(x: jax.Array, kernel: Any) -> jax.Array:
    """``x @ W`` for ``x`` of shape ``(..., in)`` and ``W`` dense, :class:`EllKernel` or BCOO.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> w = jnp.array([[1., 0.], [0., 2.]])
      >>> gj.sparse_matmul(jnp.array([[3., 4.]]), gj.to_ell(w, w != 0))
      Array([[3., 8.]], dtype=float32)
    """
    if isinstance(kernel, EllKernel):
        return _ell_matmul(x, kernel)
    return x @ kernel


def _ell_matmul(x: jax.Array, kernel: EllKernel) -> jax.Array:
    """``x @ W`` for an ELL kernel: one gather for a few rows of ``x``, a scan for many.

    For a few rows (at most ``_GATHER_ROWS``) one gather of every input each output needs and a
    multiply-add is fastest. For more rows that gather would write ``rows * out * width`` floats;
    instead a scan over the width adds one gathered row of ``x.T`` per output and step (rows of
    ``x.T`` are contiguous over the batch). Measured on a loaded 2-core CPU, 4096 x 4096 at
    98 %: batch 1, gather 0.7 ms vs scan 1.1 ms; batch 128, scan 9-31 ms vs gather 0.7-0.9 s.
    """
    values = kernel.values.astype(x.dtype)
    lead, n_in = x.shape[:-1], x.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    if rows <= _GATHER_ROWS:
        gathered = jnp.take(x, kernel.indices, axis=-1)  # (..., out, width)
        return jnp.einsum("...ok,ok->...o", gathered, values)
    xt = x.reshape(rows, n_in).T  # (in, rows)

    def step(acc, column):
        index, value = column
        return acc + jnp.take(xt, index, axis=0) * value[:, None], None

    acc = jnp.zeros((kernel.indices.shape[0], rows), x.dtype)
    acc = lax.scan(step, acc, (kernel.indices.T, values.T), unroll=4)[0]
    return acc.T.reshape(*lead, kernel.indices.shape[0])


def sparsify(params: PyTree, masks: PyTree, *, format: Literal["ell", "bcoo"] = "ell") -> PyTree:
    """Replaces every sparsified 2-D kernel of ``params`` by its sparse form (host-side).

    Leaves whose mask is ``None`` and sparsified leaves that are not 2-D (conv kernels) are kept
    as they are.

    Args:
      params: pytree of arrays.
      masks: bool masks parallel to params.
      format: ``"ell"`` (:func:`to_ell`) or ``"bcoo"`` (:func:`to_bcoo`).

    Returns:
      The params tree with :class:`EllKernel` / ``BCOO`` leaves in place of sparse kernels.
    """
    check_masks(params, masks)
    convert = _converter(format)
    paths, m_leaves, treedef = leaves_with_paths(masks)
    p_leaves = leaves_with_paths(params)[1]
    out = [
        p if m is None or np.ndim(p) != 2 else convert(p, m)
        for m, p in zip(m_leaves, p_leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _converter(format: str) -> Callable[[jax.Array, jax.Array], Any]:
    if format not in ("ell", "bcoo"):
        raise ValueError(f"format must be 'ell' or 'bcoo', got {format!r}")
    return to_ell if format == "ell" else to_bcoo


def _add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
    if bias is None:
        return y
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,)).astype(y.dtype)


def _is_sparse(x: Any) -> bool:
    return isinstance(x, (EllKernel, jsparse.BCOO))


def linen_apply(module: Any, params: PyTree, *args: Any, **kwargs: Any) -> Any:
    """``module.apply({"params": params}, ...)`` with its ``nn.Dense`` layers sparse (needs Flax).

    ``params`` comes from :func:`sparsify`: every ``nn.Dense`` whose kernel is an
    :class:`EllKernel` or BCOO computes ``sparse_matmul(x, kernel) + bias`` instead of its dense
    matmul (through ``flax.linen.intercept_methods``); everything else runs unchanged.

    Args:
      module: a ``flax.linen.Module``.
      params: its params, sparse kernels in place (from :func:`sparsify`).
      *args: inputs of ``module.apply``.
      **kwargs: keyword arguments of ``module.apply``.

    Returns:
      What ``module.apply`` returns.

    Example (Flax is not a dependency of ``ggr_jax``, so this runs in docs/sparse.md's tests
    rather than as a doctest)::

      model = nn.Sequential([nn.Dense(300), nn.relu, nn.Dense(10)])
      sparse_params = gj.sparsify(params, masks)  # params zero outside masks
      y = jax.jit(lambda p, x: gj.linen_apply(model, p, x))(sparse_params, x)
    """
    import flax.linen as nn

    def interceptor(next_fun, call_args, call_kwargs, context):
        module = context.module
        if isinstance(module, nn.Dense) and context.method_name == "__call__":
            kernel = module.get_variable("params", "kernel")
            if _is_sparse(kernel):
                bias = module.get_variable("params", "bias") if module.use_bias else None
                return _add_bias(sparse_matmul(call_args[0], kernel), bias)
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        return module.apply({"params": params}, *args, **kwargs)


@functools.cache
def sparse_linear_class() -> type:
    """The NNX module that :func:`nnx_sparsify` puts in place of an ``nnx.Linear`` (needs Flax).

    ``SparseLinear(kernel, bias)(x) == sparse_matmul(x, kernel) + bias``, the kernel an
    :class:`EllKernel` or BCOO held in an ``nnx.Variable``. Built on first use, so that
    ``ggr_jax`` imports without Flax.
    """
    from flax import nnx

    class SparseLinear(nnx.Module):
        def __init__(self, kernel: Any, bias: jax.Array | None):
            self.kernel = nnx.Variable(kernel)
            self.bias = None if bias is None else nnx.Variable(bias)

        def __call__(self, x: jax.Array) -> jax.Array:
            bias = None if self.bias is None else self.bias.get_value()
            return _add_bias(sparse_matmul(x, self.kernel.get_value()), bias)

    return SparseLinear


def nnx_sparsify(model: Any, masks: PyTree, *, format: Literal["ell", "bcoo"] = "ell") -> Any:
    """A copy of an NNX model whose masked ``nnx.Linear`` layers are sparse (needs Flax).

    Args:
      model: an ``nnx.Module``.
      masks: masks as for its ``nnx.state(model, nnx.Param)`` (``nnx.State`` or the pure dict of
        it); ``None`` for dense kernels.
      format: ``"ell"`` or ``"bcoo"``.

    Returns:
      A new model (the input is not modified) whose masked ``nnx.Linear`` layers are
      :func:`sparse_linear_class` modules; call it as the original.

    Example (runs in docs/sparse.md's tests; Flax is not a dependency of ``ggr_jax``)::

      sparse_net = gj.nnx_sparsify(net, masks)  # net's params zero outside masks
      y = sparse_net(x)
    """
    from flax import nnx

    model = nnx.clone(model)
    convert = _converter(format)
    linears = [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear)]
    for path, linear in linears:
        node = masks
        for key in path:
            node = node[key]
        mask = node["kernel"]
        mask = mask.get_value() if isinstance(mask, nnx.Variable) else mask
        if mask is None:
            continue
        parent = model
        for key in path[:-1]:
            parent = parent[key] if isinstance(key, int) else getattr(parent, str(key))
        bias = None if linear.bias is None else linear.bias.get_value()
        layer = sparse_linear_class()(convert(linear.kernel.get_value(), mask), bias)
        if isinstance(path[-1], int):
            parent[path[-1]] = layer
        else:
            setattr(parent, str(path[-1]), layer)
    return model


def mlp_apply(
    layers: list[tuple[Any, jax.Array | None]], x: jax.Array, *, activation: Any = jax.nn.relu
) -> jax.Array:
    """An MLP forward pass over ``(kernel, bias)`` pairs; kernels dense, ELL or BCOO.

    The activation follows every layer but the last.

    Example:
      >>> import jax.numpy as jnp, ggr_jax as gj
      >>> w = jnp.array([[1., -1.], [0., 2.]])
      >>> gj.mlp_apply([(gj.to_ell(w, w != 0), jnp.zeros(2)), (jnp.ones((2, 1)), None)],
      ...              jnp.array([[1., 1.]]))
      Array([[2.]], dtype=float32)
    """
    for i, (kernel, bias) in enumerate(layers):
        x = _add_bias(sparse_matmul(x, kernel), bias)
        if i < len(layers) - 1:
            x = activation(x)
    return x
