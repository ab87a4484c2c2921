"""The train state and the pure train / eval steps (jitted by the caller).

The masks live in the train state next to the params. A topology update at step t
(``gj.is_update_step``) runs before that step's optimizer update and uses the same batch
gradient (or the signal accumulated since the last update, or SNFS's gradient momentum): the
library's ``gj.update_topology`` (redistribute -> reset the optimizer state of pruned and
regrown weights), then the masked optimizer step with the new masks.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import ggr_jax as gj
from experiments import methods


class TrainState(NamedTuple):
    step: jax.Array  # shape=(), int32: optimizer steps taken = data position
    params: Any  # float32 pytree, zero outside the masks
    batch_stats: Any  # BatchNorm statistics ({} for models without BatchNorm)
    masks: Any  # bool leaves like params; None for dense leaves
    opt_state: Any  # the masked optax chain's state
    momentum: Any  # SNFS: float32 EMA of gradients like params; () otherwise
    rng: jax.Array  # uint32[2] PRNG key data; step t uses fold_in(rng, t)
    epoch_sums: jax.Array  # shape=(3,), float32: loss sum, correct predictions, steps this epoch


class StepConfig(NamedTuple):
    """Static (hashable) settings of the train step."""

    method: gj.Method | methods.GMP | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    label_smoothing: float
    snfs_momentum: float
    delta_t: int
    t_end: int
    drop_fraction: float
    min_active: int | None  # None: the library default (shape[-1] per layer)


def step_config(config, dataset, total_steps: int, method) -> StepConfig:
    """The step's settings; ``method`` is ``methods.make_method(config)``."""
    return StepConfig(
        method,
        dataset.mean,
        dataset.std,
        bool(config.augment),
        float(config.label_smoothing),
        float(config.snfs_momentum),
        int(config.delta_t),
        methods.end_step(config.end_fraction, total_steps),
        float(config.drop_fraction),
        None if config.min_active < 0 else int(config.min_active),
    )


# Module-level, so runs that share parameter shapes (CIFAR-100 and Tiny-ImageNet with one network,
# several runs in one process) share the compiled program.
_initial_masks = jax.jit(
    methods.initial_masks, static_argnames=("method", "init", "sparsity", "dense_first")
)


def create_train_state(config, model, tx, input_shape, method) -> TrainState:
    """Initial params, masks and optimizer state from ``config.seed``; ``method`` is
    ``methods.make_method(config)``."""
    init_key, mask_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
    initial = jax.jit(functools.partial(model.init, train=False))(init_key, dummy)
    masks = _initial_masks(
        initial["params"],
        mask_key,
        method=config.method,
        init=config.init,
        sparsity=float(config.sparsity),
        dense_first=bool(config.dense_first),
    )
    params = jax.jit(gj.apply_masks)(initial["params"], masks)
    momentum = ()
    if method is not None and method.needs_momentum:
        momentum = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return TrainState(
        jnp.zeros((), jnp.int32),
        params,
        initial.get("batch_stats", {}),
        masks,
        jax.jit(tx.init)(params),
        momentum,
        train_key,
        jnp.zeros(3, jnp.float32),
    )


def preprocess(images, mean, std):
    x = images.astype(jnp.float32)
    shape = (1,) * (x.ndim - 1) + (len(mean),)
    return (x - jnp.asarray(mean, jnp.float32).reshape(shape)) / jnp.asarray(
        std, jnp.float32
    ).reshape(shape)


def augment(x, key):
    """Random crop after 4-pixel zero padding and random horizontal flip, per example."""
    n, h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = jax.random.randint(k_crop, (n, 2), 0, 9)
    crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, x.shape[3])))
    x = crop(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def variables(params, batch_stats) -> dict:
    """The model's variables: ``{"params": ..., "batch_stats": ...}`` (no empty batch_stats)."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _loss_and_grads(state: TrainState, x, labels, *, model, label_smoothing: float):
    """``((loss, (logits, new batch_stats)), grads)`` of one training batch."""

    def loss_fn(params):
        v = variables(params, state.batch_stats)
        if state.batch_stats:
            logits, new_vars = model.apply(v, x, train=True, mutable=["batch_stats"])
            new_stats = new_vars["batch_stats"]
        else:
            logits, new_stats = model.apply(v, x, train=True), state.batch_stats
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, new_stats)

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def _topology(state: TrainState, grads, momentum, key, *, tx, cfg: StepConfig, topology):
    """``gj.update_topology`` of this step: ``(params, masks, opt_state, info)``; info is None
    when the method is not dynamic or ``topology`` is False."""
    method, step = cfg.method, state.step
    if not methods.is_dynamic(method) or topology is False:
        return state.params, state.masks, state.opt_state, None
    return gj.update_topology(
        state.params,
        state.masks,
        grads,
        state.opt_state,
        key,
        optimizer=tx,
        method=method,
        fraction=methods.drop_fraction(cfg.drop_fraction, cfg.t_end)(step),
        min_active=cfg.min_active,
        momentum=momentum if method.needs_momentum else None,
        due=gj.is_update_step(step, cfg.delta_t, cfg.t_end) if topology == "cond" else None,
        rewire=methods.rewire(method, step, cfg.delta_t, cfg.t_end),
    )


def train_step(state: TrainState, batch, *, model, tx, cfg: StepConfig, topology):
    """One optimizer step. ``topology``: "cond" (update under lax.cond when the schedule says so),
    True (always update: the separately jitted update step), False (never)."""
    images, labels = batch
    step = state.step
    key = jax.random.fold_in(state.rng, step)
    k_aug, k_topo = jax.random.split(key)
    x = preprocess(images, cfg.mean, cfg.std)
    if cfg.augment:
        x = augment(x, k_aug)
    (loss, (logits, batch_stats)), grads = _loss_and_grads(
        state, x, labels, model=model, label_smoothing=cfg.label_smoothing
    )
    momentum = state.momentum
    if cfg.method is not None and cfg.method.needs_momentum:
        momentum = gj.gradient_momentum(momentum, grads, decay=cfg.snfs_momentum)
    params, masks, opt_state, info = _topology(
        state, grads, momentum, k_topo, tx=tx, cfg=cfg, topology=topology
    )
    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = state.epoch_sums + jnp.stack(
        [loss.astype(jnp.float32), correct, jnp.ones((), jnp.float32)]
    )
    new_state = state._replace(
        step=step + 1,
        params=params,
        batch_stats=batch_stats,
        masks=masks,
        opt_state=opt_state,
        momentum=momentum,
        epoch_sums=sums,
    )
    return new_state, {"loss": loss}, info


def eval_step(params, batch_stats, batch, *, model, mean, std):
    """Summed loss, correct predictions and count over the valid examples of one padded batch."""
    images, labels, valid = batch
    logits = model.apply(variables(params, batch_stats), preprocess(images, mean, std), train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    valid_f = valid.astype(jnp.float32)
    return {
        "loss": jnp.sum(loss * valid_f),
        "correct": jnp.sum((jnp.argmax(logits, -1) == labels) & valid),
        "count": jnp.sum(valid.astype(jnp.int32)),
    }
