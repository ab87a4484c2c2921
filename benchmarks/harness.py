"""Timing, compile time and memory inside one process; the separate processes and their spread.

Inside a process (:func:`interleaved`): every variant is compiled first, then called in
interleaved rounds (a, b, c, a, b, c, ...) with its data passed as arguments, and
``block_until_ready`` on every call, so that no two jitted programs ever run at the same time
and outside load hits all variants alike. A process reports the median of its calls.

Across processes (:func:`run_workers`, :func:`aggregate`): each unit of work runs in a fresh
process (``python -m benchmarks worker UNIT``), one after another, units interleaved across the
repeats; the parent never touches a device. A table value is the median of the per-process
medians, with their min-max, and a target is met only if every process meets it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def interleaved(
    fns: dict[str, tuple[Callable, tuple]], *, calls: int, rounds: int
) -> dict[str, float]:
    """Median ms per function over ``rounds`` interleaved rounds of ``calls`` calls each.

    Functions slower than 0.2 s are called once a round. Every function is called once (and so
    compiled) before the first timed round.
    """
    import jax

    per_round = {}
    for name, (f, args) in fns.items():
        jax.block_until_ready(f(*args))
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        per_round[name] = 1 if time.perf_counter() - t0 > 0.2 else calls
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, (f, args) in fns.items():
            for _ in range(per_round[name]):
                t0 = time.perf_counter()
                jax.block_until_ready(f(*args))
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def compile_program(f: Callable, *args) -> tuple[float, Any]:
    """Seconds to lower and compile ``jax.jit(f)`` on ``args``, and the compiled program."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    return time.perf_counter() - t0, compiled


def program_stats(compiled: Any) -> dict[str, float]:
    """XLA's temporary buffers (bytes) and bytes accessed (loop bodies counted once), if known."""
    out = {}
    try:
        out["temp_bytes"] = float(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 (not every backend reports it)
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out["xla_bytes"] = float(cost["bytes accessed"])
    except Exception:  # noqa: BLE001
        pass
    return out


def rss_bytes() -> tuple[float, float]:
    """(current RSS, peak RSS so far) of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Linux: KiB
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * float(os.sysconf("SC_PAGE_SIZE")), peak
    except OSError:
        return float("nan"), peak


def device_bytes() -> tuple[float, float] | None:
    """The accelerator's (bytes in use, peak bytes in use); None where the backend has no stats."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        return None
    return float(stats["bytes_in_use"]), float(stats["peak_bytes_in_use"])


def machine() -> dict[str, str]:
    """The CPU, the device and the versions: recorded by each worker (never by the parent)."""
    import jax
    import optax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "backend": jax.default_backend(),
        "device": f"{dev.device_kind} x{jax.device_count()}",
        "versions": f"Python {platform.python_version()}, jax {jax.__version__}, "
        f"optax {optax.__version__}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def run_workers(
    plan: list[tuple[str, int]], flags: list[str], log: Callable[[str], None]
) -> dict[str, list[dict]]:
    """Runs each ``(unit, process index)`` of ``plan`` in its own process, one at a time."""
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (unit, index) in enumerate(plan):
            path = Path(tmp) / f"{unit}_{index}.json"
            cmd = [sys.executable, "-m", "benchmarks", "worker", unit, "--out", str(path)]
            log(f"[{i + 1}/{len(plan)}] {unit}, process {index + 1}")
            t0 = time.perf_counter()
            subprocess.run(cmd + flags, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            record = json.loads(path.read_text())
            record["wall_s"] = time.perf_counter() - t0
            out.setdefault(unit, []).append(record)
    return out


def aggregate(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per value id: the median, min and max over processes, and the per-process values."""
    keys = [k for k in records[0]["values"] if all(k in r["values"] for r in records)]
    out = {}
    for k in keys:
        vals = [float(r["values"][k]) for r in records]
        out[k] = {
            "median": float(np.median(vals)),
            "min": min(vals),
            "max": max(vals),
            "per_process": vals,
        }
    return out


def ratios(records: list[dict], num: str, den: str) -> list[float]:
    """``num / den`` within each process (both measured in the same interleaved rounds)."""
    return [r["values"][num] / r["values"][den] for r in records]
