"""One unit of work per process: what a worker measures, keyed by stable ids.

A unit is ``mlp_1M``, ``mlp_10M``, ``layers_<n>`` or ``shape_<model>``. Each returns
``{"values": {id: number}, "info": {...}}``; value ids are ``<kind>:<what>``, kinds ``ms``
(median ms of a call in this process), ``compile_s``, ``temp_bytes`` (XLA's temporary buffers),
``xla_bytes`` (XLA's bytes accessed, loop bodies counted once), ``hlo_lines``, ``rss_bytes``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ggr_jax as gj

from . import baselines, harness, models

BATCH = 128
SPARSITY = 0.9  # ERK
FRACTION = 0.3  # drop fraction of an update
LAYER_PARAMS = 2**20  # total params of the compile-time models


class Options(NamedTuple):
    quick: bool = False
    baselines: bool = True
    train_step: bool = True
    embeddings: str = "dense"  # GPT-2's embeddings: "dense" or "sparse"
    methods: tuple[str, ...] | None = None  # MLP updates (ids of baselines.METHODS); None: all


def _repeats(quick: bool, big: bool) -> tuple[int, int]:
    """(calls, rounds) of the interleaved timing."""
    if quick:
        return 1, 2
    return (3, 16) if big else (8, 8)  # 48 calls of each 10M variant: ratios near 1 need them


def _compile_updates(fns, values, method_ids, args) -> None:
    for mid in method_ids:
        seconds, compiled = harness.compile_program(
            baselines.update_fn(baselines.METHODS[mid]), *args
        )
        values[f"compile_s:update_{mid}"] = seconds
        for kind, v in harness.program_stats(compiled).items():
            values[f"{kind}:update_{mid}"] = v
        fns[f"update_{mid}"] = (compiled, args)


def _sparse_mlp(sizes: tuple[int, ...]):
    model = models.MLP(sizes)
    x = jax.random.normal(jax.random.key(2), (BATCH, sizes[0]))
    y = jax.random.randint(jax.random.key(3), (BATCH,), 0, sizes[-1])
    params = model.init(jax.random.key(0), x)["params"]
    masks = gj.random_masks(params, gj.erk_densities(params, SPARSITY), jax.random.key(1))
    params = gj.apply_masks(params, masks)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(
            model.apply({"params": p}, x), y
        ).mean()

    return params, masks, x, y, loss


def mlp(label: str, opts: Options) -> dict[str, Any]:
    """Dense, masked and wrapper steps, the floor and every update, interleaved; then baselines."""
    sizes = (models.QUICK_MLP_SIZES if opts.quick else models.MLP_SIZES)[label]
    params, masks, x, y, loss = _sparse_mlp(sizes)
    grads = jax.jit(jax.grad(loss))(params, x, y)
    steps = baselines.make_steps(loss)
    fns: dict[str, tuple] = {}
    for sid, (step, tx) in steps.items():
        data = (x, y) if sid == "dense_step" else (masks, x, y)
        fns[sid] = (step, (params, tx.init(params), *data))
    fns["floor"] = (jax.jit(baselines.floor_pass), (params,))
    values: dict[str, float] = {}
    args = (params, masks, grads, jax.random.key(4), jnp.float32(FRACTION))
    method_ids = opts.methods or (("rigl", "ggr") if opts.quick else tuple(baselines.METHODS))
    _compile_updates(fns, values, method_ids, args)
    calls, rounds = _repeats(opts.quick, big=label != "1M")
    values.update(
        {f"ms:{k}": v for k, v in harness.interleaved(fns, calls=calls, rounds=rounds).items()}
    )
    if opts.baselines:
        values.update(_baselines(params, masks, grads, fns["dense_step"], quick=opts.quick))
    n_params = optax.tree_utils.tree_size(params)
    info = {"sizes": list(sizes), "n_params": n_params, "param_bytes": _nbytes(params)}
    return {"values": values, "info": info}


def _baselines(params, masks, grads, dense, *, quick: bool) -> dict[str, float]:
    """The sort baselines against the dense step, in rounds of their own (they take seconds)."""
    n_drop = tuple(int(np.floor(FRACTION * int(masks[n]["kernel"].sum()))) for n in params)
    fraction = jnp.float32(FRACTION)
    candidates = {
        "baseline_argsort_rigl": (baselines.argsort_rigl, (params, masks, grads, fraction)),
        "baseline_concat_topk_ggr": (
            functools.partial(baselines.concat_top_k_ggr, n_drop=n_drop),
            (params, masks, grads),
        ),
    }
    values, fns = {}, {"dense_step_baselines": dense}
    for bid, (f, args) in candidates.items():
        values[f"compile_s:{bid}"], compiled = harness.compile_program(f, *args)
        values.update({f"{k}:{bid}": v for k, v in harness.program_stats(compiled).items()})
        fns[bid] = (compiled, args)
    times = harness.interleaved(fns, calls=1 if quick else 3, rounds=1 if quick else 2)
    values.update({f"ms:{k}": v for k, v in times.items()})
    return values


def layers(n_layers: int, opts: Options) -> dict[str, Any]:
    """Compile time and program size of the default GGR update on ``n_layers`` square layers."""
    total = 2**12 if opts.quick else LAYER_PARAMS
    params, masks, grads = models.square_layers(n_layers, total, SPARSITY)
    args = (params, masks, grads, jax.random.key(1), jnp.float32(FRACTION))
    seconds, compiled = harness.compile_program(baselines.update_fn(gj.ggr()), *args)
    values = {
        "compile_s:update_ggr": seconds,
        "hlo_lines:update_ggr": compiled.as_text().count("\n"),
    }
    info = {"n_layers": n_layers, "n_params": optax.tree_utils.tree_size(params)}
    return {"values": values, "info": info}


def _random_like(tree, key: jax.Array):
    leaves, treedef = jax.tree.flatten(tree)
    out = [
        jax.random.normal(jax.random.fold_in(key, i), x.shape) * 1e-3 for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def _nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _train_step(model, state, x, y):
    """A dense SGD + momentum step of ``model`` (batch statistics updated), and its args."""
    loss = models.loss_fn(model)
    tx = optax.sgd(0.01, momentum=0.9)

    def step(params, opt_state, state, x, y):
        (value, state), g = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state, value

    return step, tx


def _update_memory(fns: dict, args: tuple) -> dict[str, float]:
    """Compiles the GGR and RigL updates into ``fns``; the GGR update's extra memory when run.

    ``rss_bytes``: growth of the process's peak RSS over what it held before (CPU);
    ``device_bytes``: growth of the accelerator's peak bytes in use (where it reports them).
    """
    values: dict[str, float] = {}
    rss0, peak0 = harness.rss_bytes()
    dev0 = harness.device_bytes()
    _compile_updates(fns, values, ("ggr", "rigl"), args)
    jax.block_until_ready(fns["update_ggr"][0](*args))
    values["rss_bytes:update_ggr"] = max(harness.rss_bytes()[1] - max(rss0, peak0), 0.0)
    if dev0 is not None and (dev1 := harness.device_bytes()) is not None:
        values["device_bytes:update_ggr"] = max(dev1[1] - max(dev0), 0.0)
    return values


def shape(name: str, opts: Options) -> dict[str, Any]:
    """Update time against the floor (and a dense step), compile time, extra memory."""
    spec_ = models.real_shape(name, quick=opts.quick, embeddings=opts.embeddings)
    variables = models.init_variables(spec_.model, spec_.x, jax.random.key(0))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    spec = gj.sparsifiable(params, exclude=spec_.exclude)
    densities = gj.erk_densities(params, SPARSITY, spec=spec)
    masks = gj.random_masks(params, densities, jax.random.key(1))
    params = gj.apply_masks(params, masks)
    grads = _random_like(params, jax.random.key(3))  # stand-in gradients, no ties
    args = (params, masks, grads, jax.random.key(4), jnp.float32(FRACTION))
    fns: dict[str, tuple] = {}
    values = _update_memory(fns, args)
    fns["floor"] = (jax.jit(baselines.floor_pass), (params,))
    if opts.train_step:
        step, tx = _train_step(spec_.model, state, spec_.x, spec_.y)
        step_args = (params, tx.init(params), state, spec_.x, spec_.y)
        values["compile_s:train_step"], compiled = harness.compile_program(step, *step_args)
        fns["train_step"] = (compiled, step_args)
    times = harness.interleaved(fns, calls=1 if opts.quick else 3, rounds=2 if opts.quick else 3)
    values.update({f"ms:{k}": v for k, v in times.items()})
    n_sparse = sum(m.size for m in jax.tree.leaves(masks))
    info = {
        "model": name,
        "n_params": optax.tree_utils.tree_size(params),
        "n_sparsified": int(n_sparse),
        "param_bytes": _nbytes(params),
        "batch": list(spec_.x.shape),
        "embeddings": opts.embeddings if name == "gpt2" else None,
        "n_conv_kernels": sum(p.ndim == 4 for p in jax.tree.leaves(params)),
    }
    return {"values": values, "info": info}


def unit(uid: str, opts: Options) -> dict[str, Any]:
    """Dispatches a unit id to its measurement."""
    kind, _, arg = uid.partition("_")
    if kind == "mlp":
        return mlp(arg, opts)
    if kind == "layers":
        return layers(int(arg), opts)
    if kind == "shape":
        return shape(arg, opts)
    raise ValueError(f"unknown unit {uid!r}")
