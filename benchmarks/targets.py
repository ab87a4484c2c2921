"""The one table of targets: it drives both the verdicts and the prose of RESULTS.md.

A target reads a value of one unit in every process: ``numerator / denominator`` where both are
measured in the same process (a ratio), or ``numerator`` alone (``denominator=None``). It is met
only if the value meets the threshold in every process.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import harness


class Target(NamedTuple):
    id: str  # stable id, the key in RESULTS.json
    text: str  # what is compared, for the report
    unit: str  # the unit whose processes are read (see measure.unit)
    numerator: str  # value id
    denominator: str | None  # value id, or None: the value itself
    threshold: float  # met when value <= threshold in every process
    suffix: str  # "x" for ratios, " s" for seconds
    source: str  # where the target comes from
    limit: str = ""  # what limits it: shown in the report when the target is not met


_MASKED = "masked step (`gj.mask_gradients`/`mask_updates`)"
_RIGL = "RigL update (`gj.rigl()`)"
_GGR = "GGR update (default `gj.ggr()`)"
_POINT2, _POINT3 = "issue 14, point 2", "issue 14, point 3"


_LIMIT_MASKED = (
    "XLA compiles SGD + momentum into two passes per leaf (the new momentum, then the new "
    "params), and in the masked step each of them reads the mask: 2 bytes per param more. At "
    "10M params XLA's cost analysis gives 411.9 MB accessed per masked step against 391.9 MB per "
    "dense step (+5.1 %), the ratio measured. The mask-wrapping optimizer (jaxpruner's style) "
    "costs the same. Dropping `mask_updates` would save one read but no longer guard optimizers "
    "whose updates are not zero where gradients, state and params are."
)
_LIMIT_UPDATE = (
    "An update is two selections, each ~4 passes that write a byte array and ~15-20 counting "
    "passes over it. At 1M params the byte arrays fit in cache, so each pass is short and a "
    "fixed cost per pass weighs (17-19 memory-floor passes per update, against 7-8 at 10M). "
    "The verdict needs every process: one process whose updates ran slower than the others' "
    "fails it."
)


def _vs_dense(what: str, size: str, value: str, threshold: float, limit: str = "") -> Target:
    """``value / dense step`` of the ``size`` MLP, both medians of the same process."""
    text = f"{what} / dense step, {size} params"
    return Target(what.split()[0].lower() + "_" + size, text, f"mlp_{size}", value,
                  "ms:dense_step", threshold, "x", _POINT2, limit)  # fmt: skip


TARGETS: tuple[Target, ...] = (
    _vs_dense(_MASKED, "1M", "ms:masked_step", 1.03, _LIMIT_MASKED),
    _vs_dense(_MASKED, "10M", "ms:masked_step", 1.03, _LIMIT_MASKED),
    _vs_dense(_RIGL, "1M", "ms:update_rigl", 1.0, _LIMIT_UPDATE),
    _vs_dense(_RIGL, "10M", "ms:update_rigl", 1.0, _LIMIT_UPDATE),
    _vs_dense(_GGR, "1M", "ms:update_ggr", 1.5, _LIMIT_UPDATE),
    _vs_dense(_GGR, "10M", "ms:update_ggr", 1.5, _LIMIT_UPDATE),
    Target(
        "compile_64_layers",
        "compile time of the default GGR update, 64 layers (~1M params)",
        "layers_64",
        "compile_s:update_ggr",
        None,
        15.0,
        " s",
        _POINT3,
    ),  # fmt: skip
)


def per_process(target: Target, units: dict[str, list[dict]]) -> list[float] | None:
    """The target's value in each process of its unit; None when the unit was not measured."""
    records = units.get(target.unit)
    if not records or any(target.numerator not in r["values"] for r in records):
        return None
    if target.denominator is None:
        return [float(r["values"][target.numerator]) for r in records]
    return harness.ratios(records, target.numerator, target.denominator)


def verdict(target: Target, units: dict[str, list[dict]]) -> dict:
    """``{"values", "median", "min", "max", "met_in", "processes", "met"}`` of one target."""
    vals = per_process(target, units)
    if vals is None:
        return {"measured": False, "met": None}
    met_in = sum(v <= target.threshold for v in vals)
    return {
        "measured": True,
        "per_process": vals,
        "median": float(np.median(vals)),
        "min": min(vals),
        "max": max(vals),
        "met_in": met_in,
        "processes": len(vals),
        "met": met_in == len(vals),
    }


def verdicts(units: dict[str, list[dict]]) -> dict[str, dict]:
    return {t.id: verdict(t, units) for t in TARGETS}
