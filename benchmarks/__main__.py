"""The command line: ``python -m benchmarks {run,report,inference,worker}``.

``run`` is the one command that regenerates benchmarks/RESULTS.md and RESULTS.json; ``report``
rebuilds RESULTS.md from RESULTS.json; ``inference`` is the sparse vs dense inference benchmark
(benchmarks/SPARSE_INFERENCE.md); ``worker`` is one unit in one process (run by ``run``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE_NAMES = ("resnet50", "vit_b16", "gpt2")
METHOD_IDS = ("static", "set", "rigl", "snfs", "ggr", "ggr_rho1")  # keys of baselines.METHODS


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _unit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run")
    p.add_argument(
        "--embeddings",
        choices=["dense", "sparse"],
        default="dense",
        help="GPT-2's token and position embeddings (default: left dense)",
    )
    p.add_argument(
        "--no-train-step",
        action="store_true",
        help="real shapes: skip the dense training step (forward/backward)",
    )
    p.add_argument("--no-baselines", action="store_true", help="MLPs: skip the sort baselines")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHOD_IDS),
        help="MLPs: the updates measured (default all; quick: rigl ggr)",
    )


def _flags(args: argparse.Namespace) -> list[str]:
    out = ["--embeddings", args.embeddings]
    for flag in ("quick", "no_train_step", "no_baselines"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out + (["--methods", *args.methods] if args.methods else [])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="measure in separate processes; write RESULTS.md + .json")
    _unit_flags(run)
    run.add_argument("--processes", type=int, help="processes per unit (default 3; quick: 1)")
    run.add_argument("--shape-processes", type=int, help="for real shapes (default --processes)")
    run.add_argument("--mlp", nargs="*", default=["1M", "10M"], choices=["1M", "10M"])
    run.add_argument("--layers", nargs="*", type=int, help="layer counts (default 8 16 32 64)")
    run.add_argument("--shapes", nargs="*", default=list(SHAPE_NAMES), choices=SHAPE_NAMES)
    run.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    run.add_argument(
        "--dated-dir", type=Path, help="write <dir>/<date>_<device>.md and .json instead of --out"
    )
    rep = sub.add_parser("report", help="rebuild RESULTS.md from RESULTS.json")
    rep.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    inf = sub.add_parser("inference", help="sparse vs dense inference (SPARSE_INFERENCE.md)")
    inf.add_argument("--quick", action="store_true", help="a tiny model, few calls")
    inf.add_argument("--out", type=Path, default=HERE, help="directory for the report")
    work = sub.add_parser("worker", help="one unit in this process (used by run)")
    work.add_argument("unit")
    work.add_argument("--out", type=Path, required=True)
    _unit_flags(work)
    return ap  # fmt: skip


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, int]], int, int]:
    """(unit, process index) in the order run, units interleaved across repeats."""
    procs = args.processes or (1 if args.quick else 3)
    shape_procs = args.shape_processes or procs
    layers = args.layers if args.layers is not None else ([2, 4] if args.quick else [8, 16, 32, 64])
    units = [f"mlp_{m}" for m in args.mlp] + [f"layers_{n}" for n in layers]
    shapes = [f"shape_{s}" for s in args.shapes]
    order = []
    for i in range(max(procs, shape_procs)):
        order += [(u, i) for u in units if i < procs]
        order += [(u, i) for u in shapes if i < shape_procs]
    return order, procs, shape_procs


def run(args: argparse.Namespace, argv: list[str]) -> Path:
    from . import harness, report, targets

    order, procs, shape_procs = plan(args)
    t0 = time.perf_counter()
    units = harness.run_workers(order, _flags(args), _log)
    machine = next(iter(units.values()))[0]["machine"] if units else {}
    raw = {
        "command": " ".join(["python -m benchmarks", *argv]),
        "date": datetime.date.today().isoformat(),
        "elapsed_s": time.perf_counter() - t0,
        "quick": args.quick,
        "processes": procs,
        "shape_processes": shape_procs,
        "machine": machine,
        "verdicts": targets.verdicts(units),
        "units": units,
    }
    out = args.out
    if args.dated_dir is not None:
        device = re.sub(r"[^A-Za-z0-9]+", "-", machine.get("device", "unknown")).strip("-")
        out = args.dated_dir / f"{raw['date']}_{device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    out.write_text(report.render(raw))
    _log(f"wrote {out} and {out.with_suffix('.json')}")
    return out


def worker(args: argparse.Namespace) -> None:
    from . import harness, measure

    opts = measure.Options(
        quick=args.quick,
        baselines=not args.no_baselines,
        train_step=not args.no_train_step,
        embeddings=args.embeddings,
        methods=tuple(args.methods) if args.methods else None,
    )
    load = os.getloadavg()[0]
    record = measure.unit(args.unit, opts)
    record.update(unit=args.unit, machine=harness.machine(), load=[load, os.getloadavg()[0]])
    args.out.write_text(json.dumps(record))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.cmd == "run":
        run(args, argv)
    elif args.cmd == "report":
        from . import report

        raw = json.loads(args.out.with_suffix(".json").read_text())
        args.out.write_text(report.render(raw))
    elif args.cmd == "inference":
        from . import inference

        inference.main(args.quick, args.out)
    else:
        worker(args)


if __name__ == "__main__":
    main()
