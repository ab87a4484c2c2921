"""End to end with real model libraries: Flax Linen, Flax NNX and Equinox.

Each test: masks from the model's params, a masked optax chain trained for a few jitted steps,
one GGR redistribute, reset_optimizer_state, and more training on the new masks.
"""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import ggr_jax as gj

pytestmark = pytest.mark.standard_dtype_promotion  # optax's adam is not strict-clean


def is_none(x):
    return x is None


def arrays(tree):
    """The array leaves of a tree, None leaves dropped."""
    return [x for x in jax.tree.leaves(tree) if x is not None]


def check_zero_outside(params, masks):
    for p, m in zip(
        jax.tree.leaves(params, is_leaf=is_none),
        jax.tree.leaves(masks, is_leaf=is_none),
        strict=True,
    ):
        if m is not None:
            assert p.shape == m.shape
            assert not bool(jnp.where(m, 0, p).any())


def end_to_end(params, loss, x, y, *, expect_sparse, min_active=None):
    """Runs the whole cycle on ``params`` and returns the final params and masks."""
    spec = gj.sparsifiable(params)
    assert sorted(p for p, s in zip(*leaf_paths(spec), strict=True) if s) == sorted(expect_sparse)
    densities = gj.erk_densities(params, 0.7, spec=spec)
    masks = gj.random_masks(params, densities, jax.random.key(0))
    total = sum(int(m.sum()) for m in arrays(masks))
    sparse_size = sum(m.size for m in arrays(masks))
    assert total == round(0.3 * sparse_size)
    params = gj.apply_masks(params, masks)

    tx = optax.chain(gj.mask_gradients(), optax.adam(1e-2), gj.mask_updates())
    state = tx.init(params)

    @jax.jit
    def train_step(params, state, masks):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params, masks=masks)
        return optax.apply_updates(params, updates), state, value

    losses = []
    for _ in range(3):
        params, state, value = train_step(params, state, masks)
        losses.append(float(value))
        check_zero_outside(params, masks)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    grads = jax.jit(jax.grad(loss))(params, x, y)  # dense: inactive weights have gradients too
    redistribute = jax.jit(gj.redistribute, static_argnames=("method", "min_active"))
    new_params, new_masks, info = redistribute(
        params,
        masks,
        grads,
        jax.random.key(1),
        method=gj.ggr(),
        fraction=0.3,
        min_active=min_active,
    )
    assert not bool(info["skipped"])
    assert sum(int(m.sum()) for m in arrays(new_masks)) == total
    assert jax.tree.structure(new_masks, is_leaf=is_none) == jax.tree.structure(
        masks, is_leaf=is_none
    )
    assert sum(int(v) for v in arrays(info["grown"])) > 0
    changed = [bool((a != b).any()) for a, b in zip(arrays(masks), arrays(new_masks), strict=True)]
    assert any(changed)
    check_zero_outside(new_params, new_masks)

    new_state = gj.reset_optimizer_state(tx, state, masks, new_masks)
    mu = optax.tree_utils.tree_get(new_state, "mu")
    for m_old, m_new, moment in zip(
        jax.tree.leaves(masks, is_leaf=is_none),
        jax.tree.leaves(new_masks, is_leaf=is_none),
        jax.tree.leaves(mu, is_leaf=is_none),
        strict=True,
    ):
        if m_old is not None:
            assert not bool(jnp.where(m_old & m_new, 0, moment).any())

    params, state, masks = new_params, new_state, new_masks
    for _ in range(2):
        params, state, value = train_step(params, state, masks)
        check_zero_outside(params, masks)
        assert np.isfinite(float(value))
    return params, masks


def leaf_paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    paths = [
        "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in p)
        for p, _ in flat
    ]
    return paths, [v for _, v in flat]


def data(key, in_shape, n_out=3, batch=16):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (batch, *in_shape)), jax.random.randint(ky, (batch,), 0, n_out)


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.LayerNorm()(x.reshape((x.shape[0], -1)))
        return nn.Dense(3)(x)


def test_flax_linen():
    model = LinenCNN()
    x, y = data(jax.random.key(2), (6, 6, 2))
    params = model.init(jax.random.key(3), x)["params"]

    def loss(params, x, y):
        return xent(model.apply({"params": params}, x), y)

    params, masks = end_to_end(
        params, loss, x, y, expect_sparse=["Conv_0/kernel", "Dense_0/kernel"]
    )
    assert masks["LayerNorm_0"]["scale"] is None and masks["Dense_0"]["bias"] is None
    assert model.apply({"params": params}, x).shape == (16, 3)


class NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(10, 16, rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.norm(jax.nn.relu(self.l1(x))))


def test_flax_nnx():
    model = NNXMLP(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x, y = data(jax.random.key(2), (10,))

    def loss(params, x, y):
        return xent(nnx.merge(graphdef, params)(x), y)

    params, masks = end_to_end(
        params, loss, x, y, expect_sparse=["l1/kernel/value", "l2/kernel/value"]
    )
    nnx.update(model, params)
    assert not bool(
        jnp.where(masks["l1"]["kernel"].get_value(), 0, model.l1.kernel.get_value()).any()
    )
    assert model(x).shape == (16, 3)


def test_equinox():
    model = eqx.nn.MLP(10, 3, 16, depth=1, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x, y = data(jax.random.key(2), (10,))

    def loss(params, x, y):
        return xent(jax.vmap(eqx.combine(params, static))(x), y)

    # Equinox weights are (out, in): one weight per output unit is shape[0], not the default
    params, masks = end_to_end(
        params,
        loss,
        x,
        y,
        min_active=lambda path, shape: shape[0],
        expect_sparse=["layers/0/weight", "layers/1/weight"],
    )
    model = eqx.combine(params, static)
    assert not bool(jnp.where(masks.layers[0].weight, 0, model.layers[0].weight).any())
    assert masks.layers[0].bias is None
    assert jax.vmap(model)(x).shape == (16, 3)
    # leaf paths in messages read like attribute paths
    bad = eqx.tree_at(lambda m: m.layers[0].weight, masks, masks.layers[0].weight.T)
    with pytest.raises(ValueError, match=r"masks leaf 'layers/0/weight' has shape \(10, 16\)"):
        gj.apply_masks(params, bad)
