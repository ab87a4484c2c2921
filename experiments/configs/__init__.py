"""Named configs: one module per setup, each with ``get_config() -> ml_collections.ConfigDict``."""

import importlib

import ml_collections

from experiments.errors import UserError

NAMES = (
    "digits_mlp",
    "fashion_mnist_lenet300",
    "fashion_mnist_lenet5",
    "cifar100_vgg16",
    "cifar100_mobilenetv2",
    "tiny_imagenet_vgg16",
    "tiny_imagenet_mobilenetv2",
)
DEFAULT = "digits_mlp"


def get_config(name: str) -> ml_collections.ConfigDict:
    """Returns a fresh copy of the named config; raises `UserError` for an unknown name."""
    if name not in NAMES:
        raise UserError(f"unknown config {name!r}; choose one of: {', '.join(NAMES)}")
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    config.name = name
    return config
