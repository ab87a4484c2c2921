"""Fault injection on the training command (issue 10): kills at random points of training and of
checkpoint writes, truncated and bit-flipped checkpoint files, a full disk, and a resume with each
setting changed. Every case either resumes bit-exactly or stops with one clear error line, and
nothing of the run is lost or overwritten.

Tiny runs on digits (an MLP 16-8, two epochs of 44 steps, a checkpoint every 10 steps) so that the
whole module takes seconds per case.
"""

import errno
import gc
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from experiments import checkpoints, main, methods, metrics, rundir
from experiments.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--method=rigl",
    "--hidden=16,8",
    "--num_epochs=2",
    "--delta_t=15",
    "--checkpoint_every_steps=10",
    "--checkpoint_every_epochs=0",
    "--keep_checkpoints=3",
    "--no-progress",
]
# Orbax leaves the coroutines of a failed array read to the garbage collector, which reports them
# as unraisable exceptions; the corrupt-checkpoint tests collect them before they end.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
XLA_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "ggr_jax_test_xla"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


def digest(folder) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(os.path.join(dirpath, name).encode() + f.read())
    return h.hexdigest()


def final_state(run_dir):
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    with ocp.CheckpointManager(ckpt_dir) as mngr:
        step = mngr.latest_step()
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, state.state


