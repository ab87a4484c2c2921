"""benchmarks/ (``python -m benchmarks``): the accelerator script's quick mode writes a dated,
well-formed report; verdicts need every process; the baselines keep exact counts; the committed
RESULTS.md is what the committed RESULTS.json gives. Behaviour only: no timing is asserted."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ggr_jax as gj
from benchmarks import __main__ as cli
from benchmarks import baselines, harness, models, report, targets

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def test_accelerator_script_quick_mode_writes_a_dated_report(tmp_path):
    cmd = ["bash", str(BENCH / "accelerator.sh"), "--quick", "--dated-dir", str(tmp_path)]
    cmd += ["--mlp", "1M", "--layers", "2", "--shapes", "gpt2"]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    (md,) = tmp_path.glob("*.md")
    assert md.name.startswith(json.loads(md.with_suffix(".json").read_text())["date"])
    assert md.stem.endswith("cpu-x1")  # the device, named
    raw = json.loads(md.with_suffix(".json").read_text())
    assert raw["quick"] and raw["processes"] == 1 and raw["machine"]["backend"] == "cpu"
    assert set(raw["units"]) == {"mlp_1M", "layers_2", "shape_gpt2"}
    assert all(len(records) == 1 for records in raw["units"].values())
    mlp = raw["units"]["mlp_1M"][0]["values"]
    for vid in ("dense_step", "masked_step", "wrapper_step", "floor", "update_rigl", "update_ggr"):
        assert mlp[f"ms:{vid}"] > 0
    assert "ms:baseline_argsort_rigl" not in mlp  # the script skips the baselines
    assert raw["units"]["layers_2"][0]["values"]["compile_s:update_ggr"] > 0
    gpt2 = raw["units"]["shape_gpt2"][0]["values"]
    assert {"ms:floor", "ms:update_ggr", "ms:update_rigl", "ms:train_step"} <= set(gpt2)
    assert set(raw["verdicts"]) == {t.id for t in targets.TARGETS}
    assert raw["verdicts"]["ggr_1M"]["processes"] == 1
    assert raw["verdicts"]["compile_64_layers"] == {"measured": False, "met": None}
    text = md.read_text()
    assert "Not measured on an accelerator" in text
    for t in targets.TARGETS:
        assert t.text in text
    assert "## Real shapes" in text and "GPT-2 small, embeddings dense" in text
    assert text == report.render(raw)


def _records(ratios: list[float]) -> list[dict]:
    return [{"values": {"ms:dense_step": 2.0, "ms:update_ggr": 2.0 * r}} for r in ratios]


def test_a_target_is_met_only_if_every_process_meets_it():
    (ggr,) = [t for t in targets.TARGETS if t.id == "ggr_1M"]
    met = targets.verdict(ggr, {"mlp_1M": _records([1.2, 1.4, 1.3])})
    assert met["met"] and met["met_in"] == 3 and met["median"] == 1.3
    one_slow = targets.verdict(ggr, {"mlp_1M": _records([1.2, 1.6, 1.3])})
    assert not one_slow["met"] and one_slow["met_in"] == 2 and one_slow["median"] == 1.3
    assert targets.verdict(ggr, {}) == {"measured": False, "met": None}


def test_units_are_interleaved_across_processes():
    args = cli.parser().parse_args(["run", "--mlp", "1M", "--layers", "8", "--shapes", "gpt2"])
    order, procs, shape_procs = cli.plan(args)
    assert (procs, shape_procs) == (3, 3)
    assert order[:3] == [("mlp_1M", 0), ("layers_8", 0), ("shape_gpt2", 0)]
    assert order[-1] == ("shape_gpt2", 2) and len(order) == 9
    args = cli.parser().parse_args(["run", "--shape-processes", "1", "--shapes", "gpt2"])
    assert sum(u == "shape_gpt2" for u, _ in cli.plan(args)[0]) == 1


def test_machine_cpu_seconds_reads_busy_and_steal_from_proc_stat():
    hz = float(__import__("os").sysconf("SC_CLK_TCK"))
    busy, steal = harness.machine_cpu_seconds("cpu  100 5 50 900 7 3 10 40 0 0\ncpu0 1 2 3\n")
    assert busy * hz == 168.0 and steal * hz == 40.0  # user+nice+system+irq+softirq; steal
    assert all(np.isnan(harness.machine_cpu_seconds("garbage")))


def test_a_disturbed_worker_is_run_again_and_reported(monkeypatch):
    seen = iter([1.0, 0.5, 0.0])  # others used 1 and 0.5 cores, then the machine was quiet

    def fake_run(cmd):
        Path(cmd[cmd.index("--out") + 1]).write_text(json.dumps({"values": {}}))
        return {"wall_s": 1.0, "others_cores": next(seen), "steal_s": 0.0}

    monkeypatch.setattr(harness, "run_one", fake_run)
    out = harness.run_workers([("mlp_1M", 0)], [], lambda msg: None, retries=2)
    (record,) = out["mlp_1M"]
    assert record["disturbed_attempts"] == 2 and record["others_cores"] == 0.0
    assert not [x for x in report.quietness(out) if x.startswith("**Disturbed")]
    seen = iter([1.0, 0.5])
    out = harness.run_workers([("mlp_1M", 0)], [], lambda msg: None, retries=1)
    assert out["mlp_1M"][0]["others_cores"] == 0.5
    (flag,) = [x for x in report.quietness(out) if x.startswith("**Disturbed")]
    assert "`mlp_1M`, process 1" in flag and "0.50 cores" in flag


def test_run_one_accounts_for_the_worker_itself():
    run = harness.run_one([__import__("sys").executable, "-c", "sum(range(10**6))"])
    assert (
        run["wall_s"] > 0
        and run["others_cores"] >= 0
        and set(run)
        == {
            "wall_s",
            "others_cores",
            "steal_s",
        }
    )


def test_baselines_keep_exact_counts():
    x = jnp.ones((4, 20))
    params = models.MLP((20, 30, 10)).init(jax.random.key(0), x)["params"]
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.8), jax.random.key(1))
    params = gj.apply_masks(params, masks)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
    n_drop = tuple(int(np.floor(0.3 * int(masks[n]["kernel"].sum()))) for n in params)
    _, m_sort = jax.jit(baselines.argsort_rigl)(params, masks, grads, jnp.float32(0.3))
    _, m_cat = jax.jit(lambda p, m, g: baselines.concat_top_k_ggr(p, m, g, n_drop=n_drop))(
        params, masks, grads
    )
    for name in params:  # RigL: per layer; GGR: in total
        assert int(m_sort[name]["kernel"].sum()) == int(masks[name]["kernel"].sum())
    total = sum(int(masks[n]["kernel"].sum()) for n in params)
    assert sum(int(m_cat[n]["kernel"].sum()) for n in params) == total


def test_real_shapes_have_the_real_sizes():
    for name, low, high, convs in [("resnet50", 25.4e6, 25.7e6, 53), ("vit_b16", 86e6, 87e6, 1),
                                   ("gpt2", 124e6, 125e6, 0)]:  # fmt: skip
        s = models.real_shape(name, quick=False)
        shapes = jax.eval_shape(lambda s=s: s.model.init(jax.random.key(0), s.x))["params"]
        leaves = jax.tree.leaves(shapes)
        assert low < sum(np.prod(x.shape) for x in leaves) < high, name
        assert sum(x.ndim == 4 for x in leaves) == convs, name


def test_committed_report_matches_its_json(tmp_path):
    raw = json.loads((BENCH / "RESULTS.json").read_text())
    assert report.render(raw) == (BENCH / "RESULTS.md").read_text()


def test_documented_command_lines_parse():
    fence = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [
        shlex.split(line, comments=True)
        for page in pages
        for body in fence.findall(page.read_text())
        for line in body.splitlines()
        if line.startswith("python -m benchmarks")
    ]
    assert len(lines) >= 4
    for words in lines:
        cli.parser().parse_args(words[3:])
