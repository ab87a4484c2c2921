"""The study's runs: a resumable grid runner that appends one row per finished run to runs.csv.

A run whose key (grid, arm, init, sparsity, seed, epochs) is already in runs.csv is never redone;
an interrupted run resumes from its last checkpoint in ``<workdir>/<grid>/<run>``. Runs go to a
pool of worker processes; each finished run is appended (and flushed) at once, so a partial grid
can be committed and continued in a later session.
"""

import concurrent.futures
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from experiments.configs import study as spec
from experiments.errors import UserError

COLUMNS = (
    "grid", "arm", "method", "init", "sparsity", "seed", "epochs", "split",
    "val_accuracy", "test_accuracy", "density", "flops_ratio", "training_flops_ratio",
    "n_updates", "last_update_step", "lr_at_last_update", "moved_total", "layer_active",
    "layer_size", "active_over_time", "overrides", "commit", "wall_s",
)  # fmt: skip
KEY = ("grid", "arm", "init", "sparsity", "seed", "epochs")
_TIMELINE_POINTS = 40


def cells(grid: spec.Grid) -> Iterator[dict]:
    """One dict per run, seeds outermost (a partial grid then holds whole seeds)."""
    for seed in grid.seeds:
        for epochs in grid.epochs:
            for arm in grid.arms:
                if arm.method == "dense":
                    yield dict(
                        grid=grid.name, arm=arm, init="-", sparsity=0.0, seed=seed, epochs=epochs
                    )
                    continue
                for init in grid.inits:
                    for sparsity in grid.sparsities:
                        yield dict(
                            grid=grid.name,
                            arm=arm,
                            init=init,
                            sparsity=sparsity,
                            seed=seed,
                            epochs=epochs,
                        )


def key(row: dict) -> tuple:
    arm = row["arm"].name if isinstance(row["arm"], spec.Arm) else row["arm"]
    return (
        row["grid"],
        arm,
        row["init"],
        f"{float(row['sparsity']):g}",
        int(row["seed"]),
        int(row["epochs"]),
    )


def read_rows(path: str) -> list[dict]:
    """The rows of runs.csv (strings, as written); [] when it does not exist. A last row cut
    short by a killed writer is left out."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if None not in r.values()]


def _drop_torn_line(path: str) -> None:
    """Cuts a last line that a killed writer left without its newline (appending would glue the
    next row to it)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def append_row(path: str, row: dict | None) -> None:
    """Appends one row (``None``: the header) and syncs it to disk.

    The file is opened for each row, so that a runs.csv replaced while a grid runs (``git
    stash``, ``checkout`` or ``pull`` write a new file) gets the rows, not the old, unlinked one.
    """
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader() if row is None else writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def run_name(cell: dict) -> str:
    init = "" if cell["arm"].method == "dense" else f"-{cell['init']}-s{cell['sparsity']:g}"
    return f"{cell['arm'].name}{init}-e{cell['epochs']}-seed{cell['seed']}"


def command(grid: spec.Grid, cell: dict, run_dir: str) -> list[str]:
    arm = cell["arm"]
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        grid.config,
        "--workdir",
        run_dir,
        "--no-progress",
        "--method",
        arm.method,
        "--seed",
        str(cell["seed"]),
        f"--num_epochs={cell['epochs']}",
    ]
    if arm.method != "dense":
        cmd += ["--init", cell["init"], f"--sparsity={cell['sparsity']!r}"]
    for name, value in (*spec.COMMON.items(), *grid.overrides, *arm.overrides):
        if isinstance(value, tuple | list):
            value = ",".join(str(v) for v in value)
        cmd.append(f"--{name}={value}")
    if os.path.isdir(run_dir):
        cmd.append("--resume")
    return cmd


def _timeline(records: list[dict]) -> list:
    """[[step, [active per layer]], ...] at init and at most 40 topology updates."""
    points = [r for r in records if r["type"] in ("init", "topology")]
    if len(points) > _TIMELINE_POINTS:
        stride = -(-len(points) // _TIMELINE_POINTS)
        points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
    out = []
    for r in points:
        active = r.get("active") or {k: round(d * r["size"][k]) for k, d in r["density"].items()}
        out.append([r["step"], list(active.values())])
    return out


def row(grid: spec.Grid, cell: dict, run_dir: str, commit: str) -> dict:
    """The runs.csv row of a finished run."""
    from experiments import metrics

    method_dir = os.path.join(run_dir, cell["arm"].method)
    with open(os.path.join(method_dir, "results.json")) as f:
        res = json.load(f)
    records = metrics.read(os.path.join(method_dir, "metrics.jsonl"))
    init = next(r for r in records if r["type"] == "init")
    out = {c: "" for c in COLUMNS}
    out.update(
        grid=grid.name,
        arm=cell["arm"].name,
        method=cell["arm"].method,
        init=cell["init"],
        sparsity=f"{cell['sparsity']:g}",
        seed=cell["seed"],
        epochs=cell["epochs"],
        split=grid.split,
        commit=commit,
        overrides=json.dumps(dict(cell["arm"].overrides)),
        layer_size=json.dumps(init["size"]),
        layer_active=json.dumps(res["layer_active"]),
        active_over_time=json.dumps(_timeline(records)),
    )
    for field in (
        "val_accuracy",
        "density",
        "flops_ratio",
        "training_flops_ratio",
        "n_updates",
        "last_update_step",
        "lr_at_last_update",
        "moved_total",
        "wall_s",
    ):
        value = res.get(field)
        out[field] = "" if value is None else value
    if grid.split == "test":  # selection grids never carry a test number
        out["test_accuracy"] = res["test_accuracy"]
    return out


def _run(grid: spec.Grid, cell: dict, workdir: str, commit: str) -> dict | str:
    run_dir = os.path.join(workdir, grid.name, run_name(cell))
    cmd = command(grid, cell, run_dir)
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(workdir), "xla"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    with open(f"{run_dir}.log", "a") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    if proc.returncode != 0:
        return f"{grid.name}/{run_name(cell)} failed (exit {proc.returncode}); see {run_dir}.log"
    return row(grid, cell, run_dir, commit)


def git_commit() -> str:
    """HEAD, with '+dirty' when tracked files differ from it (then the runs are not exact)."""

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_grid(
    grid: spec.Grid, workdir: str, csv_path: str, workers: int = 2, limit: int | None = None
) -> int:
    """Runs the grid's missing cells (at most ``limit``), appending rows; returns how many ran."""
    done = {key(r) for r in read_rows(csv_path)}
    todo = [c for c in cells(grid) if key(c) not in done][:limit]
    if not todo:
        return 0
    commit = git_commit()
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    _drop_torn_line(csv_path)
    if not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0:
        append_row(csv_path, None)
    failures = []
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = [pool.submit(_run, grid, c, workdir, commit) for c in todo]
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            out = fut.result()
            if isinstance(out, str):
                failures.append(out)
            else:
                append_row(csv_path, out)
            print(
                f"[{grid.name}] {i}/{len(todo)} runs ({time.time() - start:.0f} s)"
                + (f" FAILED: {out}" if isinstance(out, str) else ""),
                flush=True,
            )
    if failures:
        raise UserError(f"{len(failures)} of {len(todo)} runs failed, e.g. {failures[0]}")
    return len(todo)
