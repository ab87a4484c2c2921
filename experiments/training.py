"""Library-like training: ``train_and_evaluate(config, workdir)`` trains one method and returns
its results; ``train_methods`` trains each method of a comma-separated ``config.method`` and
writes the comparison. The command line is ``python -m experiments.train`` (experiments/main.py).

The roles: :mod:`experiments.rundir` (a fresh run or a resume), :mod:`experiments.build` (setup),
:mod:`experiments.loop` (training), :mod:`experiments.evaluation` and :mod:`experiments.results`
(reporting).
"""

import contextlib
import os
import time

from experiments import (
    build,
    checkpoints,
    data,
    evaluation,
    loop,
    methods,
    metrics,
    plots,
    report,
    results,
    rundir,
)
from experiments.errors import UserError


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
    rundir.check_workdir(config, workdir, resume)
    run = build.build_run(config, dataset)
    state = build.initial_state(run)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    os.makedirs(workdir, exist_ok=True)
    ckpts = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    start_time = time.time()
    with contextlib.closing(ckpts):
        if resume:
            state, finished = rundir.restore(ckpts, state, config, workdir, run)
            if finished is not None:  # nothing to do: leave every file of the run as it is
                return finished
        start = int(state.step)
        # On resume, keep the records up to the restored step (none when no checkpoint existed).
        log = metrics.MetricsLog(metrics_path, resume_step=(start or -1) if resume else None)
        if start == 0:
            log.write(metrics.init_record(state.masks, metrics.layer_sizes(state.masks)))
        programs = build.compile_steps(run)
        evaluate = evaluation.make_evaluate(run, programs.eval)
        state = loop.train_loop(
            run,
            programs,
            state,
            log=log,
            ckpts=ckpts,
            evaluate=evaluate,
            progress=progress,
            start_time=start_time,
        )
    records = metrics.read(metrics_path)
    out = results.final_results(run, state, records, evaluate(state), start_time)
    results.write(workdir, config, out, records, log)
    return out


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
    out, runs = [], {}
    for name in names:
        run_config = config.copy_and_resolve_references()
        run_config.method = name
        run_dir = os.path.join(workdir, name)
        out.append(
            train_and_evaluate(
                run_config, run_dir, resume=resume, progress=progress, dataset=dataset
            )
        )
        runs[results.run_label(run_config)] = metrics.read(os.path.join(run_dir, "metrics.jsonl"))
    table = report.results_table(out)
    rundir.write_atomically(os.path.join(workdir, "results.md"), table + "\n")
    plots.density_over_time(runs, os.path.join(workdir, "density_over_time.png"))
    plots.accuracy_curves(runs, os.path.join(workdir, "accuracy.png"))
    return out
