#!/usr/bin/env bash
# The benchmark on a GPU or TPU: the 1M/10M tables (3 processes each), compile time against
# layers and the real shapes (one process each), written to benchmarks/results/<date>_<device>.md
# and .json. Aimed at under 5 minutes on one accelerator. Extra arguments go to
# `python -m benchmarks run` (e.g. --quick --dated-dir /tmp/x for a smoke run on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m benchmarks run --shape-processes 1 --no-baselines --dated-dir benchmarks/results "$@"
