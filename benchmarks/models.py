"""The benchmarked models, as Flax Linen modules, and their param pytrees.

* :class:`MLP`: the 1M (784-1024-256-10) and 10M (784-2048-2048-2048-10) tables.
* :class:`ResNet50`, :class:`ViT` and :class:`GPT2`: real shapes (ResNet-50 ~25.5M params with 53
  HWIO conv kernels and one dense, ViT-B/16 ~86M, GPT-2 small ~124M). Each takes its sizes as
  fields, so that the quick mode runs the same code on tiny versions.
* :func:`square_layers`: ``n`` square layers of ~1M params in total, for compile time against
  the number of layers.

Params are drawn leaf by leaf from the shapes ``model.init`` would give (``jax.eval_shape``), so
building GPT-2's 124M params needs no compiled init.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

MLP_SIZES = {"1M": (784, 1024, 256, 10), "10M": (784, 2048, 2048, 2048, 10)}
QUICK_MLP_SIZES = {"1M": (16, 32, 8), "10M": (16, 64, 64, 8)}


class MLP(nn.Module):
    sizes: Sequence[int]  # input, hidden..., output

    @nn.compact
    def __call__(self, x):
        for i, n in enumerate(self.sizes[1:]):
            x = nn.Dense(n)(x)
            if i < len(self.sizes) - 2:
                x = nn.relu(x)
        return x


class _Bottleneck(nn.Module):
    filters: int
    strides: int

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train)  # noqa: E731
        s = (self.strides, self.strides)
        y = nn.relu(norm()(nn.Conv(self.filters, (1, 1), use_bias=False)(x)))
        y = nn.relu(norm()(nn.Conv(self.filters, (3, 3), s, use_bias=False)(y)))
        y = norm()(nn.Conv(4 * self.filters, (1, 1), use_bias=False)(y))
        if x.shape[-1] != y.shape[-1] or self.strides != 1:
            x = norm()(nn.Conv(4 * self.filters, (1, 1), s, use_bias=False)(x))
        return nn.relu(x + y)


class ResNet50(nn.Module):
    stages: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(self.width, (7, 7), (2, 2), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        for i, blocks in enumerate(self.stages):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = _Bottleneck(self.width * 2**i, strides)(x, train)
        return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


class _Block(nn.Module):
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x))
        x = x + y
        y = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp)(nn.LayerNorm()(x))))
        return x + y


class ViT(nn.Module):
    depth: int = 12
    dim: int = 768
    heads: int = 12
    mlp: int = 3072
    patch: int = 16
    classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = True):
        del train
        x = nn.Conv(self.dim, (self.patch, self.patch), (self.patch, self.patch))(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
        for _ in range(self.depth):
            x = _Block(self.heads, self.mlp)(x)
        return nn.Dense(self.classes)(nn.LayerNorm()(x[:, 0]))


class _GPTBlock(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(nn.Dense(3 * d, name="c_attn")(nn.LayerNorm()(x)), 3, axis=-1)
        split = lambda a: a.reshape(b, t, self.heads, d // self.heads)  # noqa: E731
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        y = nn.dot_product_attention(split(q), split(k), split(v), mask=causal)
        x = x + nn.Dense(d, name="c_proj")(y.reshape(b, t, d))
        y = nn.Dense(d, name="mlp_proj")(nn.gelu(nn.Dense(4 * d, name="c_fc")(nn.LayerNorm()(x))))
        return x + y


class GPT2(nn.Module):
    layers: int = 12
    dim: int = 768
    heads: int = 12
    vocab: int = 50257
    context: int = 1024

    @nn.compact
    def __call__(self, tokens, train: bool = True):
        del train
        wte = nn.Embed(self.vocab, self.dim, name="wte")
        pos = nn.Embed(self.context, self.dim, name="wpe")(jnp.arange(tokens.shape[1]))
        x = wte(tokens) + pos[None]
        for _ in range(self.layers):
            x = _GPTBlock(self.heads)(x)
        return wte.attend(nn.LayerNorm()(x))  # tied head


class Shape(NamedTuple):
    """A real-shape model: the module, a small input batch, labels and the sparsity rule."""

    model: nn.Module
    x: jax.Array
    y: jax.Array
    exclude: str | None  # regex of leaf paths left dense (besides vectors)


def real_shape(name: str, *, quick: bool, embeddings: str = "dense") -> Shape:
    """ResNet-50 (batch 2, 224x224), ViT-B/16 (batch 1) or GPT-2 small (batch 1, 128 tokens)."""
    key = jax.random.key(0)
    if name == "resnet50":
        model = ResNet50(stages=(1,), width=4, classes=10) if quick else ResNet50()
        side, batch, classes = (32, 2, 10) if quick else (224, 2, 1000)
        x = jax.random.normal(key, (batch, side, side, 3))
        return Shape(model, x, jnp.arange(batch) % classes, None)
    if name == "vit_b16":
        model = ViT(depth=1, dim=16, heads=2, mlp=32, patch=8, classes=10) if quick else ViT()
        side = 32 if quick else 224
        return Shape(
            model, jax.random.normal(key, (1, side, side, 3)), jnp.zeros(1, int), "cls|pos"
        )
    if name == "gpt2":
        model = GPT2(layers=1, dim=16, heads=2, vocab=64, context=32) if quick else GPT2()
        tokens = jax.random.randint(key, (1, 16 if quick else 128), 0, model.vocab)
        exclude = "wte|wpe" if embeddings == "dense" else None
        return Shape(model, tokens, jnp.roll(tokens, -1, axis=1), exclude)
    raise ValueError(f"unknown model {name!r}")


def init_variables(model: nn.Module, x: jax.Array, key: jax.Array) -> dict[str, Any]:
    """Variables of ``model`` with the shapes of ``model.init``: normal kernels, unit scales."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    leaves = []
    for i, (path, s) in enumerate(flat):
        name = jax.tree_util.keystr(path)
        if s.ndim <= 1:
            fill = 1.0 if ("scale" in name or "var" in name) else 0.0
            leaves.append(jnp.full(s.shape, fill, s.dtype))
        else:
            std = float(np.prod(s.shape[:-1])) ** -0.5
            leaves.append(jax.random.normal(jax.random.fold_in(key, i), s.shape, s.dtype) * std)
    return jax.tree_util.tree_unflatten(tree, leaves)


def loss_fn(model: nn.Module) -> Callable:
    """Softmax cross-entropy of ``model``; batch statistics (ResNet) are updated and returned."""

    def loss(params, state, x, y):
        out, new_state = model.apply({"params": params, **state}, x, mutable=list(state))
        loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, new_state

    return loss


def square_layers(n_layers: int, total: int, sparsity: float, seed: int = 0):
    """Params, masks, gradients of ``n_layers`` square layers (and biases), ``total`` params."""
    side = max(int(np.sqrt(total / n_layers)), 2)
    keys = jax.random.split(jax.random.key(seed), 3 * n_layers)
    params, masks, grads = {}, {}, {}
    for i in range(n_layers):
        name = f"Dense_{i}"
        mask = jax.random.uniform(keys[n_layers + i], (side, side)) < (1 - sparsity)
        w = jax.random.normal(keys[i], (side, side)) * side**-0.5
        params[name] = {"kernel": jnp.where(mask, w, 0.0), "bias": jnp.zeros((side,))}
        masks[name] = {"kernel": mask, "bias": None}
        g = jax.random.normal(keys[2 * n_layers + i], (side, side)) * 1e-3
        grads[name] = {"kernel": g, "bias": jnp.zeros((side,))}
    return params, masks, grads
