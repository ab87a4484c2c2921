"""Measures where the topology update should run: under ``lax.cond`` inside the one jitted train
step, or as a separately jitted update step that Python calls on update steps only.

    python -m experiments.topology_benchmark [--config digits_mlp] [--steps 400] [--FIELD VALUE ...]

Prints compile time and steady-state milliseconds per step (median of interleaved repeats) for both.
Data are random arrays of the config's shapes, so every config runs offline.

Measured on the 2-core CPU (shared, load average 9-12, so +-30% noise), GGR, 400 steps:

| config | separate ms/step | cond ms/step | compile separate (plain + update) | compile cond |
|---|---|---|---|---|
| digits_mlp (delta_t=45) | 0.22 | 0.62 | 2.3 + 5.9 s | 5.2 s |
| fashion_mnist_lenet300 (delta_t=100) | 1.63 | 1.66 | 1.0 + 23.0 s | 17.3 s |
| fashion_mnist_lenet5 (delta_t=100) | 41.1 | 39.5 | 3.4 + 24.5 s | 37.9 s |

The separate update step is never slower beyond noise and ~3x faster per step when a step is
cheap (the cond costs a fixed overhead every step); compile cost is dominated by redistribute in
both. Hence ``topology_update="separate"`` is the default; ``"cond"`` is there for loops that must
be one program (e.g. under ``lax.scan``).
"""

import functools
import statistics
import sys
import time

import jax
import numpy as np

import ggr_jax as gj
from experiments import data, main, methods, models, steps
from experiments.errors import UserError

_SHAPES = {
    "digits": ((8, 8, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar100": ((32, 32, 3), 100),
    "tiny_imagenet": ((64, 64, 3), 200),
}


def _fake_dataset(config, n: int) -> data.Dataset:
    shape, classes = _SHAPES[config.dataset]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (n,) + shape).astype(np.uint8)
    y = rng.integers(0, classes, n).astype(np.int32)
    return data.Dataset(x, y, x[:8], y[:8], classes, (127.0,) * shape[-1], (64.0,) * shape[-1])


def benchmark(config, num_steps: int, repeats: int = 3) -> dict:
    ds = _fake_dataset(config, 4 * config.batch_size)
    model = models.create_model(config.model, ds.num_classes, config.hidden)
    steps_per_epoch = ds.train_images.shape[0] // config.batch_size
    total = num_steps * 4
    method = methods.make_method(config)
    tx = methods.make_optimizer(config, method, steps_per_epoch)
    cfg = steps.step_config(config, ds, total, method)
    cfg = cfg._replace(t_end=total)
    batches = [
        jax.device_put(b)
        for b, _ in zip(data.train_batches(ds, config.batch_size, 0), range(4), strict=False)
    ]
    make = functools.partial(steps.train_step, model=model, tx=tx, cfg=cfg)
    fns = {
        "plain": jax.jit(functools.partial(make, topology=False), donate_argnums=0),
        "update": jax.jit(functools.partial(make, topology=True), donate_argnums=0),
        "cond": jax.jit(functools.partial(make, topology="cond"), donate_argnums=0),
    }
    out = {}
    state0 = steps.create_train_state(config, model, tx, ds.input_shape, method)
    for name, fn in fns.items():
        t = time.perf_counter()
        fn.lower(state0, batches[0]).compile()
        out[f"compile_{name}_s"] = time.perf_counter() - t

    def run(mode):
        state = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state0)
        start = time.perf_counter()
        for step in range(num_steps):
            update_now = bool(gj.is_update_step(step, cfg.delta_t, cfg.t_end))
            if mode == "cond":
                fn = fns["cond"]
            else:
                fn = fns["update"] if update_now else fns["plain"]
            state, _, _ = fn(state, batches[step % len(batches)])
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / num_steps * 1e3

    run("cond"), run("separate")  # warm up (first calls, allocations)
    times = {"cond": [], "separate": []}
    for _ in range(repeats):
        for mode in times:
            times[mode].append(run(mode))
    for mode, ts in times.items():
        out[f"{mode}_ms_per_step"] = statistics.median(ts)
    return out


def _main(argv):
    parser = main.Parser(prog="python -m experiments.topology_benchmark")
    parser.add_argument("--config", default="digits_mlp")
    parser.add_argument("--steps", type=int, default=400)
    args, rest = parser.parse_known_args(argv)
    config = main.build_config(args.config, ["--method=ggr"] + rest)
    if config.method in ("dense", "static") or "," in config.method:
        raise UserError("benchmark one dynamic method, e.g. --method ggr")
    res = benchmark(config, args.steps)
    print(
        f"{args.config} {config.method} delta_t={config.delta_t} ({jax.devices()[0].platform}): "
        f"compile plain {res['compile_plain_s']:.1f} s + update {res['compile_update_s']:.1f} s "
        f"vs cond {res['compile_cond_s']:.1f} s; "
        f"separate {res['separate_ms_per_step']:.3f} ms/step vs cond "
        f"{res['cond_ms_per_step']:.3f} ms/step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main.run_cli(lambda: _main(sys.argv[1:])))
