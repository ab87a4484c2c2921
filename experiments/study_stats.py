"""Study v2's statistics and selection: paired-by-seed t-intervals, verdicts, claims (a)/(b),
and the validation tables with the winner by ``SELECTION_RULE``.

Functions of runs.csv rows (strings, as ``study_runs.read_rows`` returns them) and of the
pre-registered constants in ``experiments/configs/study.py``; ``experiments.study_report`` turns
the final grids into docs/results.md.
"""

import json
import math
from typing import NamedTuple

import numpy as np
from scipy import stats

from experiments.configs import study as spec
from experiments.errors import UserError

NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar100": 100, "tiny_imagenet": 200}
RULES = (
    f"A comparison is the mean of the per-seed differences (same seeds, data order and budget) "
    f"with a {spec.CONFIDENCE:.0%} t-interval over seeds. **better** / **worse**: the interval "
    f"excludes 0 and the mean exceeds the minimum effect of {100 * spec.MIN_EFFECT:.1f} pp in "
    f"magnitude; **tied**: the interval contains 0 and lies within ±{100 * spec.MIN_EFFECT:.1f} "
    f"pp; **inconclusive**: anything else (including fewer than two seeds). **untestable**: every "
    f"method of the cell is below chance + {100 * spec.CHANCE_MARGIN:.0f} pp (not counted for or "
    f"against). **pending (k/N seeds)**: the cell lacks seeds the grid asks for (not counted)."
)
CLAIM_A = (
    "Claim (a) holds if, in every cell of grid A, GGR's defaults (arm `ggr`) are at least as good "
    f"as {' and '.join(spec.BASELINES.values())}: the lower bound of the interval of "
    f"GGR − comparator is above −{100 * spec.MIN_EFFECT:.1f} pp."
)
CLAIM_B = (
    "Claim (b) compares the sensitivity to the initial distribution: the per-seed gap "
    "acc(ERK) − acc(uniform) of each method, and GGR's gap minus each comparator's gap "
    f"({' and '.join(spec.BASELINES.values())}), paired by seed. It holds if, at every sparsity "
    "of grid A, GGR's gap is no larger than both: the upper bound of the interval of "
    f"gap(GGR) − gap(comparator) is below +{100 * spec.MIN_EFFECT:.1f} pp. A sparsity where "
    "either init is untestable is untestable for claim (b). Gap differences are labelled "
    "**smaller gap** / **larger gap** (GGR's gap against the comparator's) by the same rule as "
    "better / worse."
)


class Paired(NamedTuple):
    """A paired-by-seed comparison: mean difference, its interval, seeds used and the verdict."""

    n: int
    mean: float
    lo: float
    hi: float
    verdict: str


Cell = tuple[str, float, int]  # (init, sparsity, epochs)


def md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def accuracy_column(grid: spec.Grid) -> str:
    return "val_accuracy" if grid.split == "val" else "test_accuracy"


def seeds_by_cell(rows: list[dict], grid: spec.Grid) -> dict[tuple[str, Cell], dict[int, float]]:
    """{(arm, (init, sparsity, epochs)): {seed: accuracy on the grid's split}} of one grid."""
    col = accuracy_column(grid)
    out: dict = {}
    for r in rows:
        if r["grid"] == grid.name and r[col] != "" and int(r["seed"]) in grid.seeds:
            cell = (r["init"], float(r["sparsity"]), int(r["epochs"]))
            out.setdefault((r["arm"], cell), {})[int(r["seed"])] = float(r[col])
    return out


def grid_cells(grid: spec.Grid) -> list[Cell]:
    """The grid's sparse cells in table order: epochs, sparsity, init."""
    return [(i, s, e) for e in grid.epochs for s in grid.sparsities for i in grid.inits]


