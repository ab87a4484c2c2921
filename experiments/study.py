"""Issue 5's reproduction study: runs the study grids and writes docs/results.md with plots.

    python -m experiments.study                      # runs what is missing, then writes the report
    python -m experiments.study --report-only        # rebuilds docs/ from finished runs

Grids (experiments/configs/grids.py): ``study_lenet300`` (LeNet-300-100, every method x 90-99 %
sparsity x uniform/ERK x 3 seeds), ``study_lenet5`` (LeNet-5, 95/98 %, 2 seeds) and the GGR
ablations ``study_ggr_*``. Each run lives in ``<workdir>/<grid>/runs/<cell>`` as written by
``experiments.compare``; finished runs are reused. The verdicts are computed by the rules in
:func:`verdicts` from the committed ``docs/results/runs.csv``.
"""

import argparse
import csv
import json
import os
import sys

import numpy as np

from experiments import compare, metrics, plots
from experiments.configs import grids
from experiments.errors import UserError

BASELINES = ("static", "set", "rigl", "snfs")


def _load(workdir: str, name: str) -> list[dict]:
    grid = grids.get_grid(name)
    out = []
    for cell in compare.cells(grid):
        path = os.path.join(
            workdir, name, "runs", compare.cell_name(cell), cell["method"], "results.json"
        )
        if os.path.exists(path):
            with open(path) as f:
                out.append({"grid": name, **json.load(f)})
    return out


def _stats(runs: list[dict], **where) -> tuple[float, float, int]:
    acc = [r["test_accuracy"] for r in runs if all(r[k] == v for k, v in where.items())]
    if not acc:
        return float("nan"), float("nan"), 0
    return float(np.mean(acc)), float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0, len(acc)


def _cell(m: float, s: float, n: int) -> str:
    return "–" if n == 0 else f"{100 * m:.2f} ± {100 * s:.2f}"


