"""The scripts in examples/ run as documented (in a fresh process: they set XLA_FLAGS)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_multi_device_example_runs_on_8_fake_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "multi_device.py"), "--steps", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "8 devices, mesh {'data': 2, 'model': 4}" in out, out
    # the topology update inside lax.cond ran at step 50 and moved connections between layers
    moved = {int(s): int(m) for s, m in re.findall(r"step +(\d+) .*?moved +(\d+)", out)}
    assert moved[0] == 0 and moved[50] > 0, out
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
    assert losses[-1] < losses[0], out
