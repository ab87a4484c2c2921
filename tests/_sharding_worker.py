"""Sharded runs of ggr_jax on 8 fake CPU devices, compared with the single-device run.

Run by ``tests/test_sharding.py`` in a fresh process: ``XLA_FLAGS`` must ask for 8 host devices
before jax is imported, which the pytest process (already on 1 device) cannot do. Prints one JSON
object: for each mesh configuration and method, whether masks, params and counts equal the
single-device result bit for bit, whether the outputs keep the input shardings, and which
collectives the compiled program contains.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import ggr_jax as gj

SHAPES = {"dense_0": (64, 128), "dense_1": (128, 256), "dense_2": (256, 16)}
MAX_ALL_REDUCE_ELEMENTS = 16  # counts and flags only: never an array of the params' size
METHODS = {
    "ggr": gj.ggr(),
    "ggr_rho1": gj.ggr(rho=1.0, normalize="l2"),
    "rigl": gj.rigl(),
    "set": gj.set(),
    "snfs": gj.snfs(),
    "static": gj.static(),
}


def is_none(x):
    return x is None


def problem():
    """Params, masks and gradients (a fifth of them exactly 0: ties) from fixed seeds."""
    rng = np.random.default_rng(0)
    params = {
        name: {
            "kernel": jnp.asarray(rng.normal(size=s).astype(np.float32) * 0.1),
            "bias": jnp.asarray(rng.normal(size=s[-1:]).astype(np.float32)),
        }
        for name, s in SHAPES.items()
    }
    masks = gj.random_masks(params, gj.erk_densities(params, 0.8), jax.random.key(0))
    params = gj.apply_masks(params, masks)
    grads = jax.tree.map(
        lambda p: jnp.asarray(
            np.where(rng.random(p.shape) < 0.2, 0.0, rng.normal(size=p.shape)).astype(np.float32)
        ),
        params,
    )
    return params, masks, grads


def configs():
    devices = np.array(jax.devices())
    one = Mesh(devices, ("x",))
    two = Mesh(devices.reshape(2, 4), ("data", "model"))
    return {
        "one_axis": (
            one,
            {
                "dense_0": (P(None, "x"), P("x")),
                "dense_1": (P("x", None), P("x")),
                "dense_2": (P("x", None), P()),
            },
        ),
        "two_axes": (
            two,
            {
                "dense_0": (P("data", "model"), P("model")),
                "dense_1": (P("model", "data"), P("data")),
                "dense_2": (P("data", "model"), P("model")),
            },
        ),
        "replicated": (two, {name: (P(), P()) for name in SHAPES}),
    }


def shard(tree, mesh, specs):
    out = {}
    for name, layer in tree.items():
        kernel_spec, bias_spec = specs[name]
        out[name] = {
            key: None
            if x is None
            else jax.device_put(
                x, NamedSharding(mesh, kernel_spec if key == "kernel" else bias_spec)
            )
            for key, x in layer.items()
        }
    return out


def collectives(compiled) -> dict:
    text = compiled.as_text()
    found = re.findall(
        r"= ([^=]*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
        r"(?:-start)?\(",
        text,
    )
    kinds: dict[str, int] = {}
    bad = []
    for shape, kind in found:
        kinds[kind] = kinds.get(kind, 0) + 1
        elements = sum(
            int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
            for dims in re.findall(r"\[([\d,]*)\]", shape)
        )
        if kind != "all-reduce" or elements > MAX_ALL_REDUCE_ELEMENTS:
            bad.append(f"{kind} {shape.strip()}")
    return {"kinds": kinds, "bad": bad}


def same(a, b) -> bool:
    leaves_a = jax.tree.leaves(a, is_leaf=is_none)
    leaves_b = jax.tree.leaves(b, is_leaf=is_none)
    return len(leaves_a) == len(leaves_b) and all(
        (x is None and y is None)
        or (x is not None and y is not None and np.array_equal(np.asarray(x), np.asarray(y)))
        for x, y in zip(leaves_a, leaves_b, strict=True)
    )


def max_abs_diff(a, b) -> float:
    """The largest |a - b| over matching leaves."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0)) for x, y in pairs)


