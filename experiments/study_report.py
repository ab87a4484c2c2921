"""Study v2's report: the selection tables and docs/results.md (tables, verdicts, figures).

Everything is derived from runs.csv rows, the pre-registration in ``experiments/configs/study.py``
and the named configs; the statistics are in ``experiments.study_stats``.

    python -m experiments.study selection   # selection_tables(rows)
    python -m experiments.study report      # write_report(rows, "docs")
"""

import collections
import os

from experiments import study_figures, study_runs
from experiments import study_stats as st
from experiments import study_tables as tb
from experiments.configs import study as spec
from experiments.study_stats import selection_tables, selection_winner
from experiments.study_tables import ci, col, config, rows_of

__all__ = ["selection_tables", "selection_winner", "write_report"]

COMMANDS = (
    "python -m experiments.study run --grids select        # then set STAGE1 in "
    "experiments/configs/study.py",
    "python -m experiments.study run --grids select2,A,B,C,D",
    "python -m experiments.study selection",
    "python -m experiments.study report",
)
V1_CSV = os.path.join("docs", "results", "v1_runs.csv")


# --- pre-registration and setup ----------------------------------------------------------------


def _preregistration() -> str:
    lines = [
        "## Pre-registration",
        "",
        "Fixed in `experiments/configs/study.py` before the runs (this section is generated "
        "from it).",
        "",
    ]
    for name in (n for n in spec.ORDER if n in spec.GRIDS):
        g = spec.GRIDS[name]
        arms = ", ".join(f"`{a.name}`" for a in g.arms)
        sparsity = ", ".join(f"{100 * s:g} %" for s in g.sparsities)
        lines.append(
            f"- **{name}** ({g.split} split) — {g.question} — arms {arms}; inits "
            f"{'/'.join(g.inits)}; sparsity {sparsity}; {'/'.join(map(str, g.epochs))} "
            f"epochs; seeds {', '.join(map(str, g.seeds))}."
        )
    base = "; ".join(f"{k}: **{v}**" for k, v in spec.BASELINES.items())
    lines += [
        "",
        f"- Comparators per claim — {base}. SET, static and dense are context, never the "
        "comparator of a verdict.",
        f"- Metric: test accuracy (validation accuracy for selection grids). {st.RULES}",
        f"- Chance is 1 / number of classes; margin {100 * spec.CHANCE_MARGIN:.0f} pp.",
        f"- {st.CLAIM_A}",
        f"- {st.CLAIM_B}",
        f"- Selection: {spec.SELECTION_RULE}. Stage 1's winner: "
        f"`{spec.STAGE1 or 'not chosen yet'}`. The final grids' `ggr` arm runs the library "
        f"defaults at the commit of the run; `{spec.GGR_V1.name}` the v1 defaults.",
    ]
    return "\n".join(lines)


def _distinct(rows: list[dict], col: str, fmt: str) -> str:
    vals = sorted({float(r[col]) for r in rows if r[col] != "" and r["method"] != "dense"})
    if not vals:
        return "–"
    return format(vals[0], fmt) + (f"–{format(vals[-1], fmt)}" if len(vals) > 1 else "")


def _setup(rows: list[dict]) -> str:
    head = [
        "grid",
        "model",
        "epochs",
        "batch",
        "optimizer, lr",
        "Δt",
        "drop",
        "end",
        "validation",
        "topology updates",
        "lr at last update",
    ]
    body = []
    for name in (n for n in spec.ORDER if n in spec.GRIDS):
        g = spec.GRIDS[name]
        c = config(g)
        model = c.model + (f" {'-'.join(map(str, c.hidden))}" if c.model == "mlp" else "")
        for e in g.epochs:
            rs = [r for r in rows_of(rows, g) if int(r["epochs"]) == e]
            body.append(
                [
                    name,
                    f"{model} ({c.dataset})",
                    str(e),
                    str(c.batch_size),
                    f"{c.optimizer} m={c.momentum}, {c.learning_rate} {c.lr_schedule}, "
                    f"wd {c.weight_decay}",
                    str(c.delta_t),
                    str(c.drop_fraction),
                    str(c.end_fraction),
                    f"{c.validation_size} (seed {c.validation_seed})",
                    _distinct(rs, "n_updates", ".0f"),
                    _distinct(rs, "lr_at_last_update", ".2g"),
                ]
            )
    c = config(spec.GRIDS["A"])
    ggr = ", ".join(f"{k.removeprefix('ggr_')} {c[k]}" for k in c if k.startswith("ggr_"))
    return (
        "## Setup\n\n"
        + st.md_table(head, body)
        + (
            "\n\nThe same config, seeds, data order and budget for every method of a grid; "
            "the last two columns are read from the runs (sparse methods; '–': no runs yet). "
            f"Arm `ggr` runs the config's GGR fields (at the commit of this report: {ggr}, "
            f"EMA decay {c.signal_decay}); the other GGR arms override them as listed in "
            "runs.csv's `overrides` column."
        )
    )


