"""Figures from metrics JSONL records: per-layer density over time (the paper's central figure),
accuracy curves, and accuracy against sparsity for a grid."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _density_series(records):
    steps, layers = [], {}
    for r in records:
        density = r.get("layer_density") if r.get("type") == "final" else r.get("density")
        if r.get("type") in ("init", "topology", "final") and density:
            steps.append(r["step"])
            for name, d in density.items():
                layers.setdefault(name, []).append(d)
    if all(d == 1.0 for values in layers.values() for d in values):
        return [], {}  # a dense run has nothing to show
    return steps, layers


def density_over_time(runs: dict[str, list[dict]], path: str) -> str:
    """One panel per run: the density of every sparse layer at each topology update."""
    runs = {k: v for k, v in runs.items() if _density_series(v)[0]}
    n = max(len(runs), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (label, records) in zip(axes.flat, runs.items(), strict=False):
        steps, layers = _density_series(records)
        for name, values in layers.items():
            ax.plot(steps[: len(values)], values, marker=".", label=name)
        ax.set_yscale("log")
        low = min(min(v) for v in layers.values())
        high = max(max(v) for v in layers.values())
        if high < 1.5 * low:  # constant densities: show a readable range around them
            ax.set_ylim(low / 2, min(high * 2, 1.05))
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_ylabel("layer density")
        ax.grid(True, alpha=0.3)
        if len(layers) <= 12:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_curves(runs: dict[str, list[dict]], path: str) -> str:
    """Test accuracy after each epoch, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, records in runs.items():
        evals = [r for r in records if r.get("type") == "eval"]
        ax.plot(
            [r["epoch"] for r in evals],
            [r["test_accuracy"] for r in evals],
            marker=".",
            label=label,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_sparsity(rows: list[dict], path: str) -> str:
    """Mean ± std test accuracy against sparsity, one line per (method, init)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['method']} ({r['init']})", []).append(r)
    for label, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["sparsity"])
        ax.errorbar(
            [r["sparsity"] for r in rs],
            [r["mean"] for r in rs],
            yerr=[r["std"] for r in rs],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