def t_interval(values, confidence: float = spec.CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided t-interval of the mean; (mean, nan, nan) with fewer than 2 values."""
    v = np.asarray(list(values), dtype=float)
    mean = float(v.mean()) if v.size else math.nan
    if v.size < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return mean, mean - float(half), mean + float(half)


def verdict(mean: float, lo: float, hi: float, min_effect: float = spec.MIN_EFFECT) -> str:
    """better / worse / tied / inconclusive by the rule in :data:`RULES`."""
    if math.isnan(lo):
        return "inconclusive"
    if lo > 0 and mean > min_effect:
        return "better"
    if hi < 0 and mean < -min_effect:
        return "worse"
    if lo <= 0 <= hi and -min_effect <= lo and hi <= min_effect:
        return "tied"
    return "inconclusive"


def paired(a: dict[int, float], b: dict[int, float], need: int, untestable: bool = False) -> Paired:
    """a − b over the seeds both have; pending below ``need`` seeds, then untestable, then rule."""
    seeds = sorted(set(a) & set(b))
    mean, lo, hi = t_interval(a[s] - b[s] for s in seeds)
    if len(seeds) < need:
        return Paired(len(seeds), mean, lo, hi, f"pending ({len(seeds)}/{need} seeds)")
    if untestable:
        return Paired(len(seeds), mean, lo, hi, "untestable")
    return Paired(len(seeds), mean, lo, hi, verdict(mean, lo, hi))


def chance(grid: spec.Grid) -> float:
    from experiments import configs

    return 1.0 / NUM_CLASSES[configs.get_config(grid.config).dataset]


def is_untestable(
    accs: dict[tuple[str, Cell], dict[int, float]], cells: list[Cell], level: float
) -> bool:
    """Every arm with runs in ``cells`` has a mean below ``level`` (chance + margin)."""
    means = [np.mean(list(v.values())) for (_, c), v in accs.items() if c in cells and v]
    return bool(means) and all(m < level for m in means)


class Comparison(NamedTuple):
    cell: Cell
    comparator: str
    result: Paired


def compare_arm(rows: list[dict], grid: spec.Grid, arm: str = "ggr") -> list[Comparison]:
    """``arm`` − each of spec.BASELINES in every cell of the grid, paired by seed."""
    accs = seeds_by_cell(rows, grid)
    level = chance(grid) + spec.CHANCE_MARGIN
    out = []
    for cell in grid_cells(grid):
        dead = is_untestable(accs, [cell], level)
        for base in spec.BASELINES.values():
            p = paired(accs.get((arm, cell), {}), accs.get((base, cell), {}), len(grid.seeds), dead)
            out.append(Comparison(cell, base, p))
    return out


def best_arm(rows: list[dict], grid: spec.Grid, cell: Cell) -> str | None:
    """The arm with the highest mean accuracy in ``cell`` (dense excluded)."""
    accs = seeds_by_cell(rows, grid)
    means = {a: np.mean(list(v.values())) for (a, c), v in accs.items() if c == cell and v}
    return max(means, key=means.get) if means else None


def claim_a(comparisons: list[Comparison]) -> tuple[str, list[Comparison]]:
    """('holds' | 'does not hold' | 'pending', the comparisons that fail or are pending)."""
    judged = [c for c in comparisons if c.result.verdict != "untestable"]
    failing = [
        c
        for c in judged
        if not c.result.lo > -spec.MIN_EFFECT and not c.result.verdict.startswith("pending")
    ]
    pending = [c for c in judged if c.result.verdict.startswith("pending")]
    if failing:
        return "does not hold", failing
    if not judged:
        return "untestable", []
    if pending:
        return "pending", pending
    return "holds", []


def gaps(
    rows: list[dict], grid: spec.Grid, arm: str, sparsity: float, epochs: int
) -> dict[int, float]:
    """Per seed: acc(ERK) − acc(uniform) of ``arm`` at one sparsity."""
    accs = seeds_by_cell(rows, grid)
    erk = accs.get((arm, ("erk", sparsity, epochs)), {})
    uni = accs.get((arm, ("uniform", sparsity, epochs)), {})
    return {s: erk[s] - uni[s] for s in sorted(set(erk) & set(uni))}


def gap_interval(
    rows: list[dict], grid: spec.Grid, arm: str, sparsity: float, epochs: int
) -> Paired:
    """The mean gap of one arm with its t-interval; verdict '' or 'pending (k/N seeds)'."""
    g = gaps(rows, grid, arm, sparsity, epochs)
    mean, lo, hi = t_interval(g.values())
    pending = f"pending ({len(g)}/{len(grid.seeds)} seeds)" if len(g) < len(grid.seeds) else ""
    return Paired(len(g), mean, lo, hi, pending)


# For a gap difference a positive mean is the worse outcome: name the direction, not a ranking.
_GAP_WORDS = {"better": "larger gap", "worse": "smaller gap"}


def claim_b(rows: list[dict], grid: spec.Grid, arm: str = "ggr") -> list[Comparison]:
    """gap(arm) − gap(comparator) per (sparsity, epochs); the Comparison's cell has init 'gap'."""
    accs = seeds_by_cell(rows, grid)
    level = chance(grid) + spec.CHANCE_MARGIN
    out = []
    for e in grid.epochs:
        for s in grid.sparsities:
            dead = any(is_untestable(accs, [(i, s, e)], level) for i in grid.inits)
            for base in spec.BASELINES.values():
                p = paired(
                    gaps(rows, grid, arm, s, e), gaps(rows, grid, base, s, e), len(grid.seeds), dead
                )
                p = p._replace(verdict=_GAP_WORDS.get(p.verdict, p.verdict))
                out.append(Comparison(("gap", s, e), base, p))
    return out


def claim_b_status(comparisons: list[Comparison]) -> tuple[str, list[Comparison]]:
    judged = [c for c in comparisons if c.result.verdict != "untestable"]
    pending = [c for c in judged if c.result.verdict.startswith("pending")]
    failing = [c for c in judged if c not in pending and not c.result.hi < spec.MIN_EFFECT]
    if failing:
        return "does not hold", failing
    if not judged:
        return "untestable", []
    if pending:
        return "pending", pending
    return "holds", []


# --- selection (validation split) -------------------------------------------------------------


class Selection(NamedTuple):
    """A selection grid ranked: arms by mean over the runs every arm has, and the winner."""

    means: dict[str, float]  # arm -> mean validation accuracy, best first
    n_runs: int  # (init, sparsity, seed) runs in each arm's mean
    expected: int  # runs per arm the grid asks for
    winner: str | None


def _options(rows: list[dict], arm: str) -> frozenset:
    r = next(r for r in rows if r["arm"] == arm)
    return frozenset(
        (k, tuple(v) if isinstance(v, list) else v)
        for k, v in json.loads(r["overrides"] or "{}").items()
    )


def selection_winner_of(
    means: dict[str, float], options: dict[str, frozenset], margin: float = spec.SELECTION_MARGIN
) -> str | None:
    """Best mean among arms not disqualified; an arm is disqualified when its options strictly
    contain another arm's and its mean is not higher than that arm's by at least ``margin``."""

    def ok(a):
        return all(
            not (options[b] < options[a]) or means[a] - means[b] >= margin - 1e-12 for b in means
        )

    eligible = [a for a in means if ok(a)]
    return max(eligible, key=means.get) if eligible else None


def rank_selection(rows: list[dict], grid: spec.Grid) -> Selection:
    rows = [r for r in rows if r["grid"] == grid.name and r["val_accuracy"] != ""]
    runs: dict[str, dict] = {}
    for r in rows:
        runs.setdefault(r["arm"], {})[(r["init"], r["sparsity"], r["seed"], r["epochs"])] = float(
            r["val_accuracy"]
        )
    common = set.intersection(*(set(v) for v in runs.values())) if runs else set()
    means = {a: float(np.mean([v[k] for k in common])) for a, v in runs.items() if common}
    means = dict(sorted(means.items(), key=lambda kv: -kv[1]))
    expected = len(grid.inits) * len(grid.sparsities) * len(grid.seeds) * len(grid.epochs)
    winner = selection_winner_of(means, {a: _options(rows, a) for a in means})
    return Selection(means, len(common), expected, winner)


def _selection_table(rows: list[dict], grid: spec.Grid) -> str:
    accs = seeds_by_cell(rows, grid)
    sel = rank_selection(rows, grid)
    cells = [(i, s, e) for e in grid.epochs for s in grid.sparsities for i in grid.inits]
    head = ["rank", "arm", *(f"{100 * s:g} % {i}" for i, s, _ in cells), "runs", "mean"]
    body = []
    ranked = [*sel.means, *(a.name for a in grid.arms if a.name not in sel.means)]
    for k, arm in enumerate(ranked, 1):
        vals = [accs.get((arm, c), {}) for c in cells]
        runs = sum(len(v) for v in vals)
        vals = [f"{pct(np.mean(list(v.values())))} ({len(v)})" if v else "–" for v in vals]
        mean = pct(sel.means[arm]) if arm in sel.means else "–"
        name = f"**{arm}**" if arm == sel.winner else arm
        rank = str(k) if arm in sel.means else "–"
        body.append([rank, name, *vals, f"{runs}/{sel.expected}", mean])
    complete = sel.n_runs == sel.expected and len(sel.means) == len(grid.arms)
    status = "Winner"
    if not complete:
        status = (
            f"Provisional winner (each mean over the {sel.n_runs} of {sel.expected} runs that "
            f"every arm with runs has; {len(grid.arms) - len(sel.means)} arm(s) without runs)"
        )
    return "\n".join(
        [
            f"**{grid.name}** ({grid.question}) — validation accuracy %, mean over seeds (n seeds) "
            "per cell; `mean` over the (init, sparsity, seed) runs that every arm has.",
            "",
            md_table(head, body),
            "",
            f"{status} by the selection rule: **{sel.winner or 'none yet'}**.",
        ]
    )


def selection_tables(rows: list[dict]) -> str:
    """One validation table per selection grid present in ``rows``, with its winner."""
    out = [f"Selection rule: {spec.SELECTION_RULE}."]
    names = [n for n in spec.ORDER if n in spec.GRIDS and spec.GRIDS[n].split == "val"]
    for name in names:
        if any(r["grid"] == name for r in rows):
            out += ["", _selection_table(rows, spec.GRIDS[name])]
    orphans = sorted({r["grid"] for r in rows if r["split"] == "val"} - set(names))
    for name in orphans:
        out += [
            "",
            f"**{name}**: rows in runs.csv but no such grid in configs/study.py (is STAGE1 set?)",
        ]
    if len(out) == 1:
        out.append("\nNo selection runs in runs.csv yet.")
    return "\n".join(out)


def selection_winner(rows: list[dict], grid: str = "select", partial: bool = False) -> str:
    """The winner's arm name by SELECTION_RULE (fills STAGE1 and ggr()'s defaults).

    Raises UserError while the grid is incomplete, unless ``partial``."""
    g = spec.GRIDS[grid]
    sel = rank_selection(rows, g)
    if sel.winner is None:
        raise UserError(f"grid {grid}: no validation runs in runs.csv")
    if not partial and (sel.n_runs < sel.expected or len(sel.means) < len(g.arms)):
        raise UserError(
            f"grid {grid} incomplete: {sel.n_runs}/{sel.expected} runs shared by "
            f"{len(sel.means)}/{len(g.arms)} arms"
        )
    return sel.winner
