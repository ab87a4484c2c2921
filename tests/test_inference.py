"""Sparse inference: ELL and BCOO kernels equal the masked dense kernel, and Linen / NNX MLP forward
passes with them equal the dense ones."""

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ggr_jax as gj

pytestmark = pytest.mark.standard_dtype_promotion  # Flax layers promote param and input dtypes


def masked_kernel(key, shape=(40, 24), density=0.1):
    kw, km = jax.random.split(key)
    w = jax.random.normal(kw, shape)
    mask = gj.random_masks({"w": w}, {"w": density}, km)["w"]
    return jnp.where(mask, w, 0.0), mask


def ell_dense(e, n_in):
    """The dense matrix of an EllKernel (padding adds 0 at row 0)."""
    out = np.zeros((n_in, e.indices.shape[0]), np.float32)
    for j in range(e.indices.shape[0]):
        np.add.at(out[:, j], np.asarray(e.indices[j]), np.asarray(e.values[j]))
    return out


@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5, 1.0])
def test_formats_equal_the_masked_kernel(density, getkey):
    w, mask = masked_kernel(getkey(), density=density)
    e = gj.to_ell(w, mask)
    assert e.indices.shape[1] == max(int(mask.sum(axis=0).max()), 1)
    np.testing.assert_array_equal(ell_dense(e, 40), w)
    b = gj.to_bcoo(w, mask)
    assert b.nse == int(mask.sum())
    np.testing.assert_array_equal(b.todense(), w)


def test_to_ell_jitted_with_width_equals_host(getkey):
    w, mask = masked_kernel(getkey())
    width = int(mask.sum(axis=0).max())
    jitted = jax.jit(gj.to_ell, static_argnames="width")(w, mask, width=width)
    host = gj.to_ell(w, mask)
    np.testing.assert_array_equal(jitted.indices, host.indices)
    np.testing.assert_array_equal(jitted.values, host.values)


def test_nm_kernel_has_no_padding(getkey):
    w = jax.random.normal(getkey(), (32, 8))
    mask = gj.nm_random_masks({"w": w}, n=2, m=4, key=getkey())["w"]
    e = gj.to_ell(jnp.where(mask, w, 0.0), mask)
    assert e.indices.shape == (8, 16)  # N * in / M per output unit, exactly
    np.testing.assert_array_equal(ell_dense(e, 32), jnp.where(mask, w, 0.0))


@pytest.mark.parametrize("batch", [(1,), (7,), (2, 3)])
@pytest.mark.parametrize("fmt", ["ell", "bcoo"])
def test_sparse_matmul_equals_dense(fmt, batch, getkey):
    w, mask = masked_kernel(getkey())
    kernel = gj.to_ell(w, mask) if fmt == "ell" else gj.to_bcoo(w, mask)
    x = jax.random.normal(getkey(), (*batch, 40))
    got = jax.jit(gj.sparse_matmul)(x, kernel)
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def sparse_linen(key, sparsity=0.9):
    model = LinenMLP()
    params = model.init(key, jnp.ones((1, 48)))["params"]
    masks = gj.random_masks(params, gj.uniform_densities(params, sparsity), key)
    return model, gj.apply_masks(params, masks), masks


@pytest.mark.parametrize("fmt", ["ell", "bcoo"])
def test_linen_forward(fmt, getkey):
    model, params, masks = sparse_linen(getkey())
    sparse_params = gj.sparsify(params, masks, format=fmt)
    assert isinstance(
        sparse_params["Dense_0"]["kernel"],
        gj.EllKernel if fmt == "ell" else jax.experimental.sparse.BCOO,
    )
    x = jax.random.normal(getkey(), (5, 48))
    forward = jax.jit(lambda p, x: gj.linen_apply(model, p, x))
    np.testing.assert_allclose(
        forward(sparse_params, x), model.apply({"params": params}, x), rtol=1e-5, atol=1e-5
    )
    layers = [
        (sparse_params[f"Dense_{i}"]["kernel"], sparse_params[f"Dense_{i}"]["bias"])
        for i in range(3)
    ]
    np.testing.assert_allclose(
        gj.mlp_apply(layers, x), model.apply({"params": params}, x), rtol=1e-5, atol=1e-5
    )


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(48, 64, rngs=rngs), nnx.Linear(64, 10, rngs=rngs)])
        self.head = nnx.Linear(10, 3, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


@pytest.mark.parametrize("fmt", ["ell", "bcoo"])
def test_nnx_forward(fmt, getkey):
    model = NNXMLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.9), getkey())
    nnx.update(model, gj.apply_masks(params, masks))
    x = jax.random.normal(getkey(), (4, 48))
    sparse_model = gj.nnx_sparsify(model, masks, format=fmt)
    assert isinstance(sparse_model.layers[0], gj.sparse_linear_class())
    assert isinstance(sparse_model.head, gj.sparse_linear_class())
    assert isinstance(model.head, nnx.Linear)  # the input model is untouched
    want = model(x)
    np.testing.assert_allclose(sparse_model(x), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(sparse_model, x), want, rtol=1e-5, atol=1e-5
    )
    pure = gj.nnx_sparsify(model, nnx.to_pure_dict(masks), format=fmt)  # pure-dict masks too
    np.testing.assert_allclose(pure(x), want, rtol=1e-5, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match=r"2-D \(in, out\).*kernel \(2, 2, 2\)"):
        gj.to_ell(jnp.ones((2, 2, 2)), jnp.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="format must be 'ell' or 'bcoo', got 'csr'"):
        gj.sparsify({"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 2), bool)}, format="csr")


def test_sparsify_keeps_conv_kernels_and_dense_leaves(getkey):
    params = {"conv": jnp.ones((3, 3, 2, 4)), "dense": jnp.ones((8, 4)), "bias": jnp.ones(4)}
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.5), getkey())
    out = gj.sparsify(gj.apply_masks(params, masks), masks)
    assert isinstance(out["dense"], gj.EllKernel)
    assert out["conv"].shape == (3, 3, 2, 4) and out["bias"] is params["bias"]


def test_ggr_jax_imports_and_runs_sparse_inference_without_flax():
    code = (
        "import sys\n"
        "for name in ('flax', 'orbax', 'orbax.checkpoint'): sys.modules[name] = None\n"
        "import jax.numpy as jnp, ggr_jax as gj\n"
        "w = jnp.array([[1., 0.], [0., 2.]])\n"
        "e = gj.sparsify({'w': w}, {'w': w != 0})['w']\n"
        "print(gj.mlp_apply([(e, None)], jnp.ones((1, 2))).tolist())\n"
        "print(gj.decompress(gj.compress({'w': w}, {'w': w != 0}))['w'].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[[1.0, 2.0]]", "[[1.0, 0.0], [0.0, 2.0]]"]
