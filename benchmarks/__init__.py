"""Benchmarks of ggr_jax: masked steps and topology updates against a dense step, real shapes.

One command regenerates benchmarks/RESULTS.md and RESULTS.json (run it on a quiet machine)::

    python -m benchmarks run            # 3 processes per unit; the 1M/10M tables, compile time
                                        # against layers (8-64), ResNet-50 / ViT-B/16 / GPT-2
    python -m benchmarks run --quick    # tiny sizes, 1 process: a smoke run (use --out elsewhere)
    python -m benchmarks report         # RESULTS.md again from RESULTS.json
    python -m benchmarks inference      # sparse vs dense inference: SPARSE_INFERENCE.md + .json
    benchmarks/accelerator.sh           # on a GPU/TPU: a dated results file naming the device

Modules: :mod:`~benchmarks.models` (Flax Linen MLP, ResNet-50, ViT-B/16, GPT-2),
:mod:`~benchmarks.baselines` (steps, memory floor, sort baselines), :mod:`~benchmarks.harness`
(interleaved timing, separate processes, spread), :mod:`~benchmarks.measure` (one unit per
process), :mod:`~benchmarks.targets` (the one table of targets), :mod:`~benchmarks.report`
(RESULTS.md), :mod:`~benchmarks.inference`.

This package is a dev tool next to the library: it is not part of the ``ggr_jax`` wheel, and it
uses only ggr_jax's public API.
"""
