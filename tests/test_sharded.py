"""redistribute and the masking transforms on params sharded over 8 fake CPU devices.

The devices must exist before jax is imported, so the checks run in a subprocess
(``tests/sharded_check.py``) that reports one JSON line.
"""

import json
import os
import subprocess
import sys

import pytest

LAYOUTS = ("one_axis", "two_axes", "replicated")
METHODS = ("ggr", "ggr_rho1", "rigl", "set", "snfs")


@pytest.fixture(scope="module")
def report():
    script = os.path.join(os.path.dirname(__file__), "sharded_check.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, script], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_redistribute_sharded_equals_single_device(report, layout, method):
    r = report[f"{layout}/{method}"]
    assert r["masks_equal"] and r["params_equal"]
    assert r["shardings_kept"]
    # Only reductions cross devices: no all-gather / all-to-all / permute of any array, and every
    # all-reduce carries a handful of counts (the params here have 2048 and 512 elements).
    assert r["collectives"] == []
    assert r["max_all_reduce_elems"] <= 64


@pytest.mark.parametrize("layout", LAYOUTS)
def test_masked_step_sharded(report, layout):
    r = report[f"{layout}/masked_step"]
    assert r["params_equal"] and r["shardings_kept"]
    assert r["collectives"] == []