# --- final grids ------------------------------------------------------------------------------


def _grid_section(rows: list[dict], g: spec.Grid, figs: str) -> str:
    parts = [f"## Grid {g.name}: {g.question}", ""]
    if not rows_of(rows, g):
        return "\n".join(parts + ["No runs yet."])
    best = [(c, st.best_arm(rows, g, c)) for c in st.grid_cells(g)]
    best = "; ".join(f"{col(g, s, e)} {i}: {b}" for (i, s, e), b in best if b)
    parts += [
        tb.accuracy_table(rows, g),
        "",
        f"Highest mean per cell (context, not a verdict): {best}.",
        "",
        tb.differences_table(rows, g),
        "",
    ]
    if set(g.inits) >= {"uniform", "erk"}:
        parts += [tb.gap_table(rows, g), ""]
    for e in g.epochs:
        for s in g.sparsities:
            t = tb.layer_table(rows, g, s, e)
            parts += [t, ""] if t else []
    parts += [tb.flops_table(rows, g), ""]
    for title, path in study_figures.figures(rows, g, figs):
        parts += [f"![{title}](results/{os.path.basename(path)})", ""]
    return "\n".join(parts)


# --- claims, provenance, the report ----------------------------------------------------------


def _cells_text(comps: list[st.Comparison]) -> str:
    return "; ".join(
        f"{100 * c.cell[1]:g} % {c.cell[0]} vs {c.comparator}: {ci(c.result, ' pp')}" for c in comps
    )


def _claim_a(rows: list[dict]) -> str:
    g = spec.GRIDS["A"]
    comps = st.compare_arm(rows, g)
    status, which = st.claim_a(comps)
    dead = sorted({c.cell for c in comps if c.result.verdict == "untestable"})
    text = f"**Claim (a), grid A: {status}.** "
    if status == "holds":
        low = min(c.result.lo for c in comps if c.result.verdict != "untestable")
        text += (
            f"GGR's defaults are at least as good as {' and '.join(spec.BASELINES.values())} "
            f"in every cell (lowest lower bound {100 * low:+.2f} pp)."
        )
    elif status == "does not hold":
        pend = sum(c.result.verdict.startswith("pending") for c in comps)
        best = {c.cell: st.best_arm(rows, g, c.cell) for c in comps}
        text += (
            f"GGR's defaults are not shown at least as good in {len(which)} of "
            f"{len(comps)} comparisons: {_cells_text(which)}."
            + (f" ({pend} comparisons still pending.)" if pend else "")
            + " Best method per cell (highest mean test accuracy): "
            + "; ".join(f"{100 * c[1]:g} % {c[0]}: {b}" for c, b in best.items())
            + "."
        )
    else:
        text += f"{len(which)} of {len(comps)} comparisons lack seeds."
    if dead:
        text += f" Untestable cells: {', '.join(f'{100 * s:g} % {i}' for i, s, _ in dead)}."
    return text


def _claim_b(rows: list[dict]) -> str:
    comps = st.claim_b(rows, spec.GRIDS["A"])
    status, which = st.claim_b_status(comps)
    text = f"**Claim (b), grid A: {status}.** gap(GGR) − gap(comparator) per sparsity: "
    if all(c.result.n == 0 for c in comps):
        return text + "no paired seeds yet."
    text += (
        "; ".join(f"{100 * c.cell[1]:g} % vs {c.comparator}: {ci(c.result, ' pp')}" for c in comps)
        + "."
    )
    if status == "does not hold":
        text += (
            " GGR's gap is not shown to be no larger in: "
            + ", ".join(f"{100 * c.cell[1]:g} % vs {c.comparator}" for c in which)
            + "."
        )
    return text