def shardings_kept(outputs, inputs) -> bool:
    pairs = zip(
        jax.tree.leaves(outputs, is_leaf=is_none),
        jax.tree.leaves(inputs, is_leaf=is_none),
        strict=True,
    )
    return all(o is None or o.sharding.is_equivalent_to(i.sharding, o.ndim) for o, i in pairs)


def check_redistribute(results: dict) -> None:
    params, masks, grads = problem()
    # ggr (default rho) runs every kind of selection: per-leaf magnitude prune, the global top-k,
    # per-leaf gradient and random placement; ggr_rho1 the global top-k alone with l2-normalized
    # scores; set random placement alone; snfs adds float sums of momentum; static the rest.
    key = jax.random.key(1)
    for name, method in METHODS.items():
        # (snfs takes the gradients as its momentum: sharded exactly as the gradients are)
        fn = jax.jit(
            lambda p, m, g, k, method=method: gj.redistribute(
                p,
                m,
                g,
                k,
                method=method,
                fraction=0.3,
                momentum=g if method.needs_momentum else None,
            )
        )
        reference = fn(params, masks, grads, key)
        for config, (mesh, specs) in configs().items():
            sp, sm, sg = (shard(t, mesh, specs) for t in (params, masks, grads))
            compiled = fn.lower(sp, sm, sg, key).compile()
            new_p, new_m, info = compiled(sp, sm, sg, key)
            results[f"redistribute/{config}/{name}"] = {
                "masks_equal": same(new_m, reference[1]),
                "params_equal": same(new_p, reference[0]),
                "info_equal": same(info, reference[2]),
                "moved": int(info["moved"]),
                "shardings_kept": shardings_kept((new_p, new_m), (sp, sm)),
                **collectives(compiled),
            }


def check_transforms(results: dict) -> None:
    params, masks, grads = problem()
    chain = optax.chain(gj.mask_gradients(), optax.sgd(0.1, momentum=0.9), gj.mask_updates())

    def chain_step(p, m, g):
        updates, state = chain.update(g, chain.init(p), p, masks=m)
        return optax.apply_updates(p, updates), state

    reference = jax.jit(chain_step)(params, masks, grads)
    for config, (mesh, specs) in configs().items():
        sp, sm, sg = (shard(t, mesh, specs) for t in (params, masks, grads))
        compiled = jax.jit(chain_step).lower(sp, sm, sg).compile()
        new_p, state = compiled(sp, sm, sg)
        results[f"transforms/{config}/mask_chain"] = {
            "params_equal": same(new_p, reference[0]),
            "state_equal": same(state, reference[1]),
            "shardings_kept": shardings_kept(new_p, sp),
            **collectives(compiled),
        }

    mesh, specs = configs()["two_axes"]
    sp, sm, sg = (shard(t, mesh, specs) for t in (params, masks, grads))

    def sparse_steps(p, m, g):
        # two steps of dynamic_sparse: the topology update (under lax.cond) runs at step 1
        tx = gj.dynamic_sparse(
            optax.sgd(0.1, momentum=0.9),
            m,
            key=jax.random.key(2),
            method=gj.ggr(),
            update_every=1,
            end_step=10,
        )
        state = tx.init(p)
        for _ in range(2):
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
        return p, gj.get_masks(state)

    reference = jax.jit(sparse_steps)(params, masks, grads)
    compiled = jax.jit(sparse_steps).lower(sp, sm, sg).compile()
    new_p, new_m = compiled(sp, sm, sg)
    results["transforms/two_axes/dynamic_sparse"] = {
        "params_equal": same(new_p, reference[0]),
        "params_max_abs_diff": max_abs_diff(new_p, reference[0]),
        "masks_equal": same(new_m, reference[1]),
        "masks_changed": not same(new_m, masks),
        "shardings_kept": shardings_kept((new_p, new_m), (sp, sm)),
        **collectives(compiled),
    }


def main() -> None:
    assert jax.device_count() == 8, f"expected 8 fake devices, got {jax.devices()}"
    results: dict = {}
    check_redistribute(results)
    check_transforms(results)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
