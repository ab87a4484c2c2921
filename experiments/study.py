"""Study v2 (issue 9): GGR's variants chosen on validation data, then pre-registered final grids.

    python -m experiments.study run --grids select          # resumable; appends to runs.csv
    python -m experiments.study run --grids A,B --limit 20  # at most 20 more runs
    python -m experiments.study selection                   # the validation table of select*
    python -m experiments.study report                      # docs/results.md from runs.csv

The grids and the decision rules are in ``experiments/configs/study.py``; the raw results are
``docs/results/runs.csv`` (one row per run, with the commit that made it). ``report`` rebuilds
every table, verdict and figure of docs/results.md from that file alone.
"""

import argparse
import os
import sys

from experiments import study_runs
from experiments.configs import study as spec
from experiments.errors import UserError

CSV = os.path.join("docs", "results", "runs.csv")


def _grids(names: str) -> list[spec.Grid]:
    out = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in spec.GRIDS:
            raise UserError(f"unknown grid {name!r}; choose from: {', '.join(spec.GRIDS)}")
        out.append(spec.GRIDS[name])
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.study", description=__doc__)
    p.add_argument("command", choices=("run", "selection", "report"))
    p.add_argument("--grids", default=",".join(g for g in spec.ORDER if g in spec.GRIDS))
    p.add_argument("--csv", default=CSV, help="the raw results (appended to by run)")
    p.add_argument("--workdir", default=os.path.join("runs", "study2"), help="runs' folders")
    p.add_argument("--out", default="docs", help="where report writes results.md and figures")
    p.add_argument("--workers", type=int, default=2, help="parallel training processes")
    p.add_argument("--limit", type=int, default=None, help="at most this many new runs")
    args = p.parse_args(argv)
    try:
        if args.command == "run":
            left = args.limit
            for grid in _grids(args.grids):
                ran = study_runs.run_grid(grid, args.workdir, args.csv, args.workers, left)
                print(f"grid {grid.name}: {ran} runs appended to {args.csv}", flush=True)
                if left is not None:
                    left -= ran
                    if left <= 0:
                        break
        else:
            from experiments import study_report

            rows = study_runs.read_rows(args.csv)
            if args.command == "selection":
                print(study_report.selection_tables(rows))
            else:
                print("wrote", study_report.write_report(rows, args.out))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
