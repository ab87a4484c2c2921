"""Compressed export: bit-exact round trips for every float dtype, Linen and NNX params, orbax
checkpoints, and the byte count of the export."""

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings

import ggr_jax as gj

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int8, jnp.int32, jnp.uint8]


def bits(x):
    """The raw bits of an array (NaN payloads and signed zeros included)."""
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def assert_bit_equal(a, b):
    la = jax.tree.leaves(a, is_leaf=lambda x: x is None)
    lb = jax.tree.leaves(b, is_leaf=lambda x: x is None)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        if x is None:
            assert y is None
            continue
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
        np.testing.assert_array_equal(bits(x), bits(y))


def random_bits_params(dtype, key):
    """Params whose active entries are arbitrary bit patterns (NaNs, -0.0, infs included)."""
    itemsize = np.dtype(dtype).itemsize
    shapes = {"conv": (3, 3, 2, 4), "dense": (24, 16), "bias": (16,)}
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        raw = jax.random.bits(jax.random.fold_in(key, i), shape, jnp.dtype(f"uint{8 * itemsize}"))
        out[name] = jax.lax.bitcast_convert_type(raw, jnp.dtype(dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact(dtype, getkey):
    params = random_bits_params(dtype, getkey())
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.8), getkey())
    params = gj.apply_masks(params, masks)
    compressed = gj.compress(params, masks)
    assert compressed["bias"] is params["bias"]
    assert compressed["dense"]["values"].dtype == np.dtype(dtype)
    assert compressed["dense"]["values"].shape == (int(masks["dense"].sum()),)
    restored, restored_masks = gj.decompress(compressed, with_masks=True)
    assert_bit_equal(restored, params)
    assert_bit_equal(restored_masks, masks)


def test_float64_round_trip_with_x64(getkey):
    with jax.enable_x64(True):
        params = random_bits_params(jnp.float64, getkey())
        masks = gj.random_masks(params, gj.uniform_densities(params, 0.5), getkey())
        params = gj.apply_masks(params, masks)
        assert_bit_equal(gj.decompress(gj.compress(params, masks)), params)


def test_hand_computed_leaf():
    w = jnp.array([[0.0, -0.0, 1.5], [0.0, 0.0, -2.0], [7.0, 0.0, 0.0]])
    m = jnp.array([[False, True, True], [False, False, True], [True, False, False]])
    c = gj.compress({"w": w}, {"w": m})["w"]
    # bits, row-major and big-endian within a byte: 011 001 100 -> 0b01100110, 0b0(0000000)
    np.testing.assert_array_equal(c["mask_bits"], np.array([0b01100110, 0], np.uint8))
    values = np.array([-0.0, 1.5, -2.0, 7.0], np.float32)
    np.testing.assert_array_equal(bits(c["values"]), bits(values))
    np.testing.assert_array_equal(c["shape"], np.array([3, 3], np.int32))
    assert_bit_equal(gj.decompress({"w": c}), {"w": w})  # -0.0 inside the mask survives


def test_errors_name_the_leaf():
    w = jnp.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"leaf 'w' has 1 nonzero entries outside its mask"):
        gj.compress({"w": w}, {"w": jnp.array([True, False])})
    c = gj.compress({"w": w}, {"w": jnp.array([True, True])})
    c["w"]["values"] = c["w"]["values"][:1]
    with pytest.raises(ValueError, match=r"leaf 'w': the mask has 2 active entries but 1 values"):
        gj.decompress(c)
    with pytest.raises(ValueError, match="masks tree structure does not match"):
        gj.compress({"w": w}, {"v": None})


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(5)(x)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(12, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 5, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


def sparse(params, key, sparsity=0.9):
    masks = gj.random_masks(params, gj.erk_densities(params, sparsity), key)
    return gj.apply_masks(params, masks), masks


def save_and_restore(tree, path):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, tree)
    checkpointer.wait_until_finished()
    return checkpointer.restore(path)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_linen_checkpoint_round_trip(dtype, tmp_path, getkey):
    model = LinenMLP()
    x = jax.random.normal(getkey(), (4, 12))
    params = model.init(getkey(), x)["params"]
    params, masks = sparse(jax.tree.map(lambda p: p.astype(dtype), params), getkey())
    restored = save_and_restore(gj.compress(params, masks), tmp_path / "ckpt")
    new_params, new_masks = gj.decompress(restored, with_masks=True)
    assert_bit_equal(new_params, params)
    assert_bit_equal(new_masks, masks)
    with jax.numpy_dtype_promotion("standard"):  # Linen computes in the promoted dtype
        np.testing.assert_array_equal(
            bits(model.apply({"params": new_params}, x)), bits(model.apply({"params": params}, x))
        )


