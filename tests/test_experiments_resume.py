"""A run killed part-way (SIGKILL of the real process) and resumed with --resume ends with
bit-identical params, masks, optimizer state and metrics to an uninterrupted run."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# num_epochs and delta_t as in test_experiments_cli.py: all these runs share compiled programs
# through JAX's persistent cache.
CACHE = os.path.join(tempfile.gettempdir(), "ggr_jax_test_xla")
FLAGS = [
    "--method=ggr",
    "--num_epochs=8",
    "--delta_t=15",
    "--checkpoint_every_steps=20",
    "--checkpoint_every_epochs=0",
    "--keep_checkpoints=100",
    "--no-progress",
]


def _start(workdir, *extra):
    env = dict(
        os.environ, JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *FLAGS, f"--workdir={workdir}", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def _steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _final_state(workdir):
    ckpt_dir = os.path.join(workdir, "ggr", "checkpoints")
    step = _steps(ckpt_dir)[-1]
    with ocp.CheckpointManager(ckpt_dir) as mngr:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored.state


def test_killed_run_resumes_bit_identically(tmp_path):
    reference = _start(tmp_path / "ref")
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-2000:]

    victim = _start(tmp_path / "run")
    ckpt_dir = tmp_path / "run" / "ggr" / "checkpoints"
    deadline = time.time() + 300
    while not [s for s in _steps(ckpt_dir) if s >= 60] and time.time() < deadline:
        assert victim.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed_at = _steps(ckpt_dir)[-1]
    total = [
        r for r in metrics.read(tmp_path / "ref" / "ggr" / "metrics.jsonl") if r["type"] == "final"
    ][0]["steps"]
    assert 60 <= killed_at < total

    resumed = _start(tmp_path / "run", "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-2000:]

    step_ref, ref = _final_state(tmp_path / "ref")
    step_run, run = _final_state(tmp_path / "run")
    assert step_ref == step_run == total
    assert jax.tree.structure(ref) == jax.tree.structure(run)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(run), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(np.asarray(m).dtype == bool for m in jax.tree.leaves(ref["masks"]))

    def comparable(path):  # everything but wall-clock times
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in metrics.read(path)]

    assert comparable(tmp_path / "run" / "ggr" / "metrics.jsonl") == comparable(
        tmp_path / "ref" / "ggr" / "metrics.jsonl"
    )
