"""Study v2: paired statistics and verdicts on hand-made rows, the selection rule, the report, and
the resumable grid runner on a tiny grid."""

import json
import math
import os
import sys

import numpy as np
import pytest

from experiments import study_report, study_runs
from experiments import study_stats as st
from experiments.configs import study as spec
from experiments.errors import UserError

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # t quantiles, (1 + 0.95) / 2, by dof
SIZE = {"Dense_0": 235200, "Dense_1": 30000, "Dense_2": 1000}


def _row(grid, arm, init, sparsity, seed, acc, epochs=30, overrides=None, commit="abc123"):
    g = spec.GRIDS.get(grid)
    split = g.split if g else "val"
    method = {a.name: a.method for a in g.arms}.get(arm, "ggr") if g else "ggr"
    active = {k: max(1, round(v * (1 - sparsity))) for k, v in SIZE.items()}
    return {c: "" for c in study_runs.COLUMNS} | {
        "grid": grid, "arm": arm, "method": method, "init": init, "sparsity": f"{sparsity:g}",
        "seed": str(seed), "epochs": str(epochs), "split": split,
        "val_accuracy": str(acc), "test_accuracy": str(acc) if split == "test" else "",
        "density": str(1 - sparsity), "flops_ratio": str(1 - sparsity),
        "training_flops_ratio": str(min(1.0, 1.2 * (1 - sparsity))), "n_updates": "112",
        "last_update_step": "11200", "lr_at_last_update": "0.0073",
        "layer_active": json.dumps(active), "layer_size": json.dumps(SIZE),
        "active_over_time": json.dumps([[0, list(active.values())], [100, list(active.values())]]),
        "overrides": json.dumps(overrides or {}), "commit": commit,
    }  # fmt: skip


def _grid_rows(grid, acc, seeds=None):
    """One row per cell of a grid, accuracy acc(arm, init, sparsity, seed, epochs)."""
    g = spec.GRIDS[grid]
    out = []
    for c in study_runs.cells(g):
        if seeds is None or c["seed"] in seeds:
            a = acc(c["arm"].name, c["init"], c["sparsity"], c["seed"], c["epochs"])
            out.append(
                _row(
                    grid,
                    c["arm"].name,
                    c["init"],
                    c["sparsity"],
                    c["seed"],
                    a,
                    c["epochs"],
                    dict(c["arm"].overrides),
                )
            )
    return out


def test_t_interval_by_hand():
    mean, lo, hi = st.t_interval([0.01, 0.012, 0.014, 0.016, 0.018])
    half = T_975[4] * math.sqrt(1e-5) / math.sqrt(5)  # sd of the five differences: sqrt(1e-5)
    assert mean == pytest.approx(0.014) and half == pytest.approx(0.0039265, abs=1e-7)
    assert (lo, hi) == pytest.approx((0.014 - half, 0.014 + half))
    assert math.isnan(st.t_interval([0.01])[1])


@pytest.mark.parametrize(
    "diffs, expected",
    [
        ([0.010, 0.011, 0.012], "better"),  # [+0.85, +1.35] pp
        ([-0.010, -0.011, -0.012], "worse"),
        ([0.0, 0.001, -0.001], "tied"),  # [-0.25, +0.25] pp: contains 0, within 0.3 pp
        ([0.01, 0.02, 0.03], "inconclusive"),  # [-0.48, +4.48] pp: contains 0, too wide
        ([0.0010, 0.0011, 0.0012], "inconclusive"),  # excludes 0 but below the minimum effect
        ([0.0025, 0.0035, 0.0045], "better"),  # [+0.10, +0.60], mean 0.35 pp > 0.3 pp
    ],
)
def test_verdicts_by_hand(diffs, expected):
    a = {s: 0.8 + d for s, d in enumerate(diffs)}
    b = {s: 0.8 for s in range(len(diffs))}
    p = st.paired(a, b, need=3)
    half = T_975[2] * np.std(diffs, ddof=1) / math.sqrt(3)
    assert (p.mean, p.lo, p.hi) == pytest.approx(
        (np.mean(diffs), np.mean(diffs) - half, np.mean(diffs) + half)
    )
    assert p.verdict == expected


def test_pending_and_untestable():
    assert st.paired({0: 0.9, 1: 0.9}, {0: 0.8, 1: 0.8, 2: 0.8}, need=3).verdict == (
        "pending (2/3 seeds)"
    )
    assert st.paired({0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.8, 1: 0.8, 2: 0.8}, 3, True).verdict == (
        "untestable"
    )


