"""`--method gmp` in experiments/: a dense-to-sparse run on digits ends at the target sparsity in
every layer, its records show the cubic schedule, the results carry the model's bytes, and the
compare grids run it once per sparsity and seed."""

import pytest

from experiments import compare, main, metrics, report, training
from experiments.configs import grids

FLAGS = [
    "--method=gmp",
    "--sparsity=0.9",
    "--num_epochs=2",
    "--delta_t=5",
    "--end_fraction=0.5",
    "--batch_size=64",
]


@pytest.mark.parametrize("topology_update", ["separate", "cond"])
def test_gmp_trains_dense_to_sparse_on_digits(topology_update, tmp_path):
    config = main.build_config("digits_mlp", [*FLAGS, f"--topology_update={topology_update}"])
    results = training.train_and_evaluate(config, str(tmp_path), progress=False)
    records = metrics.read(tmp_path / "metrics.jsonl")
    init = next(r for r in records if r["type"] == "init")
    assert init["global_density"] == 1.0  # dense start
    densities = [r["global_density"] for r in records if r["type"] == "topology"]
    assert densities[0] == 1.0 and densities[-1] == pytest.approx(0.1, abs=1e-4)
    assert all(a >= b for a, b in zip(densities[:-1], densities[1:], strict=True))
    for density in results["layer_density"].values():  # per layer: uniform at the end
        assert density == pytest.approx(0.1, abs=1e-3)
    assert results["density"] == pytest.approx(0.1, abs=1e-4)
    # dense steps early on: training costs more than the final sparse network's FLOPs
    assert results["flops_ratio"] < results["training_flops_ratio"] < 1.0
    assert results["model_bytes"] < results["dense_bytes"] / 4
    assert "KiB" in report.results_table([results])


def test_compare_runs_gmp_once_per_sparsity_and_seed():
    grid = dict(grids.get_grid("digits_all"))
    assert "gmp" in grid["methods"]
    gmp = [c for c in compare.cells(grid) if c["method"] == "gmp"]
    assert len(gmp) == len(grid["sparsities"]) * len(grid["seeds"])
    assert {c["init"] for c in gmp} == {"uniform"}


def test_tables_show_model_size_and_old_results_without_it():
    row = {
        "method": "rigl",
        "init": "erk",
        "sparsity": 0.9,
        "test_accuracy": 0.5,
        "density": 0.1,
        "flops_ratio": 0.1,
        "moved_total": 0,
        "layer_density": {"a": 0.1},
    }
    assert "| - |" in report.results_table([row])  # written before model_bytes existed
    table = report.results_table([{**row, "model_bytes": 2048}])
    assert "| model size |" in table and "| 2.0 KiB |" in table
    summary = report.summary_table(report.summarize([{**row, "model_bytes": 2048}]))
    assert "2.0 KiB" in summary


def test_compare_accepts_gmp(capsys):
    assert compare.compare_main(["--config=digits_mlp", "--methods=gmp,xyz"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'xyz'" in err and "gmp" in err  # gmp passed the check, xyz did not
