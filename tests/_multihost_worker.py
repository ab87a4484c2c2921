"""One of two processes of a multi-controller run of ggr_jax (as on a pod, on localhost).

Run by ``tests/test_multihost.py``: ``python _multihost_worker.py PROCESS_ID PORT OUT_DIR``. Each
process owns 4 CPU devices; ``jax.distributed.initialize`` joins them into one 8-device runtime
whose collectives go through gloo. The params, masks and gradients of ``_sharding_worker.problem``
are built as global arrays sharded over a 2 x 4 (data x model) mesh that spans both processes,
``redistribute`` runs once under ``jax.jit``, and process 0 writes the gathered masks, params and
the list of collectives of the compiled update to ``OUT_DIR``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

import ggr_jax as gj

METHODS = {"ggr": gj.ggr(), "rigl": gj.rigl()}


def global_arrays(tree, mesh, specs):
    """Each process supplies the shards of its own devices from the same host data."""
    out = {}
    for name, layer in tree.items():
        kernel_spec, bias_spec = specs[name]
        out[name] = {}
        for key, x in layer.items():
            if x is None:
                out[name][key] = None
                continue
            host = np.asarray(x)
            sharding = NamedSharding(mesh, kernel_spec if key == "kernel" else bias_spec)
            out[name][key] = jax.make_array_from_callback(
                host.shape, sharding, lambda idx, h=host: h[idx]
            )
    return out


def main() -> None:
    process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 4)
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=120,
    )
    sys.path.insert(0, str(Path(__file__).parent))
    from _sharding_worker import collectives, configs, problem

    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    params, masks, grads = problem()
    mesh, specs = configs()["two_axes"]
    gp, gm, gg = (global_arrays(t, mesh, specs) for t in (params, masks, grads))
    report, arrays = {}, {}
    for name, method in METHODS.items():
        fn = jax.jit(functools.partial(gj.redistribute, method=method, fraction=0.3))
        compiled = fn.lower(gp, gm, gg, jax.random.key(1)).compile()
        new_p, new_m, info = compiled(gp, gm, gg, jax.random.key(1))
        for layer in new_m:
            arrays[f"{name}/masks/{layer}"] = multihost_utils.process_allgather(
                new_m[layer]["kernel"], tiled=True
            )
            arrays[f"{name}/params/{layer}"] = multihost_utils.process_allgather(
                new_p[layer]["kernel"], tiled=True
            )
        report[name] = {
            "moved": int(info["moved"].addressable_data(0)),  # replicated scalar
            **collectives(compiled),
        }
    if process_id == 0:
        np.savez(out / "result.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
        (out / "report.json").write_text(json.dumps(report))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
