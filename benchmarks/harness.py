"""Timing, compile time and memory inside one process; the separate processes and their spread.

Inside a process (:func:`interleaved`): every variant is compiled first, then called in
interleaved rounds (a, b, c, a, b, c, ...) with its data passed as arguments, and
``block_until_ready`` on every call, so that no two jitted programs ever run at the same time
and outside load hits all variants alike. A process reports the median of its calls.

Across processes (:func:`run_workers`, :func:`aggregate`): each unit of work runs in a fresh
process (``python -m benchmarks worker UNIT``), one after another, units interleaved across the
repeats; the parent never touches a device. A table value is the median of the per-process
medians, with their min-max, and a target is met only if every process meets it. The parent
records how much CPU other processes used while each worker ran (``/proc/stat``) and runs a
disturbed worker again (:func:`run_workers`), so a report says whether the machine was quiet.
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


QUIET_CORES = 0.1  # a process ran on a quiet machine if others used less CPU than this, on average


def machine_cpu_seconds(stat: str | None = None) -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from ``/proc/stat``.

    Busy is user + nice + system + irq + softirq over all cores; steal is time the hypervisor
    gave to other guests. NaN where ``/proc/stat`` cannot be read (not Linux).

    Args:
      stat: the text of ``/proc/stat`` (read from the file when None).

    Returns:
      ``(busy_s, steal_s)``.

    Example:
      >>> machine_cpu_seconds("cpu  100 0 50 900 0 0 10 40 0 0\n")[0] * os.sysconf("SC_CLK_TCK")
      160.0
    """
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
        fields = [float(x) for x in text.splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")
    hz = float(os.sysconf("SC_CLK_TCK"))
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _children_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(cmd: list[str]) -> dict[str, float]:
    """Runs a worker; how long it took and how much CPU the rest of the machine used meanwhile.

    ``others_cores`` is the CPU time used by every other process (the parent's own is a rounding
    error) divided by the worker's wall time: 0 on a quiet machine, 1 when another process kept
    one core busy the whole time.
    """
    busy0, steal0 = machine_cpu_seconds()
    own0, t0 = _children_cpu_seconds(), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    busy1, steal1 = machine_cpu_seconds()
    others = max(busy1 - busy0 - (_children_cpu_seconds() - own0), 0.0)
    return {"wall_s": wall, "others_cores": others / wall, "steal_s": steal1 - steal0}


def run_workers(
    plan: list[tuple[str, int]], flags: list[str], log: Callable[[str], None], retries: int = 2
) -> dict[str, list[dict]]:
    """Runs each ``(unit, process index)`` of ``plan`` in its own process, one at a time.

    A process during which other processes used more than :data:`QUIET_CORES` of the CPU is run
    again, at most ``retries`` times; the record keeps the last attempt and how many were
    disturbed (``disturbed_attempts``), and the report says when one stayed disturbed.
    """
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (unit, index) in enumerate(plan):
            path = Path(tmp) / f"{unit}_{index}.json"
            cmd = [sys.executable, "-m", "benchmarks", "worker", unit, "--out", str(path)]
            for attempt in range(retries + 1):
                log(f"[{i + 1}/{len(plan)}] {unit}, process {index + 1}")
                run = run_one(cmd + flags)
                if not run["others_cores"] > QUIET_CORES or attempt == retries:
                    break
                log(f"  other processes used {run['others_cores']:.2f} cores: run again")
            record = json.loads(path.read_text())
            record.update(run, disturbed_attempts=attempt)
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
