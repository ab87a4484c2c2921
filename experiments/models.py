"""Flax Linen models: MLP (LeNet-300-100), LeNet-5, and CIFAR-style VGG16 and MobileNetV2.

Every model is called as ``model.apply(variables, images, train=...)`` on NHWC float images; the
CNNs carry BatchNorm statistics in the ``batch_stats`` collection.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from experiments.errors import UserError

MODELS = ("mlp", "lenet5", "vgg16", "mobilenetv2")


class MLP(nn.Module):
    """Fully connected ReLU network; ``hidden=(300, 100)`` is LeNet-300-100."""

    hidden: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5 (same) - pool - conv 16@5x5 - pool - dense 120 - 84 - classes."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


def _bn(train: bool):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """CIFAR-style VGG16 with BatchNorm: 13 convs, global average pooling, one dense classifier."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for v in _VGG16:
            if v == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
            else:
                x = nn.relu(_bn(train)(nn.Conv(v, (3, 3), use_bias=False)(x)))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class _InvertedResidual(nn.Module):
    expansion: int
    features: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        inp = x.shape[-1]
        hidden = inp * self.expansion
        y = x
        if self.expansion != 1:
            y = nn.relu6(_bn(train)(nn.Conv(hidden, (1, 1), use_bias=False)(y)))
        y = nn.Conv(
            hidden, (3, 3), strides=self.stride, feature_group_count=hidden, use_bias=False
        )(y)
        y = nn.relu6(_bn(train)(y))
        y = _bn(train)(nn.Conv(self.features, (1, 1), use_bias=False)(y))
        if self.stride == 1 and inp == self.features:
            y = y + x
        return y


# (expansion, features, repeats, stride); CIFAR-style: stem stride 1 and the second stage stride 1.
_MOBILENETV2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """CIFAR-style MobileNetV2 (width 1.0) with BatchNorm and global average pooling."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu6(_bn(train)(nn.Conv(32, (3, 3), use_bias=False)(x)))
        for expansion, features, repeats, stride in _MOBILENETV2:
            for i in range(repeats):
                x = _InvertedResidual(expansion, features, stride if i == 0 else 1)(x, train)
        x = nn.relu6(_bn(train)(nn.Conv(1280, (1, 1), use_bias=False)(x)))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def create_model(name: str, num_classes: int, hidden: Sequence[int] = (300, 100)) -> nn.Module:
    if name == "mlp":
        return MLP(hidden=tuple(int(h) for h in hidden), num_classes=num_classes)
    if name == "lenet5":
        return LeNet5(num_classes=num_classes)
    if name == "vgg16":
        return VGG16(num_classes=num_classes)
    if name == "mobilenetv2":
        return MobileNetV2(num_classes=num_classes)
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
