"""Markdown tables: one row per run (train) and mean ± std over seeds (compare)."""

import numpy as np


def _bytes(value) -> str:
    """A byte count as the tables show it (``-`` for results written before it was recorded)."""
    return "-" if value is None else f"{value / 1024:,.1f} KiB"


def _layers(layer_density: dict) -> str:
    return " / ".join(f"{d:.3f}" for d in layer_density.values())


def results_table(results: list[dict]) -> str:
    head = (
        "| method | init | sparsity | test accuracy | density | FLOPs vs dense | model size "
        "| moved | per-layer density |"
    )
    rows = [head, "|" + "---|" * 9]
    for r in results:
        init = "-" if r["method"] == "dense" else r["init"]
        rows.append(
            f"| {r['method']} | {init} | {r['sparsity']:.2f} | {100 * r['test_accuracy']:.2f}% "
            f"| {r['density']:.4f} | {r['flops_ratio']:.4f} | {_bytes(r.get('model_bytes'))} "
            f"| {r['moved_total']} "
            f"| {_layers(r['layer_density'])} |"
        )
    if results:
        rows.append("")
        rows.append("per-layer order: " + ", ".join(results[0]["layer_density"]))
    return "\n".join(rows)


def summarize(results: list[dict]) -> list[dict]:
    """Groups runs by (method, init, sparsity); mean and std (over seeds) of the test accuracy."""
    groups = {}
    for r in results:
        groups.setdefault((r["method"], r["init"], r["sparsity"]), []).append(r)
    rows = []
    for (method, init, sparsity), rs in sorted(groups.items()):
        acc = np.array([r["test_accuracy"] for r in rs])
        rows.append(
            {
                "method": method,
                "init": init,
                "sparsity": sparsity,
                "n": len(rs),
                "mean": float(acc.mean()),
                "std": float(acc.std(ddof=1)) if len(rs) > 1 else 0.0,
                "flops_ratio": float(np.mean([r["flops_ratio"] for r in rs])),
                "density": float(np.mean([r["density"] for r in rs])),
                "model_bytes": (
                    float(np.mean([r["model_bytes"] for r in rs]))
                    if all("model_bytes" in r for r in rs)
                    else None
                ),
            }
        )
    return rows


def summary_table(rows: list[dict]) -> str:
    out = [
        "| method | init | sparsity | seeds | test accuracy (mean ± std) | density "
        "| FLOPs vs dense | model size |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['init']} | {r['sparsity']:.2f} | {r['n']} | "
            f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}% | {r['density']:.4f} | "
            f"{r['flops_ratio']:.4f} | {_bytes(r.get('model_bytes'))} |"
        )
    return "\n".join(out)