def test_nnx_round_trip_and_checkpoint(tmp_path, getkey):
    model = NNXMLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params, masks = sparse(params, getkey())
    x = jax.random.normal(getkey(), (4, 12))
    # in memory, nnx.State in and out
    assert_bit_equal(gj.decompress(gj.compress(params, masks)), params)
    # through orbax, as the pure dicts NNX checkpoints
    pure_params, pure_masks = nnx.to_pure_dict(params), nnx.to_pure_dict(masks)
    restored = gj.decompress(
        save_and_restore(gj.compress(pure_params, pure_masks), tmp_path / "ckpt")
    )
    assert_bit_equal(restored, pure_params)
    nnx.replace_by_pure_dict(params, restored)
    out = nnx.merge(graphdef, params)(x)
    np.testing.assert_array_equal(bits(out), bits(nnx.merge(graphdef, params)(x)))


def test_model_bytes_is_the_size_of_the_export(getkey):
    params = {"k": jnp.ones((37, 11), jnp.bfloat16), "c": jnp.ones((3, 3, 4, 5)), "b": jnp.ones(7)}
    params, masks = sparse(params, getkey(), 0.7)
    compressed = gj.compress(params, masks)
    assert gj.model_bytes(params, masks) == sum(x.nbytes for x in jax.tree.leaves(compressed))
    assert gj.model_bytes(params) == 37 * 11 * 2 + 180 * 4 + 7 * 4


def test_lenet300_98_percent_shrinks_about_19x(getkey):
    sizes = [(784, 300), (300, 100), (100, 10)]
    params = {
        f"Dense_{i}": {"kernel": jnp.ones(s), "bias": jnp.ones(s[1])} for i, s in enumerate(sizes)
    }
    params, masks = sparse(params, getkey(), 0.98)
    dense, small = gj.model_bytes(params), gj.model_bytes(params, masks)
    n = 784 * 300 + 300 * 100 + 100 * 10  # 266,200 kernel entries; 5,324 of them kept
    mask_bytes = sum(-(-a * b // 8) for a, b in sizes)
    expected = mask_bytes + 5324 * 4 + 3 * 8 + 410 * 4
    assert dense == (n + 410) * 4 == 1_066_440
    assert small == expected == 56_235  # bits 33,275 + values 21,296 + shapes 24 + biases 1,640
    assert 18.9 < dense / small < 19.0


@given(
    shape=st.lists(st.integers(0, 9), min_size=1, max_size=3).map(tuple),
    dtype=st.sampled_from(["bfloat16", "float16", "float32", "int8", "uint8"]),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_round_trip_any_shape_dtype_density(shape, dtype, density, seed):
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    raw = rng.integers(0, 2 ** (8 * itemsize), size=shape, dtype=np.uint64)
    mask = rng.random(shape) < density
    value = np.where(mask, raw, 0).astype(f"uint{8 * itemsize}").view(jnp.dtype(dtype))
    params, masks = {"w": jnp.asarray(value), "b": jnp.ones(2)}, {"w": jnp.asarray(mask), "b": None}
    compressed = gj.compress(params, masks)
    assert gj.model_bytes(params, masks) == sum(x.nbytes for x in jax.tree.leaves(compressed))
    restored, restored_masks = gj.decompress(compressed, with_masks=True)
    assert_bit_equal(restored, params)
    assert_bit_equal(restored_masks, masks)