def _a_acc(ggr_offset, dead_cell=None):
    def acc(arm, init, sparsity, seed, epochs):
        if (init, sparsity) == dead_cell and arm != "dense":
            return 0.1 + 0.001 * seed
        base = 0.85 + 0.002 * seed - (0.01 if init == "uniform" and arm != "ggr" else 0.0)
        return (
            base
            + (ggr_offset if arm == "ggr" else 0.0)
            + (0.0005 * (seed % 2) if arm == "ggr" else 0.0)
        )

    return acc


def test_claims_on_grid_a():
    a = spec.GRIDS["A"]
    rows = _grid_rows("A", _a_acc(0.0, dead_cell=("erk", 0.995)))
    comps = st.compare_arm(rows, a)
    assert len(comps) == 2 * len(a.sparsities) * len(a.inits)
    verdicts = {(c.cell[0], c.cell[1], c.comparator): c.result.verdict for c in comps}
    assert verdicts["erk", 0.995, "rigl"] == "untestable"
    assert verdicts["erk", 0.98, "rigl"] == "tied"  # +0.02 pp, CI within ±0.3 pp
    assert verdicts["uniform", 0.98, "snfs"] == "better"  # baselines lose 1 pp under uniform
    assert st.claim_a(comps) == ("holds", [])
    # claim (b): GGR's gap 0 vs the baselines' +1 pp: gap(ggr) - gap(base) = -1 pp
    b = st.claim_b(rows, a)
    assert {c.result.verdict for c in b if c.cell[1] != 0.995} == {"smaller gap"}
    assert {c.result.verdict for c in b if c.cell[1] == 0.995} == {"untestable"}
    assert st.claim_b_status(b)[0] == "holds"
    # GGR 2 pp behind everywhere: claim (a) fails in every testable erk cell
    status, failing = st.claim_a(st.compare_arm(_grid_rows("A", _a_acc(-0.02)), a))
    assert status == "does not hold" and len(failing) == 2 * 3 * 2
    # two seeds only: everything pending
    partial = _grid_rows("A", _a_acc(0.0), seeds={0, 1})
    status, pend = st.claim_a(st.compare_arm(partial, a))
    assert status == "pending" and pend[0].result.verdict == "pending (2/5 seeds)"
    # every cell at chance: untestable, neither for nor against
    dead = _grid_rows("A", lambda arm, *_: 0.1 if arm != "dense" else 0.9)
    assert st.claim_a(st.compare_arm(dead, a)) == ("untestable", [])
    assert st.claim_b_status(st.claim_b(dead, a)) == ("untestable", [])


def _stage2_rows(means):
    winner = spec.SELECT_ARMS[0]
    arms = (winner, *spec.stage2_arms(winner))
    rows = []
    for arm, m in zip(arms, means, strict=True):
        for init in ("uniform", "erk"):
            for s in (0.98, 0.995):
                for seed in (100, 101):
                    rows.append(
                        _row(
                            "select2",
                            arm.name,
                            init,
                            s,
                            seed,
                            m + 0.001 * (seed % 2),
                            overrides=dict(arm.overrides),
                        )
                    )
    grid = spec.Grid("select2", arms=arms, **spec._SELECT)
    return rows, grid, [a.name for a in arms]


def test_selection_superset_margin_rule():
    # floor (a superset of the winner's options) is 0.05 pp better: not enough, base stays
    rows, grid, names = _stage2_rows([0.85, 0.8505, 0.84, 0.84])
    assert st.rank_selection(rows, grid).winner == names[0]
    # exactly 0.1 pp better ("at least"): floor replaces it
    rows, grid, names = _stage2_rows([0.85, 0.851, 0.84, 0.84])
    assert st.rank_selection(rows, grid).winner == names[1]
    # 0.2 pp better: floor replaces it
    rows, grid, names = _stage2_rows([0.85, 0.852, 0.84, 0.84])
    assert st.rank_selection(rows, grid).winner == names[1]
    # rho1 changes an option (not a superset): any higher mean wins; rho1-floor adds to rho1
    rows, grid, names = _stage2_rows([0.85, 0.84, 0.8505, 0.851])
    sel = st.rank_selection(rows, grid)
    assert sel.winner == names[2] and list(sel.means)[0] == names[3]
    assert sel.n_runs == sel.expected == 8


