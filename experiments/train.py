"""Library-like training: ``train_and_evaluate(config, workdir)`` trains one method and returns its
results; ``train_methods`` trains each method of a comma-separated ``config.method`` and writes the
comparison. Run ``python -m experiments.train --help`` for the command line (experiments/main.py).
"""

import collections
import contextlib
import functools
import json
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import ggr_jax as gj
from experiments import checkpoints, data, flops, methods, metrics, models, plots, report, steps
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


def _mesh_shardings(batch_size: int, eval_batch_size: int):
    n = jax.device_count()
    for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size % n:
            raise UserError(f"{name} {size} is not divisible by the {n} devices; change --{name}")
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def _prefetch(iterator, sharding, size: int = 2):
    queue = collections.deque()
    for batch in iterator:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) >= size:
            yield queue.popleft()


def _summed(device_metrics: list[dict]) -> dict:
    if not device_metrics:
        return {}
    return {
        k: float(v)
        for k, v in jax.device_get(jax.tree.map(lambda *xs: sum(xs), *device_metrics)).items()
    }


def _check_resumable(meta: dict, config) -> None:
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


def _refuse_resume_without_checkpoint(
    workdir: str, metrics_path: str, first_checkpoint: int
) -> None:
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


def _finished_results(workdir: str, step: int, run_steps: int) -> dict | None:
    """The saved results of a run that already reached ``run_steps``, else None."""
    path = os.path.join(workdir, "results.json")
    if step != run_steps or not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    return results if results.get("steps") == run_steps else None


def _write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: a kill leaves either the
    old or the new file, never a truncated one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_label(config) -> str:
    if config.method == "dense":
        return "dense"
    return f"{config.method} {config.init} s={config.sparsity:g}"


