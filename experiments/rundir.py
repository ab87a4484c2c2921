"""The run's folder: a fresh start or a resume, checked before anything heavy is built.

A run's settings are in its checkpoints' metadata; ``--resume`` continues only with the same
settings (outside :data:`RESUME_FREE`) and never overwrites the metrics of a run whose
checkpoints were removed. Files are written through a temporary file and a rename.
"""

import contextlib
import json
import os

from experiments import checkpoints, metrics
from experiments.errors import UserError

# Fields that may differ when resuming (they do not change what is computed).
RESUME_FREE = (
    "checkpoint_every_epochs",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "data_dir",
    "data_source",
    "num_train_steps",
    "steps_per_eval",
)


def check_workdir(config, workdir: str, resume: bool) -> None:
    """Raises `UserError` when a fresh run would write over a run in ``workdir``, or when the
    checkpoint to resume used other settings (named at once, before any data is loaded)."""
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not resume and (os.path.exists(metrics_path) or os.path.isdir(ckpt_dir)):
        raise UserError(
            f"workdir {workdir} already holds a run; pass --resume to continue it or "
            "choose another --workdir"
        )
    if resume and os.path.isdir(ckpt_dir):
        with contextlib.closing(checkpoints.Checkpoints(ckpt_dir, config.keep_checkpoints)) as c:
            meta = c.latest_meta()
        if meta is not None:
            check_resumable(meta, config)


def check_resumable(meta: dict, config) -> None:
    """Raises `UserError` naming every setting (outside `RESUME_FREE`) that differs between the
    checkpoint's metadata and ``config``; called before any array is restored."""
    saved, current = meta["config"], json.loads(config.to_json())
    diffs = [
        k
        for k in sorted(set(saved) | set(current))
        if k not in RESUME_FREE and saved.get(k) != current.get(k)
    ]
    if diffs:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {current.get(k)!r})" for k in diffs)
        raise UserError(
            f"the checkpointed run (step {meta.get('step')}) used different settings: {shown}; "
            "resume with the same flags (nothing was changed), or start a new --workdir"
        )


def restore(ckpts, state, config, workdir: str, run):
    """``(state, finished)`` for ``--resume``: the latest checkpoint's state (settings compared
    first, arrays checked against their checksums), and the saved results when the run had
    already finished (else None). Without a checkpoint, ``state`` as given."""
    if ckpts.latest_step() is not None:
        state, _ = ckpts.resume(state, lambda meta: check_resumable(meta, config))
        return state, finished_results(workdir, int(state.step), run.run_steps)
    first = next(
        s
        for s in range(1, run.run_steps + 1)
        if checkpoint_due(config, s, run.steps_per_epoch, run.run_steps)
    )
    refuse_resume_without_checkpoint(workdir, os.path.join(workdir, "metrics.jsonl"), first)
    return state, None


def refuse_resume_without_checkpoint(workdir: str, metrics_path: str, first_checkpoint: int):
    """--resume that finds no checkpoint starts afresh only if the metrics end where the first
    checkpoint was still to come (a restart writes exactly those records again); metrics past it
    mean the checkpoints were removed: nothing may then be overwritten."""
    recorded = metrics.read(metrics_path) if os.path.exists(metrics_path) else []
    last = max((r.get("step", 0) for r in recorded), default=0)
    if last > first_checkpoint or os.path.exists(os.path.join(workdir, "results.json")):
        raise UserError(
            f"--resume: {workdir} holds metrics up to step {last} but no checkpoint to continue "
            "from; nothing was changed. Start a new --workdir (this one is left as it is)"
        )


def finished_results(workdir: str, step: int, run_steps: int) -> dict | None:
    """The saved results of a run that already reached ``run_steps``, else None."""
    path = os.path.join(workdir, "results.json")
    if step != run_steps or not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    return results if results.get("steps") == run_steps else None


def checkpoint_due(config, done: int, steps_per_epoch: int, run_steps: int) -> bool:
    """Whether a checkpoint is written after ``done`` steps (always after the last one)."""
    if done == run_steps:
        return True
    if config.checkpoint_every_steps > 0 and done % config.checkpoint_every_steps == 0:
        return True
    every = config.checkpoint_every_epochs
    return every > 0 and done % steps_per_epoch == 0 and (done // steps_per_epoch) % every == 0


def write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a kill leaves either the
    old or the new file, never a truncated one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