def test_selection_tables_and_winner(monkeypatch):
    g = spec.GRIDS["select"]
    best = g.arms[5].name
    rows = _grid_rows("select", lambda arm, *_: 0.86 if arm == best else 0.85)
    text = study_report.selection_tables(rows)
    assert f"Winner by the selection rule: **{best}**" in text
    assert "| 1 | **" + best + "** | 86.00 (2) |" in text and "test" not in text.lower()
    assert study_report.selection_winner(rows) == best
    partial = rows[: len(rows) // 2]
    with pytest.raises(UserError, match="incomplete"):
        study_report.selection_winner(partial)
    assert study_report.selection_winner(partial, partial=True) == best
    assert "Provisional winner" in study_report.selection_tables(partial)
    assert "No selection runs" in study_report.selection_tables([])
    stage2, _, _ = _stage2_rows([0.85, 0.85, 0.85, 0.85])
    monkeypatch.delitem(spec.GRIDS, "select2")  # rows of a grid the spec no longer defines
    assert "select2**: rows in runs.csv but no such grid" in study_report.selection_tables(stage2)


def test_write_report(tmp_path):
    rows = _grid_rows("select", lambda *_: 0.85)
    rows += _grid_rows("A", _a_acc(-0.02))
    rows += _grid_rows("B", _a_acc(0.0), seeds={0})  # pending
    rows[-1]["commit"] = "def456+dirty"
    path = study_report.write_report(rows, str(tmp_path))
    text = open(path).read()
    for section in (
        "# Study v2",
        "## Pre-registration",
        "## Setup",
        "## Verdicts",
        "Claim (a), grid A: does not hold",
        "Claim (b), grid A:",
        "## Selection (validation split only)",
        "## Grid A",
        "## Grid B",
        "## Grid D",
        "No runs yet",
        "pending (1/3 seeds)",
        "## Provenance",
        "warning: runs from a working tree",
        "## What changed since v1",
        "python -m experiments.study report",
        "Best method per cell",
    ):
        assert section in text, section
    assert "| **ggr** | uniform | 83.42 ± 0.32 (5) |" in text  # 83.0, 83.25, 83.4, 83.65, 83.8
    assert "| 112 | 0.0073 |" in text
    pngs = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert "A_density_over_time.png" in pngs and "A_final_layer_density.png" in pngs
    assert all((tmp_path / "results" / p).stat().st_size > 1000 for p in pngs)
    # grid B has one of three seeds: its comparisons are counted as pending (2 epochs x 2 inits)
    assert "grid B: vs rigl 4 pending; vs snfs 4 pending" in text
    empty = open(study_report.write_report([], str(tmp_path / "empty"))).read()
    assert "Claim (a), grid A: pending" in empty and "No selection runs" in empty
    assert "Grids beyond A" not in empty


def test_other_grids_count_the_paired_verdicts():
    rows = _grid_rows("C", _a_acc(0.02))  # GGR 2 pp ahead of both baselines everywhere
    assert study_report._other_grids(rows) == (
        "**Grids beyond A (context, not claims):** paired verdicts of GGR's defaults over the "
        "cells of each grid (tables below): grid C: vs rigl 4 better; vs snfs 4 better."
    )


# --- the grid runner -----------------------------------------------------------------------


def test_model_size_by_hand():
    """LeNet-300-100 at 98 %: bit-packed masks + active float32 values + 2 int32 shape words per
    sparse kernel, and the dense biases (300 + 100 + 10 float32)."""
    from experiments import study_tables

    kb = study_tables._Bytes(spec.GRIDS["A"])
    assert kb.dense() == 4 * (784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    row = _row("A", "rigl", "uniform", 0.98, 0, 0.8)
    active = json.loads(row["layer_active"])  # 4704, 600, 20
    by_hand = sum((n + 7) // 8 + 4 * active[k] + 8 for k, n in SIZE.items()) + 4 * 410
    assert kb.sparse(row) == by_hand == 33275 + 4 * 5324 + 24 + 1640
    text = study_tables.flops_table([row], spec.GRIDS["A"])
    assert f"{by_hand / 1000:.1f} kB" in text and f"dense model {kb.dense() / 1000:.1f} kB" in text


def test_cells_key_and_command(tmp_path):
    a = spec.GRIDS["A"]
    cells = list(study_runs.cells(a))
    sparse = [x for x in a.arms if x.method != "dense"]
    per_seed = 1 + len(sparse) * len(a.inits) * len(a.sparsities)
    assert len(cells) == len(a.seeds) * per_seed
    assert [c["seed"] for c in cells[:per_seed]] == [a.seeds[0]] * per_seed  # seeds outermost
    row = _row("A", "rigl", "erk", 0.995, 3, 0.8)
    cell = next(
        c
        for c in cells
        if (c["arm"].name, c["init"], c["sparsity"], c["seed"]) == ("rigl", "erk", 0.995, 3)
    )
    assert study_runs.key(row) == study_runs.key(cell) == ("A", "rigl", "erk", "0.995", 3, 30)
    c = spec.GRIDS["C"]
    ggr = spec.Arm("x", "ggr", (("ggr_rho", 1.0), ("validation_size", 5)))
    cmd = study_runs.command(
        c, dict(arm=ggr, init="erk", sparsity=0.99, seed=2, epochs=20), str(tmp_path / "run")
    )
    flags = [f for f in cmd if f.startswith("--") and "=" in f]
    common = [f"--{k}={v}" for k, v in spec.COMMON.items()]
    assert flags[-len(common) - 3 :] == [
        *common,
        "--hidden=1024,512,256,128",
        "--ggr_rho=1.0",
        "--validation_size=5",
    ]
    assert cmd[:3] == [sys.executable, "-m", "experiments.train"] and "--resume" not in cmd
    (tmp_path / "run").mkdir()
    assert (
        study_runs.command(
            c, dict(arm=ggr, init="erk", sparsity=0.99, seed=2, epochs=20), str(tmp_path / "run")
        )[-1]
        == "--resume"
    )


def test_run_grid_resumes(tmp_path):
    grid = spec.Grid(
        "tiny",
        "digits_mlp",
        arms=(spec.ARM["dense"], spec.ARM["rigl"]),
        inits=("uniform",),
        sparsities=(0.9,),
        seeds=(0,),
        epochs=(1,),
        overrides=(("validation_size", 300),),
    )
    csv_path = str(tmp_path / "runs.csv")
    assert study_runs.run_grid(grid, str(tmp_path / "work"), csv_path) == 2
    rows = study_runs.read_rows(csv_path)
    assert sorted(r["arm"] for r in rows) == ["dense", "rigl"]
    rigl = next(r for r in rows if r["arm"] == "rigl")
    assert 0.0 < float(rigl["test_accuracy"]) <= 1 and 0.0 < float(rigl["val_accuracy"]) <= 1
    assert sum(json.loads(rigl["layer_active"]).values()) < sum(
        json.loads(rigl["layer_size"]).values()
    )
    assert study_runs.run_grid(grid, str(tmp_path / "work"), csv_path) == 0
    assert len(study_runs.read_rows(csv_path)) == 2
    # a writer killed mid-row leaves a torn last line: it is not a row, and the next append
    # starts on a line of its own
    with open(csv_path, "a") as f:
        f.write("tiny,rigl,rigl,unif")
    assert len(study_runs.read_rows(csv_path)) == 2
    study_runs._drop_torn_line(csv_path)
    assert open(csv_path).read().endswith("\n") and len(study_runs.read_rows(csv_path)) == 2


def test_rows_reach_a_runs_csv_replaced_while_a_grid_runs(tmp_path, monkeypatch):
    """git stash/checkout/pull write a new file at runs.csv's path: a runner that kept the old
    one open would append the later rows to an unlinked file."""
    grid = spec.Grid(
        "tiny",
        "digits_mlp",
        arms=(spec.ARM["rigl"],),
        inits=("uniform",),
        sparsities=(0.9,),
        seeds=(0, 1, 2),
        epochs=(1,),
    )
    csv_path = str(tmp_path / "runs.csv")

    def fake_run(grid, cell, workdir, commit):
        copy = str(tmp_path / "copy.csv")
        with open(csv_path) as f, open(copy, "w") as g:
            g.write(f.read())
        os.replace(copy, csv_path)  # a new inode at the same path, as git writes it
        return {c: "" for c in study_runs.COLUMNS} | {
            "grid": "tiny", "arm": "rigl", "init": "uniform", "sparsity": "0.9",
            "seed": str(cell["seed"]), "epochs": "1",
        }  # fmt: skip

    monkeypatch.setattr(study_runs, "_run", fake_run)
    assert study_runs.run_grid(grid, str(tmp_path / "work"), csv_path, workers=1) == 3
    assert sorted(r["seed"] for r in study_runs.read_rows(csv_path)) == ["0", "1", "2"]
