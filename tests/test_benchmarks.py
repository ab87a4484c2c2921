"""benchmarks/run.py: its measurements run on a tiny model, its baselines keep exact counts, and
the committed RESULTS.md is what the committed raw JSON gives."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ggr_jax as gj

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load()


def test_bench_model_on_a_tiny_mlp():
    m = run.bench_model("tiny", (16, 32, 8), calls=1, rounds=1)
    names = set(m["timings"])
    assert {"dense step", "update ggr", "update argsort (RigL)"} <= names
    assert all(t["median"] > 0 for t in m["timings"].values())
    assert m["n_params"] == 16 * 32 + 32 + 32 * 8 + 8
    assert all(v is None or v >= 0 for v in m["temp_bytes"].values())


def test_baselines_keep_exact_counts():
    params = run.mlp_params((20, 30, 10), jax.random.key(0))
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.8), jax.random.key(1))
    params = gj.apply_masks(params, masks)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
    n_drop = tuple(int(np.floor(0.3 * int(masks[n]["kernel"].sum()))) for n in params)
    _, m_sort = jax.jit(run.argsort_rigl)(params, masks, grads, jnp.float32(0.3))
    _, m_cat = jax.jit(lambda p, m, g: run.concat_top_k_ggr(p, m, g, n_drop=n_drop))(
        params, masks, grads
    )
    for name in params:  # RigL: per layer; GGR: in total
        assert int(m_sort[name]["kernel"].sum()) == int(masks[name]["kernel"].sum())
    total = sum(int(masks[n]["kernel"].sum()) for n in params)
    assert sum(int(m_cat[n]["kernel"].sum()) for n in params) == total


def test_committed_report_matches_its_json(tmp_path):
    shutil.copy(BENCH / "RESULTS.json", tmp_path / "RESULTS.json")
    run.main(["--report-only", "--out", str(tmp_path / "RESULTS.md")])
    assert (tmp_path / "RESULTS.md").read_text() == (BENCH / "RESULTS.md").read_text()
