"""The command line end to end on digits, bad input (one error line, exit 2, nothing overwritten),
multi-device data parallelism, and the compare command."""

import hashlib
import os
import subprocess
import sys
import tempfile

import pytest

from experiments import compare, main, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocess runs with the same flags compile the same programs: share them (and with the
# resume test).
XLA_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "ggr_jax_test_xla"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}
DIGITS = ["--num_epochs=8", "--delta_t=15"]  # the ggr run here, in compare and in the resume test


def run_cli(*args, env=None, module="experiments.train"):
    full_env = dict(os.environ, **XLA_CACHE, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_cli_trains_the_default_methods_on_digits(tmp_path):
    work = tmp_path / "run"
    proc = run_cli(*DIGITS, f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "| method | init | sparsity | test accuracy |" in out
    for method in ("dense", "rigl", "ggr"):
        assert f"| {method} |" in out
        records = metrics.read(work / method / "metrics.jsonl")
        assert sum(r["type"] == "eval" for r in records) == 8
        assert (work / method / "results.json").exists()
    topology = [r for r in metrics.read(work / "ggr" / "metrics.jsonl") if r["type"] == "topology"]
    assert topology and {"density", "dropped", "grown", "moved", "active"} <= set(topology[0])
    assert is_png(work / "density_over_time.png") and is_png(work / "accuracy.png")
    assert "| ggr |" in (work / "results.md").read_text()
    assert "ggr" in proc.stderr  # the progress bar


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


BAD = [
    (["--config", "nope"], "unknown config 'nope'"),
    (["--method", "ggr,foo"], "unknown method 'foo'"),
    (["--init", "random"], "unknown init 'random'"),
    (["--sparsity", "abc"], "--sparsity: 'abc' is not a valid float"),
    (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--num_epochs", "0"], "num_epochs must be at least 1"),
    (["--frobnicate", "1"], "unknown flag --frobnicate"),
    (["--dataset", "mnist2"], "unknown dataset 'mnist2'"),
    (["--topology_update", "maybe"], "unknown topology_update"),
    (["--config", "fashion_mnist_lenet300", "--data-dir", "/nonexistent/fmnist"], "does not exist"),
    (["--sparsity"], "needs a value"),
    (["--resume"], "--resume needs --workdir"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    workdir = [] if "--resume" in argv else [f"--workdir={tmp_path / 'w'}"]
    assert main.train_main(argv + workdir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "w").exists()


def test_bad_input_from_a_real_process_has_no_traceback():
    proc = run_cli("--method", "magic")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown method 'magic'; choose one of: dense, static, set, rigl, snfs, ggr, gmp"
    ]


def test_existing_run_and_corrupt_checkpoint_are_not_overwritten(tmp_path, capsys):
    work = str(tmp_path / "w")
    assert (
        main.train_main(
            ["--method=rigl", "--num_train_steps=5", f"--workdir={work}", "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    before = _digest(work)
    assert main.train_main(["--method=rigl", "--num_train_steps=5", f"--workdir={work}"]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert (
        main.train_main(
            [
                "--method=rigl",
                "--num_train_steps=5",
                f"--workdir={work}",
                "--resume",
                "--learning_rate=0.3",
            ]
        )
        == 2
    )
    assert "different settings: learning_rate=0.05 (now 0.3)" in capsys.readouterr().err
    assert _digest(work) == before
    # Corrupt every file of the checkpoint's arrays.
    ckpt = os.path.join(work, "rigl", "checkpoints", "5", "state")
    for dirpath, _, files in os.walk(ckpt):
        for name in files:
            with open(os.path.join(dirpath, name), "wb") as f:
                f.write(b"garbage")
    before = _digest(work)
    assert (
        main.train_main(["--method=rigl", "--num_train_steps=5", f"--workdir={work}", "--resume"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt" in err[0] and "checkpoints/5" in err[0], err
    assert "delete" not in err[0] and "start a new --workdir" in err[0], err
    assert _digest(work) == before


def test_two_devices_train_data_parallel(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = run_cli(
        "--method=ggr",
        "--num_epochs=3",
        "--delta_t=10",
        "--init=erk",
        "--sparsity=0.9",
        f"--workdir={tmp_path}",
        "--no-progress",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 cpu devices" in proc.stdout
    records = metrics.read(tmp_path / "ggr" / "metrics.jsonl")
    assert [r for r in records if r["type"] == "topology"]
    assert records[-1]["test_accuracy"] > 0.2  # chance is 0.1
    proc = run_cli("--batch_size=33", f"--workdir={tmp_path / 'odd'}", env=env)
    assert proc.returncode == 2 and "not divisible by the 2 devices" in proc.stderr


def test_compare_runs_a_grid_in_parallel_processes(tmp_path, capsys, monkeypatch):
    for key, value in XLA_CACHE.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "grid"
    argv = [
        "--config=digits_mlp",
        "--methods=ggr",
        "--sparsities=0.98",
        "--inits=uniform",
        "--seeds=0,1",
        *DIGITS,
        f"--workdir={work}",
        "--workers=2",
    ]
    assert compare.compare_main(argv) == 0
    out = capsys.readouterr().out
    assert "| ggr | uniform | 0.98 | 2 |" in out and "±" in out
    assert len(metrics.read(work / "results.jsonl")) == 2
    table = (work / "results.md").read_text()
    assert "mean ± std" in table and "| ggr | uniform | 0.98 | 2 |" in table
    assert is_png(work / "accuracy_vs_sparsity.png") and is_png(work / "density_over_time.png")
    # Re-running needs --resume; with it, finished runs are reused.
    assert compare.compare_main(argv) == 2
    assert "already holds a grid" in capsys.readouterr().err
    assert compare.compare_main(argv + ["--resume"]) == 0


def test_compare_bad_input(capsys):
    assert compare.compare_main(["--grid=nope"]) == 2
    assert "unknown grid 'nope'" in capsys.readouterr().err
    assert compare.compare_main(["--config=digits_mlp", "--methods=ggr,xyz"]) == 2
    assert "unknown method 'xyz'" in capsys.readouterr().err
    assert compare.compare_main(["--config=digits_mlp", "--seeds=a"]) == 2
    assert "comma-separated list of int" in capsys.readouterr().err


def test_named_grids_are_valid():
    from experiments.configs import grids

    for name, grid in grids.GRIDS.items():
        main.build_config(grid["config"], [f"--{k}={v}" for k, v in grid["overrides"].items()])
        assert compare.cells(grid), name
