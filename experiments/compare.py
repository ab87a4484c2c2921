"""Runs a grid (methods × inits × sparsities × seeds) in parallel processes and summarises it.

    python -m experiments.compare --grid digits_quick
    python -m experiments.compare --config digits_mlp --methods rigl,ggr --sparsities 0.9,0.98 \
        --inits erk --seeds 0,1,2 --num_epochs 20

Each run is ``python -m experiments.train`` in its own folder (re-running with --resume reuses
finished runs and resumes unfinished ones). Writes ``results.jsonl`` (one line per run),
``results.md`` (mean ± std over seeds), ``accuracy_vs_sparsity.png`` and ``density_over_time.png``.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

from experiments import configs, main
from experiments.configs import grids
from experiments.errors import UserError


def _csv(text: str, kind=str) -> tuple:
    try:
        return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"{text!r} is not a comma-separated list of {kind.__name__}") from None


def _parser():
    p = main.Parser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default=None, help=f"a named grid: {', '.join(grids.GRIDS)}")
    p.add_argument("--config", default=None, help=f"one of: {', '.join(configs.NAMES)}")
    p.add_argument("--methods", default=None, help="comma-separated, e.g. dense,rigl,ggr")
    p.add_argument("--inits", default=None, help="comma-separated: uniform,erk")
    p.add_argument("--sparsities", default=None, help="comma-separated, e.g. 0.9,0.95")
    p.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (default: CPU cores)")
    p.add_argument(
        "--workdir", default=None, help="output folder (default runs/compare/<grid>/<time>)"
    )
    p.add_argument("--resume", action="store_true", help="continue the grid in --workdir")
    return p


def cells(grid: dict) -> list[dict]:
    """One dict per run; dense runs once per seed (init and sparsity do not apply), GMP once per
    sparsity and seed (it starts dense; per-layer pruning ends at uniform densities)."""
    out = []
    for seed in grid["seeds"]:
        for method in grid["methods"]:
            if method == "dense":
                out.append({"method": "dense", "init": "erk", "sparsity": 0.0, "seed": seed})
                continue
            for init in ("uniform",) if method == "gmp" else grid["inits"]:
                for sparsity in grid["sparsities"]:
                    out.append({"method": method, "init": init, "sparsity": sparsity, "seed": seed})
    return out


def cell_name(cell: dict) -> str:
    if cell["method"] == "dense":
        return f"dense-seed{cell['seed']}"
    return f"{cell['method']}-{cell['init']}-s{cell['sparsity']:g}-seed{cell['seed']}"


def _command(grid: dict, cell: dict, run_dir: str, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        grid["config"],
        "--workdir",
        run_dir,
        "--no-progress",
        "--method",
        cell["method"],
        "--init",
        cell["init"],
        "--seed",
        str(cell["seed"]),
    ]
    if cell["method"] != "dense":
        cmd += ["--sparsity", repr(cell["sparsity"])]
    for key, value in grid["overrides"].items():
        if isinstance(value, tuple | list):
            value = ",".join(str(v) for v in value)
        cmd.append(f"--{key}={value}")
    return cmd + (["--resume"] if resume else [])


def _run_cell(grid: dict, cell: dict, workdir: str) -> dict | str:
    run_dir = os.path.join(workdir, "runs", cell_name(cell))
    results_path = os.path.join(run_dir, cell["method"], "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            return json.load(f)
    cmd = _command(grid, cell, run_dir, resume=os.path.isdir(run_dir))
    os.makedirs(run_dir, exist_ok=True)
    # Runs of one grid compile the same programs: share them through JAX's persistent cache.
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(workdir), "xla_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    with open(os.path.join(run_dir, "log.txt"), "a") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    if proc.returncode != 0 or not os.path.exists(results_path):
        return f"{cell_name(cell)} failed (exit {proc.returncode}); see {run_dir}/log.txt"
    with open(results_path) as f:
        return json.load(f)


def run_grid(grid: dict, workdir: str, workers: int = 0, progress: bool = True) -> list[dict]:
    """Runs every cell (skipping finished ones), writes the summary files, returns the results."""
    from tqdm.auto import tqdm

    from experiments import metrics, plots, report

    todo = cells(grid)
    workers = workers or min(os.cpu_count() or 1, len(todo))
    results, failures = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = [pool.submit(_run_cell, grid, c, workdir) for c in todo]
        for fut in tqdm(
            concurrent.futures.as_completed(futures),
            total=len(futures),
            unit="run",
            desc="grid",
            disable=not progress,
        ):
            out = fut.result()
            (failures if isinstance(out, str) else results).append(out)
    results.sort(key=lambda r: (r["method"], r["init"], r["sparsity"], r["seed"]))
    with open(os.path.join(workdir, "results.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    rows = report.summarize(results)
    title = f"# {grid['config']}: {len(results)} runs\n\n"
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(
            title
            + report.summary_table(rows)
            + "\n\n## Runs\n\n"
            + report.results_table(results)
            + "\n"
        )
    sparse_rows = [r for r in rows if r["method"] != "dense"]
    plots.accuracy_vs_sparsity(
        sparse_rows or rows, os.path.join(workdir, "accuracy_vs_sparsity.png")
    )
    # The central figure for the first seed at the highest sparsity of each sparse method.
    top = max((c["sparsity"] for c in todo), default=0.0)
    runs = {}
    for c in todo:
        if c["seed"] == grid["seeds"][0] and c["sparsity"] == top:
            path = os.path.join(workdir, "runs", cell_name(c), c["method"], "metrics.jsonl")
            if os.path.exists(path):
                runs[f"{c['method']} {c['init']} s={top:g}"] = metrics.read(path)
    plots.density_over_time(runs, os.path.join(workdir, "density_over_time.png"))
    if failures:
        raise UserError(f"{len(failures)} of {len(todo)} runs failed, e.g. {failures[0]}")
    return results


def _grid(args, rest: list[str]) -> dict:
    """The grid of the command line: a named grid or a config, with the flags applied."""
    if args.grid:
        grid = grids.get_grid(args.grid)
    elif args.config:
        grid = dict(
            config=args.config,
            methods=("dense", "rigl", "ggr"),
            inits=("erk",),
            sparsities=(0.95,),
            seeds=(0,),
            overrides={},
        )
    else:
        raise UserError("name a --grid or a --config to compare")
    if args.config:
        grid["config"] = args.config
    for field, kind in (("methods", str), ("inits", str), ("sparsities", float), ("seeds", int)):
        if getattr(args, field):
            grid[field] = _csv(getattr(args, field), kind)
    config = main.build_config(grid["config"], rest)  # validates the overrides
    overrides = dict(grid["overrides"])
    defaults = configs.get_config(grid["config"])
    overrides.update({k: config[k] for k in config if config[k] != defaults[k]})
    grid["overrides"] = overrides
    _check_grid(grid)
    return grid


def _check_grid(grid: dict) -> None:
    from experiments import methods

    for m in grid["methods"]:
        if m not in methods.METHODS + methods.DENSE_TO_SPARSE:
            allowed = ", ".join(methods.METHODS + methods.DENSE_TO_SPARSE)
            raise UserError(f"unknown method {m!r}; choose one of: {allowed}")
    for i in grid["inits"]:
        if i not in methods.INITS:
            raise UserError(f"unknown init {i!r}; choose one of: {', '.join(methods.INITS)}")
    for s in grid["sparsities"]:
        if not 0.0 <= s < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {s}")


def _compare(argv: list[str]) -> int:
    parser = _parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    grid = _grid(args, rest)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    name = args.grid or grid["config"]
    workdir = args.workdir or os.path.join("runs", "compare", name, time.strftime("%Y%m%d-%H%M%S"))
    if os.path.isdir(workdir) and os.listdir(workdir) and not args.resume:
        raise UserError(
            f"workdir {workdir} already holds a grid; pass --resume to continue it or "
            "choose another --workdir"
        )
    if args.resume and not os.path.isdir(workdir):
        raise UserError(f"--resume: workdir {workdir} does not exist")
    os.makedirs(workdir, exist_ok=True)
    n = len(cells(grid))
    print(f"grid {name}: {n} runs of {grid['config']} -> {workdir}", flush=True)
    start = time.time()
    results = run_grid(grid, workdir, args.workers)
    from experiments import report

    print(report.summary_table(report.summarize(results)))
    print(
        f"\nwrote {workdir}/results.jsonl, results.md, accuracy_vs_sparsity.png, "
        f"density_over_time.png ({time.time() - start:.1f} s)"
    )
    return 0


def compare_main(argv: list[str] | None = None) -> int:
    return main.run_cli(lambda: _compare(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(compare_main())
