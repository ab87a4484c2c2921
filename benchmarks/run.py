"""Benchmarks: masked train step and topology updates against a dense step, scaling, memory.

One command, one process (plus a child pinned to one core), about 4 minutes on 2 CPU cores::

    python benchmarks/run.py                # writes benchmarks/RESULTS.md and RESULTS.json
    python benchmarks/run.py --quick        # fewer repeats, no 64M point (a smoke run)
    python benchmarks/run.py --report-only  # RESULTS.md again from RESULTS.json

Everything compared in a ratio is timed side by side: the functions of one table are called in
interleaved rounds (dense, masked, update, dense, masked, update, ...) so that load from other
processes hits all of them alike, and the table reports medians over all calls after
compilation (``block_until_ready`` on every call).

Two straightforward baselines are written here, on the same inputs:

* ``argsort (RigL)``: per-layer top-k by ``jnp.argsort`` as jaxpruner does (rank every entry of
  every layer, for the prune and for the regrowth), dynamic k through the inverse permutation.
* ``concat + top_k (GGR)``: per-layer prune by ``lax.top_k`` and GGR's global regrowth by
  ``lax.top_k`` over ``jnp.concatenate`` of all layers (static k, fixed at trace time).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import ggr_jax as gj
from ggr_jax._select import count_true

HERE = Path(__file__).resolve().parent
MODELS = {"1M": (784, 1024, 256, 10), "10M": (784, 2048, 2048, 2048, 10)}
BATCH = 128
SPARSITY = 0.9  # ERK
FRACTION = 0.3  # drop fraction of the update
SCALING = {"1M": 512, "4M": 1024, "16M": 2048, "64M": 4096}  # 4 square layers of this side


# --- models and steps ---------------------------------------------------------------------------


def mlp_params(sizes: tuple[int, ...], key: jax.Array) -> dict[str, Any]:
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"dense_{i}"] = {
            "kernel": jax.random.normal(sub, (a, b)) * a**-0.5,
            "bias": jnp.zeros((b,)),
        }
    return params


def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    h = x
    n = len(params)
    for i in range(n):
        layer = params[f"dense_{i}"]
        h = h @ layer["kernel"] + layer["bias"][None, :]
        if i < n - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def make_steps(lr: float = 0.05):
    dense_tx = optax.sgd(lr, momentum=0.9)
    masked_tx = optax.chain(gj.mask_gradients(), optax.sgd(lr, momentum=0.9), gj.mask_updates())

    @jax.jit
    def dense_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = dense_tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def masked_step(params, opt_state, masks, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = masked_tx.update(grads, opt_state, params, masks=masks)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def wrapper_step(params, opt_state, masks, x, y):
        # The usual mask-wrapping optimizer (jaxpruner's style): multiply the gradients by float
        # masks, run the dense optimizer, then re-apply the masks to the params after the step.
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        fmask = jax.tree.map(
            lambda m, p: jnp.ones_like(p) if m is None else m.astype(p.dtype),
            masks,
            params,
            is_leaf=lambda m: m is None,
        )
        grads = jax.tree.map(jnp.multiply, grads, fmask)
        updates, opt_state = dense_tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return jax.tree.map(jnp.multiply, params, fmask), opt_state, loss

    return dense_tx, masked_tx, dense_step, masked_step, wrapper_step


# --- the two baselines --------------------------------------------------------------------------


def _argsort_top_k(scores: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
    """The k largest eligible entries by a full argsort (dynamic k via the inverse permutation)."""
    flat = jnp.where(eligible, scores, -jnp.inf).ravel()
    order = jnp.argsort(-flat)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return (ranks < k).reshape(scores.shape) & eligible


def argsort_rigl(params, masks, grads, fraction):
    """RigL with per-layer argsort top-k for prune and regrowth (jaxpruner's approach)."""
    out_p, out_m = {}, {}
    for name, layer in params.items():
        w, m, g = layer["kernel"], masks[name]["kernel"], grads[name]["kernel"]
        active = jnp.sum(m, dtype=jnp.int32)
        n_drop = jnp.floor(fraction * active.astype(jnp.float32)).astype(jnp.int32)
        keep = _argsort_top_k(jnp.abs(w), m, active - n_drop)
        grow = _argsort_top_k(jnp.abs(g), ~keep, n_drop)
        out_m[name] = {"kernel": keep | grow, "bias": None}
        out_p[name] = {"kernel": jnp.where(keep, w, 0.0), "bias": layer["bias"]}
    return out_p, out_m


def concat_top_k_ggr(params, masks, grads, *, n_drop: tuple[int, ...]):
    """GGR's prune (lax.top_k per layer) and global regrowth (lax.top_k over the concatenation).

    ``lax.top_k`` needs a static k: the per-layer drop counts are fixed at trace time.
    """
    names = list(params)
    kept, flat_scores = {}, []
    for name, r in zip(names, n_drop, strict=True):
        w, m = params[name]["kernel"], masks[name]["kernel"]
        smallest = jnp.where(m, -jnp.abs(w), -jnp.inf).ravel()  # -|w| of active weights
        _, idx = lax.top_k(smallest, r)
        drop = jnp.zeros(w.size, bool).at[idx].set(True).reshape(w.shape)
        kept[name] = m & ~drop
        flat_scores.append(jnp.where(kept[name], -jnp.inf, jnp.abs(grads[name]["kernel"])).ravel())
    scores = jnp.concatenate(flat_scores)
    _, idx = lax.top_k(scores, sum(n_drop))
    grow = jnp.zeros(scores.shape, bool).at[idx].set(True)
    out_p, out_m, start = {}, {}, 0
    for name in names:
        w = params[name]["kernel"]
        g = lax.dynamic_slice_in_dim(grow, start, w.size).reshape(w.shape)
        start += w.size
        out_m[name] = {"kernel": kept[name] | g, "bias": None}
        out_p[name] = {"kernel": jnp.where(kept[name], w, 0.0), "bias": params[name]["bias"]}
    return out_p, out_m


# --- timing -------------------------------------------------------------------------------------


def interleaved(
    fns: dict[str, tuple[Callable, tuple]],
    *,
    calls: int,
    rounds: int,
    slow: tuple[str, ...] = (),
) -> dict[str, dict[str, float]]:
    """Median and min (ms) per function, called in interleaved rounds after compilation.

    Each round calls every function ``calls`` times in a row, the ``slow`` ones (baselines that
    take seconds) once.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    for _ in range(rounds):
        for name, (f, args) in fns.items():
            for _ in range(1 if name in slow else calls):
                t0 = time.perf_counter()
                jax.block_until_ready(f(*args))
                times[name].append(time.perf_counter() - t0)
    return {
        k: {"median": float(np.median(v)) * 1e3, "min": float(np.min(v)) * 1e3, "n": len(v)}
        for k, v in times.items()
    }


def compile_seconds(f: Callable, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    return time.perf_counter() - t0, compiled


def temp_bytes(compiled) -> int | None:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 (not every backend reports it)
        return None


def nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


# --- measurements -------------------------------------------------------------------------------

METHODS = {
    "static": gj.static(),
    "set": gj.set(),
    "rigl": gj.rigl(),
    "snfs": gj.snfs(),
    "ggr": gj.ggr(),
    "ggr (rho=1)": gj.ggr(rho=1.0),
}


def update_fn(method: gj.Method) -> Callable:
    def f(params, masks, grads, key, fraction):
        return gj.redistribute(
            params,
            masks,
            grads,
            key,
            method=method,
            fraction=fraction,
            momentum=grads if method.needs_momentum else None,
        )

    return f


def bench_model(label: str, sizes: tuple[int, ...], *, calls: int, rounds: int) -> dict:
    params = mlp_params(sizes, jax.random.key(0))
    masks = gj.random_masks(params, gj.erk_densities(params, SPARSITY), jax.random.key(1))
    params = gj.apply_masks(params, masks)
    x = jax.random.normal(jax.random.key(2), (BATCH, sizes[0]))
    y = jax.random.randint(jax.random.key(3), (BATCH,), 0, sizes[-1])
    grads = jax.grad(loss_fn)(params, x, y)
    dense_tx, masked_tx, dense_step, masked_step, wrapper_step = make_steps()
    fraction = jnp.float32(FRACTION)
    key = jax.random.key(4)
    n_drop = tuple(int(np.floor(FRACTION * int(masks[n]["kernel"].sum()))) for n in params)

    fns = {
        "dense step": (dense_step, (params, dense_tx.init(params), x, y)),
        "masked step (gj.mask_gradients/mask_updates)": (
            masked_step,
            (params, masked_tx.init(params), masks, x, y),
        ),
        "masked step, mask-wrapping optimizer": (
            wrapper_step,
            (params, dense_tx.init(params), masks, x, y),
        ),
    }
    # One counting pass of the selection kernel over the first layer (one byte per entry read):
    # the unit an update is made of; its cost shows the runtime's per-pass overhead.
    first = params["dense_0"]["kernel"]
    digits = (jnp.abs(first) * 255.0 / jnp.max(jnp.abs(first))).astype(jnp.uint8)
    count_pass = jax.jit(lambda d, t: count_true(d >= t))
    fns[f"one counting pass ({'x'.join(map(str, first.shape))} uint8)"] = (
        count_pass,
        (digits, jnp.uint8(100)),
    )
    compiles, temps = {}, {}
    for name, method in METHODS.items():
        args = (params, masks, grads, key, fraction)
        name = f"update {name}"
        compiles[name], compiled = compile_seconds(update_fn(method), *args)
        temps[name] = temp_bytes(compiled)
        fns[name] = (compiled, args)
    baselines = {
        "update argsort (RigL)": (argsort_rigl, (params, masks, grads, fraction)),
        "update concat + top_k (GGR)": (
            functools.partial(concat_top_k_ggr, n_drop=n_drop),
            (params, masks, grads),
        ),
    }
    for name, (f, args) in baselines.items():
        compiles[name], compiled = compile_seconds(f, *args)
        temps[name] = temp_bytes(compiled)
        fns[name] = (compiled, args)
    timings = interleaved(fns, calls=calls, rounds=rounds, slow=tuple(baselines))
    return {
        "label": label,
        "sizes": sizes,
        "n_params": optax.tree_utils.tree_size(params),
        "param_bytes": nbytes(params),
        "timings": timings,
        "compile_s": compiles,
        "temp_bytes": temps,
    }


def synthetic(side: int, layers: int = 4, seed: int = 0):
    """Params, masks (90 % sparse) and gradients of ``layers`` square layers with biases."""
    keys = jax.random.split(jax.random.key(seed), 3 * layers)
    shape = (side, side)
    params, masks, grads = {}, {}, {}
    for i in range(layers):
        name = f"dense_{i}"
        mask = jax.random.uniform(keys[layers + i], shape) < (1 - SPARSITY)
        params[name] = {
            "kernel": jnp.where(mask, jax.random.normal(keys[i], shape) * 0.05, 0.0),
            "bias": jnp.zeros((side,)),
        }
        masks[name] = {"kernel": mask, "bias": None}
        grads[name] = {
            "kernel": jax.random.normal(keys[2 * layers + i], shape) * 1e-3,
            "bias": jnp.zeros((side,)),
        }
    return params, masks, grads


def bench_scaling(points: dict[str, int], *, budget_s: float) -> dict:
    """GGR update time (and a streaming pass, and the argsort baseline) against param count."""
    rows = {}
    ggr = jax.jit(update_fn(gj.ggr()))
    rigl = jax.jit(update_fn(gj.rigl()))
    stream = jax.jit(
        lambda p, m: jax.tree.map(
            lambda w, k: jnp.where(k, w * 2.0, 0.0),
            {n: layer["kernel"] for n, layer in p.items()},
            {n: layer["kernel"] for n, layer in m.items()},
        )
    )
    sort = jax.jit(argsort_rigl)
    for label, side in points.items():
        params, masks, grads = synthetic(side)
        args = (params, masks, grads, jax.random.key(1), jnp.float32(FRACTION))
        fns = {"ggr": (ggr, args), "rigl": (rigl, args), "stream": (stream, (params, masks))}
        n = optax.tree_utils.tree_size(params)
        if n <= 16 * 2**20:
            fns["argsort (RigL)"] = (sort, (params, masks, grads, jnp.float32(FRACTION)))
        # fewer calls for the big points, ~budget_s per point in total
        t0 = time.perf_counter()
        jax.block_until_ready(ggr(*args))
        one = time.perf_counter() - t0
        calls = int(np.clip(budget_s / max(one, 1e-3) / (len(fns) + 2), 1, 10))
        timings = interleaved(fns, calls=calls, rounds=2 if calls > 1 else 1)
        rows[label] = {"n_params": n, "timings": timings}
        del params, masks, grads, args
    return rows


def bench_compile_vs_layers(total: int = 2**20, layer_counts=(4, 8, 16, 32)) -> dict:
    out = {}
    for n_layers in layer_counts:
        side = int(np.sqrt(total / n_layers))
        params, masks, grads = synthetic(side, layers=n_layers)
        args = (params, masks, grads, jax.random.key(1), jnp.float32(FRACTION))
        jax.clear_caches()
        seconds, compiled = compile_seconds(update_fn(gj.ggr()), *args)
        out[n_layers] = {"compile_s": seconds, "hlo_lines": compiled.as_text().count("\n")}
    return out


# --- report -------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, jax {jax.__version__}, optax {optax.__version__}, "
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )


def fit_exponent(ns: list[int], ts: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def _exponent(rows: dict, column: str) -> float | None:
    pts = [
        (r["n_params"], r["timings"][column]["median"])
        for r in rows.values()
        if column in r["timings"]
    ]
    return fit_exponent(*zip(*pts, strict=True)) if len(pts) >= 2 else None


def summary(models: list[dict], scaling: dict, layers: dict, one_core: dict | None) -> list[str]:
    """The issue's targets next to what this run measured."""

    def ratio(m, name):
        return m["timings"][name]["median"] / m["timings"]["dense step"]["median"]

    def verdict(ok, why_not=None):
        return "met" if ok else "**not met**" + (f": {why_not}" if why_not else "")

    def ggr_row(m, where):
        ggr, ggr1 = ratio(m, "update ggr"), ratio(m, "update ggr (rho=1)")
        return (
            f"one GGR update / dense step, {m['n_params'] / 1e6:.1f}M{where}",
            f"{ratio(m, 'update argsort (RigL)'):.0f}x (argsort, RigL); "
            f"{ratio(m, 'update concat + top_k (GGR)'):.1f}x (concat + top_k, GGR)",
            "<= 2x",
            f"{ggr:.2f}x (default rho=0.5); {ggr1:.2f}x (rho=1)",
            verdict(ggr <= 2.0),
        )

    rows = []
    for m in models:
        label = f"{m['n_params'] / 1e6:.1f}M"
        if m["label"] == "1M":
            ours = ratio(m, "masked step (gj.mask_gradients/mask_updates)")
            rows.append(
                (
                    f"masked train step / dense step, {label}",
                    f"{ratio(m, 'masked step, mask-wrapping optimizer'):.2f}x "
                    "(mask-wrapping optimizer)",
                    "<= 1.03x",
                    f"{ours:.2f}x",
                    verdict(ours <= 1.03),
                )
            )
        rows.append(ggr_row(m, ""))
    if one_core is not None:
        rows.append(ggr_row(one_core, ", one core"))
    if scaling:
        ours, stream = _exponent(scaling, "ggr"), _exponent(scaling, "stream")
        rows.append(
            (
                "update time growth, 1M to 64M params (fitted exponent)",
                f"{_exponent(scaling, 'argsort (RigL)'):.2f} (argsort, to 16M)",
                "<= 1.05",
                f"{ours:.2f} (ggr), {_exponent(scaling, 'rigl'):.2f} (rigl); one elementwise "
                f"pass over the same params: {stream:.2f}",
                verdict(
                    ours <= 1.05,
                    "grows slower than one elementwise pass (the caches)"
                    if ours < stream
                    else None,
                ),
            )
        )
    if models:
        temps = [
            t / m["param_bytes"]
            for m in models
            for k, t in m["temp_bytes"].items()
            if t is not None and "argsort" not in k and "concat" not in k
        ]
        base = max(m["temp_bytes"]["update argsort (RigL)"] / m["param_bytes"] for m in models)
        cat = max(m["temp_bytes"]["update concat + top_k (GGR)"] / m["param_bytes"] for m in models)
        rows.append(
            (
                "extra peak memory of one update / param bytes",
                f"{base:.2f}x (argsort), {cat:.2f}x (concat + top_k)",
                "<= 1x, no concatenated copy",
                f"{max(temps):.2f}x (worst method)",
                verdict(max(temps) <= 1.0),
            )
        )
    if layers:
        ns = list(layers)
        e = fit_exponent(ns, [layers[n]["compile_s"] for n in ns])
        e_hlo = fit_exponent(ns, [layers[n]["hlo_lines"] for n in ns])
        rows.append(
            (
                "compile time against number of layers (fitted exponent)",
                "",
                "<= 1.05 (linear)",
                f"{e:.2f}; size of the compiled program: {e_hlo:.2f}",
                verdict(
                    e <= 1.05,
                    "the program grows linearly, XLA's compile time a bit faster"
                    if e_hlo <= 1.05
                    else None,
                ),
            )
        )
    lines = [
        "## Targets",
        "",
        "| figure | usual approach, measured here | target | ggr_jax, measured here | |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def report(
    models: list[dict],
    scaling: dict,
    layers: dict,
    one_core: dict | None,
    elapsed: float,
    quick: bool,
    date: str,
    machine: str,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `python benchmarks/run.py{' --quick' if quick else ''}` on "
        f"{date} in {elapsed / 60:.1f} min.",
        "",
        f"Machine: {machine}.",
        "",
        f"MLPs with biases, batch {BATCH}, SGD + momentum 0.9, ERK masks at sparsity {SPARSITY}, "
        f"drop fraction {FRACTION}. Times are medians over interleaved calls after compilation; "
        "ratios are to the dense step of the same table, measured in the same rounds. Extra "
        "memory is the compiled program's temporary buffers (XLA memory analysis), arguments and "
        "outputs excluded.",
        "",
    ]
    lines += summary(models, scaling, layers, one_core)
    lines += [
        "How to read it:",
        "",
        "- Every selection in an update (the per-layer magnitude prune, GGR's global top-k, the "
        "per-layer gradient or random placement) is an exact radix select: a few passes that "
        "write one byte per entry and ~15-20 counting passes that read it. No sort, no "
        "concatenation, no copy of the params. `rigl` and `set` run two selections, `ggr` with "
        "its default `rho=0.5` four (prune, global allocation, gradient placement, random "
        "placement), `ggr(rho=1)` two.",
        "- The dense step's matmuls use both cores. XLA:CPU also splits each of the update's "
        "short passes (well over a hundred for `ggr`) over two threads, and on this "
        "2-vCPU VM a split pass of about a megabyte is often slower than one thread alone: "
        "compare the `one counting pass` row of the 2-core and one-core tables, and the spread "
        "between median and min of the updates. The one-core table is the ratio without that "
        "runtime effect; at 10M params the passes are long enough to profit from two threads.",
        "- Times on this shared 2-core machine move by 10-20 % between processes; ratios within "
        "one table are measured in the same interleaved rounds.",
        "",
    ]
    tables = list(models)
    if one_core is not None:
        tables.append({**one_core, "title_note": ", pinned to one core (`taskset`)"})
    for m in tables:
        t = m["timings"]
        dense = t["dense step"]["median"]
        lines += [
            f"## MLP {'-'.join(map(str, m['sizes']))} ({m['n_params'] / 1e6:.2f}M params, "
            f"{m['param_bytes'] / 2**20:.1f} MiB){m.get('title_note', '')}",
            "",
            "| | median ms | min ms | / dense step | compile s | extra memory / params |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in t.items():
            comp = m["compile_s"].get(name)
            temp = m["temp_bytes"].get(name)
            comp_s = "" if comp is None else f"{comp:.1f}"
            temp_s = "" if temp is None else f"{temp / m['param_bytes']:.2f}x"
            lines.append(
                f"| {name} | {r['median']:.2f} | {r['min']:.2f} | "
                f"{r['median'] / dense:.2f}x | {comp_s} | {temp_s} |"
            )
        lines.append("")
    if scaling:
        labels = list(scaling)
        columns = list(scaling[labels[0]]["timings"])
        lines += [
            "## Update time against parameter count (4 square layers with biases, 90 % sparse)",
            "",
            "`stream` is one elementwise pass over the kernels (`where(mask, 2 * w, 0)`): the "
            "memory hierarchy alone (1M params fit in the L2/L3 caches, 64M do not). The argsort "
            "baseline stops at 16M (seconds per call).",
            "",
            "| params | " + " | ".join(columns) + " | ggr / stream |",
            "|---|" + "---:|" * (len(columns) + 1),
        ]
        for k in labels:
            row = scaling[k]["timings"]
            cells = [f"{row[c]['median']:.1f} ms" if c in row else "-" for c in columns]
            cells.append(f"{row['ggr']['median'] / row['stream']['median']:.1f}")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        exps = [f"{c}: {e:.3f}" for c in columns if (e := _exponent(scaling, c)) is not None]
        lines += [
            "",
            "Fitted exponent of time against params (log-log least squares): "
            + ", ".join(exps)
            + ".",
            "",
        ]
    if layers:
        lines += [
            "## Compile time of the GGR update against the number of layers (~1M params)",
            "",
            "| layers | compile s | s per layer | optimized HLO lines | lines per layer |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {n} | {r['compile_s']:.2f} | {r['compile_s'] / n:.3f} | {r['hlo_lines']} | "
            f"{r['hlo_lines'] / n:.0f} |"
            for n, r in layers.items()
        ]
        lines.append("")
    return "\n".join(lines)


def run_on_one_core(quick: bool) -> dict | None:
    """The 1M table again, in a child process pinned to one core by ``taskset``.

    XLA sizes its thread pools from the cores the process may use, so the child's dense step gets
    no second core for its matmuls. None when ``taskset`` is not installed.
    """
    taskset = shutil.which("taskset")
    if taskset is None:
        return None
    core = min(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one_core.md"
        cmd = [taskset, "-c", str(core), sys.executable, __file__]
        cmd += ["--only", "models", "--models", "1M", "--out", str(out)]
        cmd += ["--quick"] if quick else []
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.with_suffix(".json").read_text())["models"][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, no 64M point")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--only", choices=["models", "scaling", "layers"], default=None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--no-one-core",
        action="store_true",
        help="skip the second run of the 1M table pinned to one core",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the JSON of the last run (next to --out)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        write_report(json.loads(out.with_suffix(".json").read_text()), out)
        return
    t0 = time.perf_counter()
    calls, rounds = (3, 2) if args.quick else (8, 8)
    models, scaling, layers = [], {}, {}
    if args.only in (None, "models"):
        for label in args.models:
            print(f"model {label} ...", file=sys.stderr, flush=True)
            models.append(
                bench_model(
                    label, MODELS[label], calls=calls if label == "1M" else 3, rounds=rounds
                )
            )
    one_core = None
    if args.only is None and not args.no_one_core and len(os.sched_getaffinity(0)) > 1:
        print("model 1M on one core ...", file=sys.stderr, flush=True)
        one_core = run_on_one_core(quick=args.quick)
    if args.only in (None, "scaling"):
        print("scaling ...", file=sys.stderr, flush=True)
        points = dict(SCALING)
        if args.quick:
            points.pop("64M")
        scaling = bench_scaling(points, budget_s=5.0 if args.quick else 20.0)
    if args.only in (None, "layers"):
        print("compile time against layers ...", file=sys.stderr, flush=True)
        layers = bench_compile_vs_layers()
    elapsed = time.perf_counter() - t0
    raw = {
        "models": models,
        "scaling": scaling,
        "layers": layers,
        "one_core": one_core,
        "elapsed": elapsed,
        "quick": args.quick,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    write_report(raw, out)


def write_report(raw: dict, out: Path) -> None:
    """Writes (and prints) the report of a run's raw record, as saved in the JSON."""
    raw = {**raw, "layers": {int(n): r for n, r in raw["layers"].items()}}  # JSON keys are str
    text = report(**raw)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