def train_and_evaluate(
    config,
    workdir: str,
    *,
    resume: bool = False,
    progress: bool = True,
    dataset: data.Dataset | None = None,
) -> dict:
    """Trains ``config.method`` (one name) and evaluates after each epoch; returns the results dict.

    Writes ``metrics.jsonl``, ``checkpoints/``, ``results.json``, ``density_over_time.png`` and
    ``accuracy.png`` to ``workdir``. With ``resume`` it continues from the latest checkpoint there.
    """
    methods.check(config)
    if len(methods.split_methods(config.method)) != 1:
        raise UserError(f"train_and_evaluate trains one method, got {config.method!r}")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not resume and (os.path.exists(metrics_path) or os.path.isdir(ckpt_dir)):
        raise UserError(
            f"workdir {workdir} already holds a run; pass --resume to continue it or "
            "choose another --workdir"
        )
    if resume and os.path.isdir(ckpt_dir):
        # Before loading data or building the state: a changed setting is named at once (the
        # arrays are restored, and verified, further down).
        with contextlib.closing(checkpoints.Checkpoints(ckpt_dir, config.keep_checkpoints)) as c:
            meta = c.latest_meta()
        if meta is not None:
            _check_resumable(meta, config)
    ds = dataset if dataset is not None else data.load_dataset(config)
    model = models.create_model(config.model, ds.num_classes, config.hidden)
    steps_per_epoch = ds.train_images.shape[0] // config.batch_size
    if steps_per_epoch == 0:
        raise UserError(
            f"batch_size {config.batch_size} is larger than the training set "
            f"({ds.train_images.shape[0]} examples)"
        )
    total_steps = config.num_epochs * steps_per_epoch
    run_steps = (
        min(total_steps, config.num_train_steps) if config.num_train_steps > 0 else total_steps
    )
    replicated, batch_sharding = _mesh_shardings(config.batch_size, config.eval_batch_size)

    method = methods.make_method(config)
    dynamic = methods.is_dynamic(method)
    tx = methods.make_optimizer(config, method, steps_per_epoch)
    cfg = steps.step_config(config, ds, total_steps)
    lr_at = methods.learning_rate(config, steps_per_epoch)
    fraction_at = methods.drop_fraction(config.drop_fraction, cfg.t_end)
    state = jax.device_put(steps.create_train_state(config, model, tx, ds.input_shape), replicated)

    os.makedirs(workdir, exist_ok=True)
    ckpts = checkpoints.Checkpoints(ckpt_dir, config.keep_checkpoints)
    start_time = time.time()
    try:
        if resume and ckpts.latest_step() is not None:
            # Settings are compared before any array is restored; the arrays are then checked
            # against their checksums.
            state, _ = ckpts.resume(state, functools.partial(_check_resumable, config=config))
            finished = _finished_results(workdir, int(state.step), run_steps)
            if finished is not None:  # nothing to do: leave every file of the run as it is
                return finished
        elif resume:
            first = next(
                s
                for s in range(1, run_steps + 1)
                if _checkpoint_due(config, s, steps_per_epoch, run_steps)
            )
            _refuse_resume_without_checkpoint(workdir, metrics_path, first)
        start = int(state.step)
        # On resume, keep the records up to the restored step (none when no checkpoint existed).
        log = metrics.MetricsLog(metrics_path, resume_step=(start or -1) if resume else None)
        layer_size = metrics.per_layer(jax.tree.map(lambda m: m.size, state.masks))
        if start == 0:
            log.write(
                {
                    "type": "init",
                    "step": 0,
                    "epoch": 0.0,
                    **_densities(state.masks, layer_size),
                    "size": layer_size,
                }
            )

        jit_step = functools.partial(jax.jit, donate_argnums=0, out_shardings=replicated)
        make = functools.partial(steps.train_step, model=model, tx=tx, cfg=cfg)
        plain_step = jit_step(functools.partial(make, topology=False))
        if config.topology_update == "cond" and dynamic:
            plain_step = update_step = jit_step(functools.partial(make, topology="cond"))
        else:
            update_step = jit_step(functools.partial(make, topology=True))
        eval_fn = jax.jit(
            functools.partial(steps.eval_step, model=model, mean=ds.mean, std=ds.std),
            out_shardings=replicated,
        )

        splits = {"test": (ds.test_images, ds.test_labels)}
        if ds.val_images is not None:
            splits["val"] = (ds.val_images, ds.val_labels)

        def evaluate(st) -> dict:
            out = {}
            for split, (images, labels) in splits.items():
                sums = _summed(
                    [
                        eval_fn(st.params, st.batch_stats, jax.device_put(b, batch_sharding))
                        for b in data.eval_batches(
                            images, labels, config.eval_batch_size, config.steps_per_eval
                        )
                    ]
                )
                out[f"{split}_loss"] = sums["loss"] / sums["count"]
                out[f"{split}_accuracy"] = sums["correct"] / sums["count"]
            return out

        batches = _prefetch(
            data.train_batches(ds, config.batch_size, config.seed, start), batch_sharding
        )
        bar = _progress(progress, run_label(config), run_steps, start)
        for step in range(start, run_steps):
            update_now = dynamic and bool(methods.is_update_step(step, cfg.delta_t, cfg.t_end))
            state, _, info = (update_step if update_now else plain_step)(state, next(batches))
            if update_now:
                log.write(
                    _topology_record(step, steps_per_epoch, fraction_at(step), info, layer_size)
                )
            done = step + 1
            if done % steps_per_epoch == 0 or done == run_steps:
                loss_sum, correct, count = (float(v) for v in jax.device_get(state.epoch_sums))
                if done % steps_per_epoch == 0:  # a --num_train_steps stop keeps the epoch's sums
                    state = state._replace(
                        epoch_sums=jax.device_put(np.zeros(3, np.float32), replicated)
                    )
                record = {
                    "type": "eval",
                    "step": done,
                    "epoch": done / steps_per_epoch,
                    "train_loss": loss_sum / count,
                    "train_accuracy": correct / (count * config.batch_size),
                    "lr": float(lr_at(step)),
                    "global_density": _densities(state.masks, layer_size)["global_density"],
                    **evaluate(state),
                    "wall_s": time.time() - start_time,
                }
                log.write(record)
                bar.set_postfix(
                    loss=f"{record['train_loss']:.3f}", test_acc=f"{record['test_accuracy']:.3f}"
                )
            if _checkpoint_due(config, done, steps_per_epoch, run_steps):
                ckpts.save(done, state, {"config": json.loads(config.to_json()), "step": done})
            bar.update(1)
        bar.close()
        ckpts.wait()
    finally:
        ckpts.close()

    final = evaluate(state)
    records = metrics.read(metrics_path)
    variables = steps._variables(state.params, state.batch_stats)
    layer_flops = flops.layer_flops(model, variables, ds.input_shape)
    updates = [r for r in records if r["type"] == "topology"]
    results = {
        "config": config.name,
        "method": config.method,
        "init": config.init,
        "sparsity": 0.0 if config.method == "dense" else float(config.sparsity),
        "seed": int(config.seed),
        "steps": int(state.step),
        "epochs": int(state.step) / steps_per_epoch,
        **final,
        "density": _densities(state.masks, layer_size)["global_density"],
        "layer_density": _densities(state.masks, layer_size)["density"],
        "layer_active": metrics.per_layer(gj.active_counts(state.masks)),
        "flops_ratio": flops.relative_flops(
            flops.kernel_flops(model, variables, ds.input_shape), state.masks
        ),
        "training_flops_ratio": flops.training_flops_ratio(
            layer_flops, records, int(state.step), methods.reads_dense_gradients(method)
        ),
        # bytes of the model as gj.compress exports it (bit-packed masks + values), and dense
        "model_bytes": gj.model_bytes(
            state.params, None if config.method == "dense" else state.masks
        ),
        "dense_bytes": gj.model_bytes(state.params),
        "n_updates": len(updates),
        "last_update_step": updates[-1]["step"] if updates else None,
        "lr_at_last_update": float(lr_at(updates[-1]["step"])) if updates else None,
        "moved_total": int(sum(r.get("moved", 0) for r in updates)),
        "wall_s": time.time() - start_time,
    }
    log.write({"type": "final", "step": int(state.step), **results})
    _write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
    label = run_label(config)
    plots.density_over_time({label: records}, os.path.join(workdir, "density_over_time.png"))
    plots.accuracy_curves({label: records}, os.path.join(workdir, "accuracy.png"))
    return results


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


