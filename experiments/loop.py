"""The training loop: steps, topology-update records, epoch-end evaluation, checkpoints.

Python decides which compiled step runs (``gj.is_update_step`` on the step number), so a run
with ``topology_update="separate"`` pays for the topology update only on update steps.
"""

import collections
import json
import time
from collections.abc import Callable

import jax
import numpy as np

import ggr_jax as gj
from experiments import data, methods, metrics, results
from experiments.build import Programs, Run
from experiments.rundir import checkpoint_due


def _prefetch(iterator, sharding, size: int = 2):
    queue = collections.deque()
    for batch in iterator:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) >= size:
            yield queue.popleft()


def _progress(enabled: bool, label: str, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"{label:>18}",
        unit="step",
        disable=not enabled,
        leave=True,
        mininterval=0.5,
    )


def _epoch_end(run: Run, state, step: int, evaluate: Callable, layer_size: dict, start_time):
    """``(state, eval record)`` after step ``step``: the epoch's training sums (reset at an
    epoch's end), the test/val metrics and the density."""
    done = step + 1
    loss_sum, correct, count = (float(v) for v in jax.device_get(state.epoch_sums))
    if done % run.steps_per_epoch == 0:  # a --num_train_steps stop keeps the epoch's sums
        zeros = jax.device_put(np.zeros(3, np.float32), run.replicated)
        state = state._replace(epoch_sums=zeros)
    record = {
        "type": "eval",
        "step": done,
        "epoch": done / run.steps_per_epoch,
        "train_loss": loss_sum / count,
        "train_accuracy": correct / (count * run.config.batch_size),
        "lr": float(run.lr_at(step)),
        "global_density": metrics.densities(state.masks, layer_size)["global_density"],
        **evaluate(state),
        "wall_s": time.time() - start_time,
    }
    return state, record


def train_loop(run: Run, programs: Programs, state, *, log, ckpts, evaluate, progress, start_time):
    """Trains from ``state.step`` to ``run.run_steps``, writing the ``topology`` and ``eval``
    records to ``log`` and the checkpoints to ``ckpts``; returns the last state."""
    config, cfg, start = run.config, run.cfg, int(state.step)
    dynamic = methods.is_dynamic(run.method)
    layer_size = metrics.layer_sizes(state.masks)
    batches = _prefetch(
        data.train_batches(run.dataset, config.batch_size, config.seed, start), run.batch_sharding
    )
    bar = _progress(progress, results.run_label(config), run.run_steps, start)
    for step in range(start, run.run_steps):
        update_now = dynamic and bool(gj.is_update_step(step, cfg.delta_t, cfg.t_end))
        state, _, info = (programs.update if update_now else programs.plain)(state, next(batches))
        if update_now:
            fraction = run.fraction_at(step)
            log.write(
                metrics.topology_record(step, run.steps_per_epoch, fraction, info, layer_size)
            )
        done = step + 1
        if done % run.steps_per_epoch == 0 or done == run.run_steps:
            state, record = _epoch_end(run, state, step, evaluate, layer_size, start_time)
            log.write(record)
            bar.set_postfix(
                loss=f"{record['train_loss']:.3f}", test_acc=f"{record['test_accuracy']:.3f}"
            )
        if checkpoint_due(config, done, run.steps_per_epoch, run.run_steps):
            ckpts.save(done, state, {"config": json.loads(config.to_json()), "step": done})
        bar.update(1)
    bar.close()
    ckpts.wait()
    return state
