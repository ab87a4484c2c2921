"""TFDS dataset builder for Tiny-ImageNet (not in the TFDS catalog). Import the builder module to register it."""
