"""The reproduction study's report: verdict rules on hand-made results, and the report files."""

import json
import os

from experiments import compare, study
from experiments.configs import grids


def _run(method, init, sparsity, seed, acc):
    return {
        "method": method,
        "init": init,
        "sparsity": sparsity,
        "seed": seed,
        "test_accuracy": acc,
        "density": 1 - sparsity,
        "flops_ratio": 1 - sparsity,
        "moved_total": 0,
        "layer_density": {"Dense_0": 1 - sparsity, "Dense_1": 0.5},
    }


def _grid_runs(ggr_acc, base_acc, uniform_penalty):
    runs = []
    for seed, noise in ((0, -0.001), (1, 0.001)):
        for s in (0.95, 0.98):
            for m in study.BASELINES + ("ggr",):
                for init in ("uniform", "erk"):
                    acc = (ggr_acc if m == "ggr" else base_acc) + noise
                    if init == "uniform" and m != "ggr":
                        acc -= uniform_penalty
                    runs.append(_run(m, init, s, seed, acc))
    return runs


def test_verdicts_follow_the_stated_rules():
    a, b = study.verdicts(_grid_runs(ggr_acc=0.90, base_acc=0.80, uniform_penalty=0.2))
    assert a.startswith("**holds here**") and "ahead of the best baseline in 4" in a
    assert b.startswith("**holds here**")
    a, b = study.verdicts(_grid_runs(ggr_acc=0.70, base_acc=0.80, uniform_penalty=0.0))
    assert a.startswith("**does not hold here**") and "behind in 4 of 4" in a
    assert b.startswith("**does not hold here**")
    a, _ = study.verdicts(_grid_runs(ggr_acc=0.8001, base_acc=0.80, uniform_penalty=0.0))
    assert a.startswith("**does not hold here**") and "tied in 4" in a


def test_report_from_finished_runs(tmp_path):
    workdir = tmp_path / "study"
    for name in ("study_lenet300", "study_ggr_rho1"):
        grid = grids.get_grid(name)
        for cell in compare.cells(grid):
            run_dir = workdir / name / "runs" / compare.cell_name(cell) / cell["method"]
            os.makedirs(run_dir)
            acc = 0.85 + 0.01 * cell["seed"]
            (run_dir / "results.json").write_text(
                json.dumps(_run(cell["method"], cell["init"], cell["sparsity"], cell["seed"], acc))
            )
            records = [
                {"type": "init", "step": 0, "density": {"Dense_0": 0.02, "Dense_1": 0.3}},
                {"type": "topology", "step": 100, "density": {"Dense_0": 0.03, "Dense_1": 0.1}},
            ]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "docs"
    path = study.write_report(str(workdir), str(out))
    text = open(path).read()
    assert "Claim (a)" in text and "Claim (b)" in text and "rho1" in text
    assert "| **ggr** | erk | 86.00 ± 1.00 " in text  # seeds 0, 1, 2: 85, 86, 87 %
    for png in (
        "density_over_time_lenet300.png",
        "final_layer_density_lenet300.png",
        "accuracy_vs_sparsity_lenet300.png",
    ):
        assert (out / "results" / png).stat().st_size > 1000
    rows = (out / "results" / "runs.csv").read_text().splitlines()
    assert len(rows) == 1 + len(compare.cells(grids.get_grid("study_lenet300"))) + 6