def _other_grids(rows: list[dict]) -> str:
    """Context from the final grids beyond A: the paired verdicts of GGR's defaults, counted."""
    parts = []
    for name in (n for n in spec.ORDER if n in spec.GRIDS and n != "A"):
        g = spec.GRIDS[name]
        comps = st.compare_arm(rows, g) if g.split == "test" and rows_of(rows, g) else []
        if not comps:
            continue
        per_base = []
        for base in spec.BASELINES.values():
            counts = collections.Counter(
                c.result.verdict.split(" ")[0] for c in comps if c.comparator == base
            )
            per_base.append(
                f"vs {base} " + ", ".join(f"{k} {v}" for v, k in sorted(counts.items()))
            )
        parts.append(f"grid {name}: " + "; ".join(per_base))
    if not parts:
        return ""
    return (
        "**Grids beyond A (context, not claims):** paired verdicts of GGR's defaults over the "
        "cells of each grid (tables below): " + "; ".join(parts) + "."
    )


def _provenance(rows: list[dict]) -> str:
    lines = ["## Provenance", "", "Commits that made the runs (runs.csv's `commit` column):", ""]
    for name in (n for n in spec.ORDER if n in spec.GRIDS):
        commits = sorted({r["commit"] for r in rows if r["grid"] == name})
        if not commits:
            continue
        warn = []
        if any(c.endswith("+dirty") for c in commits):
            warn.append("**warning: runs from a working tree with uncommitted changes**")
        if len(commits) > 1:
            warn.append("**warning: the grid's runs come from different commits**")
        lines.append(
            f"- {name}: {', '.join(f'`{c}`' for c in commits)}"
            + (" — " + "; ".join(warn) if warn else "")
        )
    head = study_runs.git_commit()
    lines += [
        "",
        f"This report was built at `{head}`; rows from another commit are from older "
        "code (rerun them, or read their tables as from that commit).",
    ]
    lines += [
        "",
        "Rebuild everything (resumable; a run already in runs.csv is never redone):",
        "",
        "```",
        *COMMANDS,
        "```",
    ]
    return "\n".join(lines)


def _since_v1() -> str:
    v1 = study_runs.read_rows(V1_CSV)
    epochs = [e for g in spec.GRIDS.values() if g.split == "test" for e in g.epochs]
    return (
        "## What changed since v1\n\n"
        "v1 trained 5 epochs (LeNet-5: 1), had no validation split (GGR's defaults were chosen "
        "on the test set), judged claim (a) against the best baseline picked after seeing the "
        "numbers and claim (b) without SNFS, and counted cells at chance. v2 holds out a "
        "validation split for every choice, pre-registers the comparators per claim, pairs by "
        "seed with t-intervals and a minimum effect, marks chance-level cells untestable, and "
        f"trains {min(epochs)}-{max(epochs)} epochs. v1's raw rows "
        f"({len(v1)} runs) are kept in [results/v1_runs.csv](results/v1_runs.csv)."
    )


def write_report(rows: list[dict], out: str) -> str:
    """Writes ``<out>/results.md`` and its figures under ``<out>/results/``; returns the md path."""
    figs = os.path.join(out, "results")
    os.makedirs(figs, exist_ok=True)
    finals = [g for n, g in spec.GRIDS.items() if g.split == "test"]
    text = [
        "# Study v2: GGR vs RigL and SNFS on Fashion-MNIST",
        "",
        "Generated by `python -m experiments.study report` from `docs/results/runs.csv` (one row "
        "per run, with its commit, config overrides and seed) and `experiments/configs/study.py`. "
        "Selection numbers are on the validation split, final tables on the test split.",
        "",
        _preregistration(),
        "",
        _setup(rows),
        "",
        "## Verdicts",
        "",
        "- " + _claim_a(rows),
        "- " + _claim_b(rows),
        *(["- " + other] if (other := _other_grids(rows)) else []),
        "",
        "## Selection (validation split only)",
        "",
        selection_tables(rows),
        "",
        *(_grid_section(rows, g, figs) + "\n" for g in finals),
        _provenance(rows),
        "",
        _since_v1(),
    ]
    path = os.path.join(out, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    return path
