"""Several hosts: the same update as two processes joined by ``jax.distributed.initialize``.

Two processes on localhost, 4 CPU devices each, CPU collectives through gloo: JAX's own
multi-controller runtime, as on a pod slice. The masks and params after one ``redistribute`` on
the 8-device mesh that spans both processes must equal the single-process result bit for bit.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import ggr_jax as gj

HERE = Path(__file__).parent
WORKER = HERE / "_multihost_worker.py"


def _problem():
    spec = importlib.util.spec_from_file_location("_sharding_worker", HERE / "_sharding_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.problem()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# jaxlib's gloo transport can abort a pair of processes on a loaded machine ("op.preamble.length
# <= op.nbytes", seen once in CI with jaxlib 0.6.0, never reproduced in 12 runs on an idle one):
# a runtime fault outside this library. Such an abort is retried; any other failure, and a result
# that differs, fails at once.
_GLOO_ABORT = "gloo::EnforceNotMet"
_ATTEMPTS = 3


def _run_workers(out: Path) -> list[tuple[int, str]]:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            logs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, err) for p, err in zip(procs, logs, strict=True)]


@pytest.fixture(scope="module")
def multihost(tmp_path_factory):
    for attempt in range(1, _ATTEMPTS + 1):
        out = tmp_path_factory.mktemp("multihost")
        results = _run_workers(out)
        failed = [(rc, err) for rc, err in results if rc != 0]
        if not failed:
            break
        gloo = any(_GLOO_ABORT in err for _, err in failed)
        if not gloo or attempt == _ATTEMPTS:
            rc, err = failed[0]
            msg = f"multihost worker failed (exit {rc}, try {attempt}):\n{err[-4000:]}"
            raise AssertionError(msg)
    return dict(np.load(out / "result.npz")), json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("method", ["ggr", "rigl"])
def test_two_processes_equal_single_process(multihost, method):
    arrays, report = multihost
    params, masks, grads = _problem()
    update = jax.jit(functools.partial(gj.redistribute, method=getattr(gj, method)(), fraction=0.3))
    new_p, new_m, info = update(params, masks, grads, jax.random.key(1))
    for layer in new_m:
        np.testing.assert_array_equal(
            arrays[f"{method}__masks__{layer}"], np.asarray(new_m[layer]["kernel"]), err_msg=layer
        )
        np.testing.assert_array_equal(
            arrays[f"{method}__params__{layer}"], np.asarray(new_p[layer]["kernel"]), err_msg=layer
        )
    assert report[method]["moved"] == int(info["moved"])
    assert report[method]["bad"] == [], f"collectives beyond scalar all-reduces: {report}"
    assert report[method]["kinds"].get("all-reduce", 0) > 0  # counts cross the processes
