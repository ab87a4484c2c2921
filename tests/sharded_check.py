"""Run as a script by test_sharded.py: 8 fake CPU devices, must start before jax is imported.

For each layout (one axis, two axes, replicated) it runs ``redistribute`` for every method and a
masked optax step on sharded params / masks / grads and prints one JSON line: whether the masks
equal the single-device result bit for bit, whether output shardings equal the input shardings,
and the collectives in the compiled HLO.
"""

import json
import os
import re
import sys


def _max_all_reduce_elems(hlo: str) -> int:
    """Largest number of elements any all-reduce in the HLO text carries (0 if none)."""
    import numpy as np

    sizes = [0]
    for line in hlo.splitlines():
        if " all-reduce(" in line and "=" in line:
            result_type = line.split("=", 1)[1].split(" all-reduce(")[0]
            for dims in re.findall(r"\w+\[([\d,]*)\]", result_type):
                sizes.append(int(np.prod([int(d) for d in dims.split(",") if d] or [1])))
    return max(sizes)


def _collectives(hlo: str) -> list[str]:
    """The data-moving collectives (anything but all-reduce) in the HLO text."""
    pattern = r"\b(all-gather|all-to-all|collective-permute|reduce-scatter)\("
    return sorted(set(re.findall(pattern, hlo)))


def main() -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import ggr_jax as gj

    assert jax.device_count() == 8, jax.devices()
    params = {
        "a": jax.random.normal(jax.random.key(0), (64, 32)),
        "b": jax.random.normal(jax.random.key(1), (32, 16)),
        "bias": jnp.zeros(16),
    }
    masks = gj.random_masks(params, gj.uniform_densities(params, 0.9), jax.random.key(2))
    params = gj.apply_masks(params, masks)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    momentum = jax.tree.map(lambda g: 0.5 * g, grads)
    key = jax.random.key(4)
    methods = {
        "ggr": gj.ggr(),
        "ggr_rho1": gj.ggr(rho=1.0, normalize="l2"),
        "rigl": gj.rigl(),
        "set": gj.set(),
        "snfs": gj.snfs(),
    }
    tx = optax.chain(gj.mask_gradients(), optax.sgd(0.1, momentum=0.9), gj.mask_updates())

    def step(p, m, g, s):
        u, s = tx.update(g, s, p, masks=m)
        return optax.apply_updates(p, u), s

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    layouts = {
        "one_axis": {"a": P("model"), "b": P("model"), "bias": P()},
        "two_axes": {"a": P("data", "model"), "b": P(None, "model"), "bias": P("model")},
        "replicated": {"a": P(), "b": P(), "bias": P()},
    }
    report = {}
    for layout, spec in layouts.items():
        sh = jax.tree.map(lambda s: NamedSharding(mesh, s), spec)
        put = lambda tree, sh=sh: jax.device_put(tree, sh)  # noqa: E731
        ps, gs, mos = put(params), put(grads), put(momentum)
        ms = jax.device_put(masks, {"a": sh["a"], "b": sh["b"], "bias": None})
        for name, method in methods.items():
            f = jax.jit(
                lambda p, m, g, mo, method=method: gj.redistribute(
                    p,
                    m,
                    g,
                    key,
                    method=method,
                    fraction=0.3,
                    momentum=mo if method.needs_momentum else None,
                )
            )
            ref = f(params, masks, grads, momentum)
            out = f(ps, ms, gs, mos)
            hlo = f.lower(ps, ms, gs, mos).compile().as_text()
            report[f"{layout}/{name}"] = {
                "masks_equal": all(
                    np.array_equal(x, y)
                    for x, y in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(out[1]), strict=True)
                ),
                "params_equal": all(
                    np.array_equal(x, y)
                    for x, y in zip(jax.tree.leaves(ref[0]), jax.tree.leaves(out[0]), strict=True)
                ),
                "shardings_kept": all(
                    o.sharding.is_equivalent_to(i.sharding, o.ndim)
                    for o, i in zip(
                        jax.tree.leaves(out[:2]), jax.tree.leaves((ps, ms)), strict=True
                    )
                ),
                "collectives": _collectives(hlo),
                "max_all_reduce_elems": _max_all_reduce_elems(hlo),
            }
        g_step = jax.jit(step)
        ref = g_step(params, masks, grads, tx.init(params))
        s0 = jax.jit(tx.init)(ps)
        out = g_step(ps, ms, gs, s0)
        hlo = g_step.lower(ps, ms, gs, s0).compile().as_text()
        report[f"{layout}/masked_step"] = {
            "params_equal": all(
                np.array_equal(x, y)
                for x, y in zip(jax.tree.leaves(ref[0]), jax.tree.leaves(out[0]), strict=True)
            ),
            "shardings_kept": all(
                o.sharding.is_equivalent_to(i.sharding, o.ndim)
                for o, i in zip(jax.tree.leaves(out[0]), jax.tree.leaves(ps), strict=True)
            ),
            "collectives": _collectives(hlo),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
