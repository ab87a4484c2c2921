"""A run's setup from its config: data, model, method, optimizer, shardings and compiled steps.

:func:`build_run` makes everything a run needs once (the method too, which the optimizer, the
train state and the step settings all read), before the loop starts.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data, methods, models, steps
from experiments.errors import UserError


class Run(NamedTuple):
    """What one training run is made of (no arrays of its state)."""

    config: Any
    dataset: data.Dataset
    model: Any
    method: Any  # gj.Method | methods.GMP | None (dense)
    tx: Any  # the masked optax chain
    cfg: steps.StepConfig
    steps_per_epoch: int
    run_steps: int  # steps this process runs (--num_train_steps may stop early)
    replicated: NamedSharding
    batch_sharding: NamedSharding
    lr_at: Callable  # the learning-rate schedule of the step
    fraction_at: Callable  # the drop fraction of a topology update at a step


class Programs(NamedTuple):
    """The jitted train steps (plain and topology-update) and the eval step."""

    plain: Callable
    update: Callable
    eval: Callable


def mesh_shardings(batch_size: int, eval_batch_size: int):
    """``(replicated, batch-sharded)`` over all devices; the batches must divide evenly."""
    n = jax.device_count()
    for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size % n:
            raise UserError(f"{name} {size} is not divisible by the {n} devices; change --{name}")
    mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def build_run(config, dataset: data.Dataset | None = None) -> Run:
    """The run of ``config`` (one method) on ``dataset`` (loaded from the config if None)."""
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
    replicated, batch_sharding = mesh_shardings(config.batch_size, config.eval_batch_size)
    method = methods.make_method(config)
    cfg = steps.step_config(config, ds, total_steps, method)
    return Run(
        config=config,
        dataset=ds,
        model=model,
        method=method,
        tx=methods.make_optimizer(config, method, steps_per_epoch),
        cfg=cfg,
        steps_per_epoch=steps_per_epoch,
        run_steps=run_steps,
        replicated=replicated,
        batch_sharding=batch_sharding,
        lr_at=methods.learning_rate(config, steps_per_epoch),
        fraction_at=methods.drop_fraction(config.drop_fraction, cfg.t_end),
    )


def initial_state(run: Run) -> steps.TrainState:
    """The train state at step 0 of ``config.seed``, replicated over the devices."""
    state = steps.create_train_state(
        run.config, run.model, run.tx, run.dataset.input_shape, run.method
    )
    return jax.device_put(state, run.replicated)


def compile_steps(run: Run) -> Programs:
    """The jitted steps: with ``topology_update="cond"`` one train step for every step."""
    jit_step = functools.partial(jax.jit, donate_argnums=0, out_shardings=run.replicated)
    make = functools.partial(steps.train_step, model=run.model, tx=run.tx, cfg=run.cfg)
    plain = jit_step(functools.partial(make, topology=False))
    if run.config.topology_update == "cond" and methods.is_dynamic(run.method):
        plain = update = jit_step(functools.partial(make, topology="cond"))
    else:
        update = jit_step(functools.partial(make, topology=True))
    ds = run.dataset
    eval_fn = jax.jit(
        functools.partial(steps.eval_step, model=run.model, mean=ds.mean, std=ds.std),
        out_shardings=run.replicated,
    )
    return Programs(plain, update, eval_fn)