def pivot(runs: list[dict], title: str) -> str:
    """Rows method x init, columns sparsity: test accuracy mean ± std over seeds (%)."""
    sparsities = sorted({r["sparsity"] for r in runs if r["method"] != "dense"})
    head = "| method | init | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    lines = [
        f"**{title}** — test accuracy %, mean ± std over seeds",
        "",
        head,
        "|---|---|" + "---|" * len(sparsities),
    ]
    dense = _stats(runs, method="dense")
    if dense[2]:
        lines.append("| dense | – | " + " | ".join([_cell(*dense)] * len(sparsities)) + " |")
    for method in (*BASELINES, "ggr"):
        for init in ("uniform", "erk"):
            cells = [_cell(*_stats(runs, method=method, init=init, sparsity=s)) for s in sparsities]
            name = f"**{method}**" if method == "ggr" else method
            lines.append(f"| {name} | {init} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flops_table(runs: list[dict], title: str) -> str:
    """Inference FLOPs of the final networks relative to dense (mean over seeds)."""
    sparsities = sorted({r["sparsity"] for r in runs if r["method"] != "dense"})
    lines = [
        f"**{title}** — inference FLOPs relative to dense",
        "",
        "| method | init | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |",
        "|---|---|" + "---|" * len(sparsities),
    ]
    for method in (*BASELINES, "ggr"):
        for init in ("uniform", "erk"):
            vals = []
            for s in sparsities:
                f = [
                    r["flops_ratio"]
                    for r in runs
                    if (r["method"], r["init"], r["sparsity"]) == (method, init, s)
                ]
                vals.append(f"{np.mean(f):.4f}" if f else "–")
            lines.append(f"| {method} | {init} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ablation_table(main: list[dict], ablations: dict[str, list[dict]]) -> str:
    lines = ["| GGR variant (98 % sparsity) | uniform init | ERK init |", "|---|---|---|"]
    base = [r for r in main if r["method"] == "ggr" and r["sparsity"] == 0.98]
    rows = [("defaults: rho 0.5, no normalisation, batch gradient, min one per output unit", base)]
    rows += [
        (f"{name.removeprefix('study_ggr_')}: {grids.STUDY_ABLATIONS[name]}", rs)
        for name, rs in ablations.items()
    ]
    for label, rs in rows:
        lines.append(
            f"| {label} | "
            + " | ".join(_cell(*_stats(rs, init=i)) for i in ("uniform", "erk"))
            + " |"
        )
    return "\n".join(lines)


def verdicts(runs: list[dict]) -> tuple[str, str]:
    """Plain rules, stated in the text they produce.

    (a) GGR vs the best baseline at each (sparsity >= 95 %, init): "ahead"/"behind" when the
        difference of means exceeds the larger of the two standard deviations, else "tied".
        Holds if ahead in at least half of the cells and never behind; does not hold if behind in
        at least half or never ahead; inconclusive otherwise.
    (b) Sensitivity to the initial distribution = |mean(uniform) - mean(ERK)| per sparsity.
        GGR is "more robust" at a sparsity when its gap is smaller than both RigL's and SET's by
        more than the noise (the largest std among the cells compared), "less robust" when it is
        larger than RigL's by more than the noise, else "similar". Holds if more robust at some
        sparsity and never less robust; does not hold if never more robust; inconclusive
        otherwise.
    """
    sparsities = sorted({r["sparsity"] for r in runs if r["sparsity"] >= 0.95})
    outcome, detail = [], []
    for s in sparsities:
        for init in ("uniform", "erk"):
            g, gs, _ = _stats(runs, method="ggr", init=init, sparsity=s)
            best = max(BASELINES, key=lambda m: _stats(runs, method=m, init=init, sparsity=s)[0])
            b, bs, _ = _stats(runs, method=best, init=init, sparsity=s)
            margin = max(gs, bs)
            o = "ahead" if g - b > margin else "behind" if b - g > margin else "tied"
            r, _, _ = _stats(runs, method="rigl", init=init, sparsity=s)
            outcome.append(o)
            detail.append(
                f"{s:.0%} {init}: GGR {100 * g:.2f} vs best baseline {best} "
                f"{100 * b:.2f} ({100 * (g - b):+.2f} pp, {o}; vs RigL "
                f"{100 * (g - r):+.2f} pp)"
            )
    ahead, behind = outcome.count("ahead"), outcome.count("behind")
    if ahead * 2 >= len(outcome) and behind == 0:
        va = "**holds here**"
    elif behind * 2 >= len(outcome) or ahead == 0:
        va = "**does not hold here**"
    else:
        va = "**inconclusive here**"
    a = (
        f"{va}: GGR ahead of the best baseline in {ahead}, tied in {outcome.count('tied')}, "
        f"behind in {behind} of {len(outcome)} cells. " + "; ".join(detail) + "."
    )

    robust, detail = [], []
    for s in sparsities:
        stats = {
            (m, i): _stats(runs, method=m, init=i, sparsity=s)
            for m in ("ggr", "rigl", "set")
            for i in ("uniform", "erk")
        }
        gap = {m: abs(stats[m, "uniform"][0] - stats[m, "erk"][0]) for m in ("ggr", "rigl", "set")}
        noise = max(v[1] for v in stats.values())
        o = (
            "more robust"
            if gap["ggr"] < min(gap["rigl"], gap["set"]) - noise
            else "less robust"
            if gap["ggr"] > gap["rigl"] + noise
            else "similar"
        )
        robust.append(o)
        detail.append(
            f"{s:.0%}: GGR {100 * gap['ggr']:.2f} pp, RigL {100 * gap['rigl']:.2f} pp, "
            f"SET {100 * gap['set']:.2f} pp ({o})"
        )
    if "more robust" in robust and "less robust" not in robust:
        vb = "**holds here**"
    elif "more robust" not in robust:
        vb = "**does not hold here**"
    else:
        vb = "**inconclusive here**"
    b = f"{vb}: accuracy gap between uniform and ERK init — " + "; ".join(detail) + "."
    return a, b


def _final_density_plot(runs: list[dict], sparsity: float, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, init in zip(axes, ("uniform", "erk"), strict=True):
        sel = [
            r
            for r in runs
            if r["init"] == init and r["sparsity"] == sparsity and r["method"] != "dense"
        ]
        methods = [m for m in (*BASELINES, "ggr") if any(r["method"] == m for r in sel)]
        layers = list(sel[0]["layer_density"]) if sel else []
        width = 0.8 / max(len(methods), 1)
        for j, m in enumerate(methods):
            d = [
                np.mean([r["layer_density"][name] for r in sel if r["method"] == m])
                for name in layers
            ]
            ax.bar(np.arange(len(layers)) + j * width, d, width, label=m)
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=30, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(f"final per-layer density, {init} init, {sparsity:.0%} sparsity")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("density (mean over seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _density_runs(workdir: str, name: str, sparsity: float) -> dict[str, list[dict]]:
    grid = grids.get_grid(name)
    out = {}
    for method in ("rigl", "ggr"):
        for init in ("uniform", "erk"):
            cell = {"method": method, "init": init, "sparsity": sparsity, "seed": grid["seeds"][0]}
            path = os.path.join(
                workdir, name, "runs", compare.cell_name(cell), method, "metrics.jsonl"
            )
            if os.path.exists(path):
                out[f"{method}, {init} init, {sparsity:.0%}"] = metrics.read(path)
    return out


def write_report(workdir: str, out: str) -> str:
    """Writes ``<out>/results.md``, ``<out>/results/runs.csv`` and plots; returns the md path."""
    figs = os.path.join(out, "results")
    os.makedirs(figs, exist_ok=True)
    loaded = {name: _load(workdir, name) for name in grids.STUDY}
    if not loaded["study_lenet300"]:
        raise UserError(f"no finished study_lenet300 runs under {workdir}; run the study first")
    with open(os.path.join(figs, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "grid",
                "method",
                "init",
                "sparsity",
                "seed",
                "test_accuracy",
                "density",
                "flops_ratio",
                "moved_total",
                "layer_density",
            ]
        )
        for name, runs in loaded.items():
            for r in runs:
                w.writerow(
                    [
                        name,
                        r["method"],
                        r["init"],
                        r["sparsity"],
                        r["seed"],
                        r["test_accuracy"],
                        r["density"],
                        r["flops_ratio"],
                        r["moved_total"],
                        json.dumps(r["layer_density"]),
                    ]
                )
    main, lenet5 = loaded["study_lenet300"], loaded["study_lenet5"]
    for name, runs, s in (("lenet300", main, 0.98), ("lenet5", lenet5, 0.98)):
        if runs:
            plots.density_over_time(
                _density_runs(workdir, f"study_{name}", s),
                os.path.join(figs, f"density_over_time_{name}.png"),
            )
            _final_density_plot(runs, s, os.path.join(figs, f"final_layer_density_{name}.png"))
            from experiments import report

            rows = [r for r in report.summarize(runs) if r["method"] != "dense"]
            plots.accuracy_vs_sparsity(rows, os.path.join(figs, f"accuracy_vs_sparsity_{name}.png"))
    a, b = verdicts(main)
    notes = os.path.join(out, "results_notes.md")
    text = [
        "# Reproduction study: GGR vs RigL / SET / SNFS / static on Fashion-MNIST",
        "",
        "Generated by `python -m experiments.study` (tables, plots and verdicts; raw per-run "
        "results in [results/runs.csv](results/runs.csv)). The paper (Parger et al. 2022, "
        "[arXiv:2210.14012](https://arxiv.org/abs/2210.14012)) claims that GGR (a) finds better "
        "subnetworks than per-layer methods at very high sparsity and (b) is much less sensitive "
        "to an unbalanced initial density distribution (uniform vs ERK). Its CIFAR-100 CNNs do not "
        "fit a 2-core CPU; these are the claims tested where they can be here.",
        "",
        "## Setup and budget (the same for every method)",
        "",
        "- LeNet-300-100 (784-300-100-10 MLP), Fashion-MNIST 60k/10k, SGD momentum 0.9, lr 0.05 "
        "cosine, weight decay 1e-4, batch 100, **5 epochs** (3000 steps), topology update every "
        "100 steps until 75 % of training, drop fraction 0.3 cosine-decayed; 3 seeds.",
        "- LeNet-5, same data, **1 epoch** (600 steps), update every 50 steps; 2 seeds.",
        "- Sparsity counts the kernels only (biases dense). No method was tuned: every method runs "
        "with the same config; GGR runs with the library defaults. The short budgets are what "
        "fits this machine; results at the paper's budgets may differ.",
        "",
        "## Verdicts",
        "",
        f"- **Claim (a), better subnetworks at very high sparsity (LeNet-300-100):** {a}",
        f"- **Claim (b), robustness to the initial distribution (LeNet-300-100):** {b}",
    ]
    if lenet5:
        a5, b5 = verdicts(lenet5)
        text += [
            f"- **Claim (a), LeNet-5 (1 epoch, 2 seeds):** {a5}",
            f"- **Claim (b), LeNet-5:** {b5}",
        ]
    if os.path.exists(notes):
        with open(notes) as f:
            text += ["", f.read().strip()]
    text += [
        "",
        "## LeNet-300-100",
        "",
        pivot(main, "LeNet-300-100, Fashion-MNIST"),
        "",
        "![accuracy vs sparsity](results/accuracy_vs_sparsity_lenet300.png)",
        "",
        "Per-layer density over time at 98 % sparsity (seed 0), GGR vs RigL, uniform and ERK "
        "init — the paper's central figure:",
        "",
        "![density over time](results/density_over_time_lenet300.png)",
        "",
        "![final per-layer density](results/final_layer_density_lenet300.png)",
        "",
        flops_table(main, "LeNet-300-100"),
        "",
        "For an MLP every active weight costs one multiply-add per example, so FLOPs follow "
        "the total density whatever the layer distribution.",
        "",
    ]
    if lenet5:
        text += [
            "## LeNet-5",
            "",
            pivot(lenet5, "LeNet-5, Fashion-MNIST, 1 epoch"),
            "",
            "![density over time](results/density_over_time_lenet5.png)",
            "",
            "![final per-layer density](results/final_layer_density_lenet5.png)",
            "",
            flops_table(lenet5, "LeNet-5"),
            "",
            "Convolution weights are reused at every output position, so moving density "
            "between conv and dense layers changes FLOPs at a fixed parameter count.",
            "",
        ]
    ablations = {n: loaded[n] for n in grids.STUDY_ABLATIONS if loaded[n]}
    if ablations:
        text += [
            "## GGR ablations (LeNet-300-100, 98 %, 3 seeds, test accuracy %)",
            "",
            ablation_table(main, ablations),
            "",
        ]
    path = os.path.join(out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    return path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__)
    p.add_argument("--workdir", default="runs/study", help="where the grids' runs live")
    p.add_argument("--out", default="docs", help="where results.md and results/ are written")
    p.add_argument("--workers", type=int, default=0, help="parallel processes per grid")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report")
    args = p.parse_args(argv)
    try:
        if not args.report_only:
            for name in grids.STUDY:
                compare.run_grid(
                    grids.get_grid(name), os.path.join(args.workdir, name), workers=args.workers
                )
        print("wrote", write_report(args.workdir, args.out))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