def comparable(run_dir):  # every record but wall-clock times
    records = metrics.read(os.path.join(run_dir, "metrics.jsonl"))
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def assert_same_run(run_dir, ref_dir):
    step_a, a = final_state(run_dir)
    step_b, b = final_state(ref_dir)
    assert step_a == step_b
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert comparable(run_dir) == comparable(ref_dir)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (workdir, run dir)."""
    work = tmp_path_factory.mktemp("reference")
    assert main.train_main([*FLAGS, f"--workdir={work}"]) == 0
    return str(work), str(work / "rigl")


def test_kills_at_random_points_resume_bit_exactly(reference, tmp_path):
    """SIGKILL at random steps and in the middle of random checkpoint writes, several times over
    one run; each restart resumes from what is on disk and the end is bit-identical."""
    rng = random.Random(10)
    work = tmp_path / "run"
    env = dict(os.environ, **XLA_CACHE)
    kills = [("--kill-at-write", str(rng.randint(2, 12))) for _ in range(2)]
    kills += [("--kill-at-batch", str(rng.randint(3, 40))) for _ in range(2)]
    killed = 0
    for attempt in range(12):
        mode, value = kills[attempt] if attempt < len(kills) else ("--kill-at-batch", "1000000")
        resume = ["--resume"] if work.exists() else []
        proc = subprocess.run(
            [sys.executable, "tests/_fault_worker.py", mode, value, *FLAGS, f"--workdir={work}"]
            + resume,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr[-2000:]
        killed += 1
        # Whatever the kill interrupted, every checkpoint orbax lists is complete and verifies.
        ckpt_dir = work / "rigl" / "checkpoints"
        if ckpt_dir.is_dir():
            ckpts = checkpoints.Checkpoints(str(ckpt_dir))
            for step in ckpts.steps():
                assert "checksums" in ckpts.read_meta(step)
            ckpts.close()
    else:
        pytest.fail("the run never finished")
    assert killed >= 3
    assert_same_run(work / "rigl", reference[1])


def _files_of_latest(run_dir) -> list[str]:
    """Every non-empty file of the latest checkpoint."""
    latest = max(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
    base = os.path.join(run_dir, "checkpoints", str(latest))
    return sorted(
        os.path.join(dirpath, name)
        for dirpath, _, files in os.walk(base)
        for name in files
        if os.path.getsize(os.path.join(dirpath, name)) > 0
    )


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_truncated_and_bit_flipped_checkpoint_files(reference, tmp_path, how):
    """Each file of the latest checkpoint, damaged in turn: the restore either gives back exactly
    the saved arrays or raises one error naming the step (and the intact step before it)."""
    run_dir = tmp_path / "rigl"
    shutil.copytree(reference[1], run_dir)
    ckpts = checkpoints.Checkpoints(str(run_dir / "checkpoints"))
    latest, previous = ckpts.steps()[-1], ckpts.steps()[-2]
    _, saved = final_state(reference[1])
    rng = random.Random(3 if how == "flip" else 4)
    outcomes = {"exact": 0, "error": 0}
    for path in _files_of_latest(run_dir):
        original = open(path, "rb").read()
        for _ in range(2 if how == "flip" else 1):
            damaged = bytearray(original)
            if how == "truncate":
                damaged = damaged[: len(damaged) // 2]
            else:
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            open(path, "wb").write(bytes(damaged))
            try:
                restored, _ = ckpts.restore(saved, latest)
            except checkpoints.CheckpointError as e:
                message = str(e)
                assert f"checkpoint step {latest} " in message and "\n" not in message
                assert f"resume from step {previous}" in message, message
                outcomes["error"] += 1
            else:
                for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
                    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
                outcomes["exact"] += 1
            open(path, "wb").write(original)
    ckpts.close()
    gc.collect()
    assert outcomes["error"] > 0, outcomes


def test_valid_but_wrong_arrays_fail_their_checksum(reference, tmp_path, capsys):
    """A checkpoint whose array files decode fine but hold other values (what a flipped bit in
    uncompressed data gives): one error naming the step and the leaf; the advice resumes."""
    work = tmp_path / "w"
    shutil.copytree(reference[0], work)
    ckpt_dir = work / "rigl" / "checkpoints"
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    latest, before = steps[-1], steps[-2]
    shutil.rmtree(ckpt_dir / str(latest) / "state")
    shutil.copytree(ckpt_dir / str(before) / "state", ckpt_dir / str(latest) / "state")
    untouched = digest(work / "rigl")
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume", "--num_train_steps=-1"]) == 2
    line = one_error_line(capsys)
    assert f"checkpoint step {latest} " in line and "does not match the checksum" in line, line
    assert f"resume from step {before}" in line and "mv " in line, line
    assert digest(work / "rigl") == untouched
    gc.collect()
    # Following the advice resumes from the intact step and ends bit-identical to the reference.
    os.rename(ckpt_dir / str(latest), work / "rigl" / f"corrupt-checkpoint-{latest}")
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume"]) == 0
    capsys.readouterr()
    assert_same_run(work / "rigl", reference[1])


def test_full_disk_keeps_earlier_checkpoints_and_resumes(reference, tmp_path, capsys, monkeypatch):
    """OSError(ENOSPC) from the writer in the middle of checkpoint step 30: one error line naming
    the intact checkpoints; they restore, and --resume (disk freed) ends bit-identical."""
    work = tmp_path / "w"
    write_text = epath.Path.write_text

    def full(self, *args, **kwargs):
        if "30.orbax-checkpoint-tmp" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(epath.Path, "write_text", full)
    assert main.train_main([*FLAGS, f"--workdir={work}"]) == 2
    line = one_error_line(capsys)
    assert "could not write checkpoint step 30" in line and "no space left" in line, line
    assert "steps 10, 20" in line and "are intact" in line, line
    monkeypatch.setattr(epath.Path, "write_text", write_text)
    ckpts = checkpoints.Checkpoints(str(work / "rigl" / "checkpoints"))
    assert ckpts.steps() == [10, 20]
    ckpts.close()
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume"]) == 0
    capsys.readouterr()
    assert_same_run(work / "rigl", reference[1])


# A changed value for every setting that decides what a run computes (the first candidate that
# is valid today and differs from the current value).
_CANDIDATES = {
    "dataset": ["fashion_mnist"],
    "model": ["lenet5"],
    "init": ["erk", "uniform"],
    "optimizer": ["adam", "sgd"],
    "lr_schedule": ["constant", "cosine"],
    "topology_update": ["cond", "separate"],
    "ggr_signal": ["accumulated", "mean", "ema", "batch"],
    "ggr_normalize": ["l2", "none"],
}
_CONFIG = main.build_config("digits_mlp", FLAGS[:-1])


def _valid(field, text) -> bool:
    try:
        methods.check(main.build_config("digits_mlp", [*FLAGS[:-1], f"--{field}={text}"]))
    except UserError:
        return False
    return True


def _changed(field, value):
    if isinstance(value, bool):
        return str(not value)
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return str(value / 2 if value else 0.5)
    if isinstance(value, tuple):
        return ",".join(str(v + 1) for v in value) if value else "1"
    return next((c for c in _CANDIDATES.get(field, []) if c != value and _valid(field, c)), None)


SETTINGS = [
    (field, _changed(field, _CONFIG[field]))
    for field in _CONFIG
    if field not in ("name", "method", *rundir.RESUME_FREE)
    and _changed(field, _CONFIG[field]) is not None
]


def test_every_setting_is_covered():
    assert set(_CANDIDATES) <= {f for f, _ in SETTINGS}
    assert {"momentum", "weight_decay", "hidden", "seed", "sparsity"} <= {f for f, _ in SETTINGS}


@pytest.mark.parametrize("field,value", SETTINGS, ids=[f for f, _ in SETTINGS])
def test_resume_with_a_changed_setting_names_it_and_changes_nothing(
    reference, tmp_path, capsys, field, value
):
    work = tmp_path / "w"
    shutil.copytree(reference[0], work)
    before = digest(work)
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume", f"--{field}={value}"]) == 2
    line = one_error_line(capsys)
    assert "used different settings" in line and f"{field}=" in line and "(now " in line, line
    assert "delete" not in line
    assert digest(work) == before
