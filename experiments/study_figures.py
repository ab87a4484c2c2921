"""Study v2's figures: density over time, accuracy vs sparsity, final per-layer density."""

import json
import os

import numpy as np

from experiments import plots
from experiments import study_stats as st
from experiments.configs import study as spec
from experiments.study_tables import rows_of


def figures(rows: list[dict], g: spec.Grid, figs: str) -> list[tuple[str, str]]:
    rs = rows_of(rows, g)
    s, e = g.sparsities[0], g.epochs[-1]
    out = []
    runs = {}
    for i in g.inits:
        for arm in ("ggr", *spec.BASELINES.values()):
            sel = sorted(
                (
                    r
                    for r in rs
                    if (r["arm"], r["init"], int(r["epochs"])) == (arm, i, e)
                    and float(r["sparsity"]) == s
                ),
                key=lambda r: int(r["seed"]),
            )
            if sel:
                size = json.loads(sel[0]["layer_size"])
                recs = [
                    {
                        "type": "topology",
                        "step": step,
                        "density": {k: a / size[k] for k, a in zip(size, act, strict=True)},
                    }
                    for step, act in json.loads(sel[0]["active_over_time"])
                ]
                runs[f"{arm}, {i}, {100 * s:g} %, seed {sel[0]['seed']}"] = recs
    if runs:
        path = os.path.join(figs, f"{g.name}_density_over_time.png")
        out.append(("density over time", plots.density_over_time(runs, path)))
    summary = []
    accs = st.seeds_by_cell(rows, g)
    for (arm, (i, sp, ep)), v in sorted(accs.items()):
        if arm != "dense" and ep == e and v:
            x = list(v.values())
            summary.append(
                {
                    "method": arm,
                    "init": i,
                    "sparsity": sp,
                    "mean": np.mean(x),
                    "std": np.std(x, ddof=1) if len(x) > 1 else 0.0,
                }
            )
    if summary:
        path = os.path.join(figs, f"{g.name}_accuracy_vs_sparsity.png")
        out.append(("accuracy vs sparsity", plots.accuracy_vs_sparsity(summary, path)))
    if any(float(r["sparsity"]) == s and r["method"] != "dense" for r in rs):
        path = os.path.join(figs, f"{g.name}_final_layer_density.png")
        out.append(("final per-layer density", _final_density(rs, g, s, e, path)))
    return out


def _final_density(rs: list[dict], g: spec.Grid, s: float, e: int, path: str) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(g.inits), figsize=(5.5 * len(g.inits), 3.8), squeeze=False)
    for ax, init in zip(axes[0], g.inits, strict=True):
        sel = [
            r
            for r in rs
            if r["init"] == init and float(r["sparsity"]) == s and int(r["epochs"]) == e
        ]
        arms = [a.name for a in g.arms if any(r["arm"] == a.name for r in sel)]
        size = json.loads(sel[0]["layer_size"]) if sel else {}
        width = 0.8 / max(len(arms), 1)
        for j, arm in enumerate(arms):
            act = [json.loads(r["layer_active"]) for r in sel if r["arm"] == arm]
            ax.bar(
                np.arange(len(size)) + j * width,
                [np.mean([a[k] for a in act]) / size[k] for k in size],
                width,
                label=arm,
            )
        ax.set_xticks(np.arange(len(size)) + 0.4 - width / 2, list(size), rotation=30, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"{g.name}: final density, {init}, {100 * s:g} %", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
