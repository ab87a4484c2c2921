"""TFDS dataset builder for Tiny-ImageNet (not in the TFDS catalog).

Import ``tiny_imagenet_dataset_builder`` to register it.
"""
