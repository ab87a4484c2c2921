"""From config fields to ggr_jax objects: method, initial masks, optimizer, schedules."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import ggr_jax as gj
from experiments.errors import UserError

METHODS = ("dense", "static", "set", "rigl", "snfs", "ggr")
DENSE_TO_SPARSE = ("gmp",)  # gradual magnitude pruning: tests/test_experiments_gmp.py
INITS = ("uniform", "erk")


def check(config) -> None:
    """Raises `UserError` for a config value that is out of range (one line naming the field)."""

    def choice(field, allowed):
        if config[field] not in allowed:
            raise UserError(
                f"unknown {field} {config[field]!r}; choose one of: {', '.join(allowed)}"
            )

    for m in split_methods(config.method):
        if m not in METHODS + DENSE_TO_SPARSE:
            allowed = ", ".join(METHODS + DENSE_TO_SPARSE)
            raise UserError(f"unknown method {m!r}; choose one of: {allowed}")
    choice("init", INITS)
    choice("optimizer", ("sgd", "adam"))
    choice("lr_schedule", ("cosine", "step", "constant"))
    choice("topology_update", ("cond", "separate"))
    choice("ggr_signal", ("batch", "mean", "ema", "mean_abs"))
    choice("ggr_normalize", ("none", "l2", "rms", "mean", "max", "weight"))
    if not 0.0 <= config.signal_decay < 1.0:
        raise UserError(f"signal_decay must be in [0, 1), got {config.signal_decay}")
    if config.validation_size < 0:
        raise UserError(f"validation_size must be >= 0, got {config.validation_size}")
    if config.min_active < -1:
        raise UserError(
            f"min_active must be -1 (shape[-1] per layer) or >= 0, got {config.min_active}"
        )
    if not 0.0 <= config.sparsity < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {config.sparsity}")
    if not 0.0 <= config.drop_fraction <= 1.0:
        raise UserError(f"drop_fraction must be in [0, 1], got {config.drop_fraction}")
    if not 0.0 <= config.end_fraction <= 1.0:
        raise UserError(f"end_fraction must be in [0, 1], got {config.end_fraction}")
    if not 0.0 <= config.ggr_rho <= 1.0:
        raise UserError(f"ggr_rho must be in [0, 1], got {config.ggr_rho}")
    for field in ("delta_t", "batch_size", "eval_batch_size", "num_epochs"):
        if config[field] < 1:
            raise UserError(f"{field} must be at least 1, got {config[field]}")
    if config.learning_rate <= 0:
        raise UserError(f"learning_rate must be positive, got {config.learning_rate}")
    _check_numbers(config)


def _check_numbers(config) -> None:
    """Every float is finite; optimizer settings and the seed lie in their ranges."""
    for field, value in config.items():
        values = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f"{field} must be a finite number, got {value!r}")
    if not 0.0 <= config.momentum < 1.0:
        raise UserError(f"momentum must be in [0, 1), got {config.momentum}")
    if config.weight_decay < 0:
        raise UserError(f"weight_decay must be >= 0, got {config.weight_decay}")
    if not 0 <= config.seed < 2**31:
        raise UserError(f"seed must be in [0, 2**31), got {config.seed}")


def split_methods(method: str) -> list[str]:
    return [m.strip() for m in str(method).split(",") if m.strip()]


class GMP(NamedTuple):
    """Gradual magnitude pruning (Zhu & Gupta 2017, https://arxiv.org/abs/1710.01878) as a method
    of the train step: dense start, per-layer magnitude pruning to a cubic sparsity schedule at
    the topology-update steps (every delta_t steps while step < t_end), masks frozen after."""

    name: str = "gmp"
    final_sparsity: float = 0.95
    allocation: str = "per_layer"  # per_layer (the paper; ends uniform) | global
    signal: str = "batch"  # (read like a gj.Method's fields by the train loop)
    needs_momentum: bool = False
    is_static: bool = False


def make_method(config) -> gj.Method | GMP | None:
    """The ggr_jax method of ``config.method`` (a single name); None for dense training."""
    name = config.method
    if name == "dense":
        return None
    if name == "gmp":
        return GMP(final_sparsity=float(config.sparsity))
    if name == "ggr":
        normalize = None if config.ggr_normalize == "none" else config.ggr_normalize
        return gj.ggr(
            rho=config.ggr_rho,
            signal=config.ggr_signal,
            normalize=normalize,
            unit_floor=bool(config.ggr_unit_floor),
        )
    return {"static": gj.static, "set": gj.set, "rigl": gj.rigl, "snfs": gj.snfs}[name]()


def reads_dense_gradients(method: gj.Method | None) -> bool:
    """Whether the method reads the dense gradient at every step (SNFS's momentum, an
    accumulated regrowth signal), not only at topology updates (RigL's accounting)."""
    return method is not None and (method.needs_momentum or method.signal != "batch")


def is_dynamic(method: gj.Method | None) -> bool:
    return method is not None and not method.is_static


def initial_masks(params, key, *, method: str, init: str, sparsity: float, dense_first: bool):
    """Masks of the initial topology: all-True for dense, else uniform or ERK densities."""
    spec = gj.sparsifiable(params)
    if method in ("dense", "gmp"):  # GMP starts dense
        return jax.tree.map(lambda p, s: jnp.ones(p.shape, bool) if s else None, params, spec)
    if init == "erk":
        densities = gj.erk_densities(params, sparsity, spec=spec)
    else:
        densities = gj.uniform_densities(params, sparsity, spec=spec, dense_first=dense_first)
    return gj.random_masks(params, densities, key)


def gmp_prune(method: GMP, params, masks, step, delta_t: int, t_end: int):
    """GMP's prune at a topology-update step, with ``gj.redistribute``'s info fields.

    The cubic schedule runs from the first update step (sparsity 0) to the last one before
    ``t_end`` (``method.final_sparsity``).
    """
    last = max((max(t_end, 1) - 1) // delta_t * delta_t, delta_t)
    schedule = gj.gmp_schedule(
        method.final_sparsity, begin_step=delta_t, end_step=last, update_every=delta_t
    )
    new_params, new_masks, info = gj.magnitude_prune(
        params, masks, sparsity=schedule(step), allocation=method.allocation
    )
    grown = jax.tree.map(jnp.zeros_like, info["pruned"])
    info = {
        "active": info["active"],
        "dropped": info["pruned"],
        "grown": grown,
        "moved": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.bool_),
    }
    return new_params, new_masks, info


def rewire(method, step, delta_t: int, t_end: int):
    """``gj.update_topology``'s ``rewire`` for ``method``: GMP's prune at ``step``; None (the
    library's ``redistribute``) for every ``gj.Method``."""
    if not isinstance(method, GMP):
        return None

    def prune(params, masks, signal, key):
        del signal, key  # magnitude only
        return gmp_prune(method, params, masks, step, delta_t, t_end)

    return prune


def learning_rate(config, steps_per_epoch: int) -> optax.Schedule:
    total = config.num_epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    lr = config.learning_rate
    if config.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
    elif config.lr_schedule == "step":
        bounds = {
            int(e * steps_per_epoch) - warmup: config.lr_decay_factor
            for e in config.lr_decay_epochs
        }
        main = optax.piecewise_constant_schedule(lr, bounds)
    else:
        main = optax.constant_schedule(lr)
    if warmup > 0:
        main = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
    return _float_count(main)


def _float_count(schedule: optax.Schedule) -> optax.Schedule:
    """Evaluates ``schedule`` at a float32 step (optax's schedules mix int counts and floats, which
    strict dtype promotion rejects)."""
    return lambda count: schedule(jnp.asarray(count).astype(jnp.float32))


def drop_fraction(alpha: float, t_end: int) -> optax.Schedule:
    """alpha/2 * (1 + cos(pi t / t_end)): the fraction dropped at a topology update at step t."""
    return _float_count(optax.cosine_decay_schedule(alpha, max(t_end, 1)))


def end_step(end_fraction: float, total_steps: int) -> int:
    """t_end: the step from which the masks are frozen."""
    return int(end_fraction * total_steps)


def make_optimizer(config, method: gj.Method | None, steps_per_epoch: int):
    """Masked optimizer: (gradient signal) -> mask grads -> weight decay -> SGD/Adam -> mask
    updates. The signal (GGR's or RigL's ``mean``/``ema``/``mean_abs``) reads dense gradients."""
    lr = learning_rate(config, steps_per_epoch)
    parts = []
    if method is not None and method.signal != "batch":
        parts.append(gj.accumulate_gradients(method.signal, decay=config.signal_decay))
    parts.append(gj.mask_gradients())
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.optimizer == "sgd":
        parts.append(optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov))
    else:
        parts.append(optax.adam(lr))
    parts.append(gj.mask_updates())
    return optax.chain(*parts)