def _checkpoint_due(config, done: int, steps_per_epoch: int, run_steps: int) -> bool:
    if done == run_steps:
        return True
    if config.checkpoint_every_steps > 0 and done % config.checkpoint_every_steps == 0:
        return True
    every = config.checkpoint_every_epochs
    return every > 0 and done % steps_per_epoch == 0 and (done // steps_per_epoch) % every == 0


def _densities(masks, layer_size: dict) -> dict:
    """Exact per-layer and global densities from the integer active counts."""
    active = metrics.per_layer(gj.active_counts(masks))
    return {
        "density": {k: active[k] / layer_size[k] for k in active},
        "global_density": sum(active.values()) / sum(layer_size[k] for k in active),
    }


def _topology_record(step: int, steps_per_epoch: int, fraction, info, layer_size: dict) -> dict:
    info = jax.device_get(info)
    active = metrics.per_layer(info["active"])
    return {
        "type": "topology",
        "step": step,
        "epoch": step / steps_per_epoch,
        "fraction": float(fraction),
        "density": {k: active[k] / layer_size[k] for k in active},
        "global_density": sum(active.values()) / sum(layer_size[k] for k in active),
        "active": active,
        "dropped": metrics.per_layer(info["dropped"]),
        "grown": metrics.per_layer(info["grown"]),
        "moved": int(info["moved"]),
        "skipped": bool(info["skipped"]),
    }


def train_methods(
    config, workdir: str, *, resume: bool = False, progress: bool = True
) -> list[dict]:
    """Trains every method of ``config.method`` (comma-separated) into ``workdir/<method>`` and
    writes ``results.md``, ``density_over_time.png`` and ``accuracy.png`` comparing them."""
    methods.check(config)
    names = methods.split_methods(config.method)
    if not names:
        raise UserError("--method is empty; name at least one method")
    dataset = data.load_dataset(config)
    results, runs = [], {}
    for name in names:
        run_config = config.copy_and_resolve_references()
        run_config.method = name
        run_dir = os.path.join(workdir, name)
        results.append(
            train_and_evaluate(
                run_config, run_dir, resume=resume, progress=progress, dataset=dataset
            )
        )
        runs[run_label(run_config)] = metrics.read(os.path.join(run_dir, "metrics.jsonl"))
    table = report.results_table(results)
    _write_atomically(os.path.join(workdir, "results.md"), table + "\n")
    plots.density_over_time(runs, os.path.join(workdir, "density_over_time.png"))
    plots.accuracy_curves(runs, os.path.join(workdir, "accuracy.png"))
    return results


if __name__ == "__main__":
    from experiments import main

    raise SystemExit(main.train_main())
