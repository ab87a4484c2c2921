"""A finished run's results: ``results.json``, the ``final`` record and the run's plots."""

import json
import os
import time

import ggr_jax as gj
from experiments import flops, methods, metrics, plots, steps
from experiments.rundir import write_atomically


def run_label(config) -> str:
    """The run's name in tables, plots and the progress bar."""
    if config.method == "dense":
        return "dense"
    return f"{config.method} {config.init} s={config.sparsity:g}"


def _update_stats(records: list[dict], lr_at) -> dict:
    updates = [r for r in records if r["type"] == "topology"]
    return {
        "n_updates": len(updates),
        "last_update_step": updates[-1]["step"] if updates else None,
        "lr_at_last_update": float(lr_at(updates[-1]["step"])) if updates else None,
        "moved_total": int(sum(r.get("moved", 0) for r in updates)),
    }


def final_results(run, state, records: list[dict], final: dict, start_time: float) -> dict:
    """The results dict of a run that ended at ``state`` (``final``: its last evaluation)."""
    config, model, shape = run.config, run.model, run.dataset.input_shape
    variables = steps.variables(state.params, state.batch_stats)
    layer_size = metrics.layer_sizes(state.masks)
    density = metrics.densities(state.masks, layer_size)
    step = int(state.step)
    return {
        "config": config.name,
        "method": config.method,
        "init": config.init,
        "sparsity": 0.0 if config.method == "dense" else float(config.sparsity),
        "seed": int(config.seed),
        "steps": step,
        "epochs": step / run.steps_per_epoch,
        **final,
        "density": density["global_density"],
        "layer_density": density["density"],
        "layer_active": metrics.per_layer(gj.active_counts(state.masks)),
        "flops_ratio": flops.relative_flops(
            flops.kernel_flops(model, variables, shape), state.masks
        ),
        "training_flops_ratio": flops.training_flops_ratio(
            flops.layer_flops(model, variables, shape),
            records,
            step,
            methods.reads_dense_gradients(run.method),
        ),
        # bytes of the model as gj.compress exports it (bit-packed masks + values), and dense
        "model_bytes": gj.model_bytes(
            state.params, None if config.method == "dense" else state.masks
        ),
        "dense_bytes": gj.model_bytes(state.params),
        **_update_stats(records, run.lr_at),
        "wall_s": time.time() - start_time,
    }


def write(workdir: str, config, results: dict, records: list[dict], log) -> None:
    """The ``final`` record, ``results.json``, ``density_over_time.png`` and ``accuracy.png``."""
    log.write({"type": "final", "step": results["steps"], **results})
    write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))
    label = run_label(config)
    plots.density_over_time({label: records}, os.path.join(workdir, "density_over_time.png"))
    plots.accuracy_curves({label: records}, os.path.join(workdir, "accuracy.png"))
