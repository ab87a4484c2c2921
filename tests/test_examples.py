"""The scripts in examples/ run as documented.

The multi-device example runs in a fresh process (it sets XLA_FLAGS); the framework examples
(Flax Linen, Flax NNX with ``nnx.Optimizer``, Equinox) are imported and their ``main`` is called.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import ggr_jax as gj

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arrays(tree):
    return [x for x in jax.tree.leaves(tree) if x is not None]


@pytest.mark.standard_dtype_promotion  # optax's schedules mix int32 and float
@pytest.mark.parametrize("name", ["flax_linen", "flax_nnx", "equinox_mlp"])
def test_framework_example_trains_sparse_with_ggr(name):
    # equinox_mlp passes no min_active: the library default serves (out, in) weights too
    out = load_example(name).main(steps=120, sparsity=0.9, update_every=50)
    losses = out["losses"]
    assert len(losses) == 120 and losses[-1] < 0.5 * losses[0], losses[::20]
    assert out["moved"] > 0  # GGR moved connections between layers at steps 50 and 100
    masks, params = out["masks"], out["params"]
    sizes = [m.size for m in _arrays(masks)]
    assert len(sizes) == 3  # the three weight matrices; biases stay dense (None)
    assert sum(int(m.sum()) for m in _arrays(masks)) == round(0.1 * sum(sizes))
    flat_params = jax.tree.leaves(params, is_leaf=lambda x: x is None)
    flat_masks = jax.tree.leaves(masks, is_leaf=lambda x: x is None)
    for p, m in zip(flat_params, flat_masks, strict=True):
        if m is not None:
            assert not bool(jnp.where(m, 0, p).any())  # exactly zero outside the masks
    assert 0.05 < float(gj.global_density(masks)) < 0.15


def test_multi_device_example_runs_on_8_fake_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "multi_device.py"), "--steps", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "8 devices, mesh {'data': 2, 'model': 4}" in out, out
    # the topology update inside lax.cond ran at step 50 and moved connections between layers
    moved = {int(s): int(m) for s, m in re.findall(r"step +(\d+) .*?moved +(\d+)", out)}
    assert moved[0] == 0 and moved[50] > 0, out
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
    assert losses[-1] < losses[0], out
