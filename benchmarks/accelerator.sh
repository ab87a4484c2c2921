#!/usr/bin/env bash
# The benchmark on a GPU or TPU, aimed at under 5 minutes: the 1M/10M MLP tables (3 processes
# each; dense, masked and wrapper steps, the memory floor, the RigL and default GGR updates) and
# the real shapes (ResNet-50, ViT-B/16, GPT-2; one process each, with a dense training step),
# written to benchmarks/results/<date>_<device>.md and .json. Compile time against the number of
# layers is host-CPU work and is left to `python -m benchmarks run`. Extra arguments go to
# `python -m benchmarks run` (e.g. `--quick --dated-dir /tmp/x` for a smoke run on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m benchmarks run --shape-processes 1 --no-baselines --methods rigl ggr --layers \
  --dated-dir benchmarks/results "$@"
