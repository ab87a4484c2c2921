"""TensorBoard event files from a run's ``metrics.jsonl`` (through tensorboardX).

``metrics.jsonl`` stays the record of a run (plots, reports and ``--resume`` read it); the event
files are a view of it, rewritten whole from the JSONL on every export, so a resumed run's events
never hold the records that the resume dropped.

Every number of a record becomes a scalar tagged ``<type>/<field>`` (``eval/test_accuracy``,
``topology/moved``), every number of a nested dict ``<type>/<field>/<key>``
(``topology/density/Dense_0``), at the record's ``step``. Text, bools and the ``final`` record's
config fields are left out.

Usage: ``python -m experiments.tensorboard WORKDIR`` exports every ``<method>/metrics.jsonl``
under ``WORKDIR`` (a run in progress too) into ``<method>/tensorboard/``;
``python -m experiments.train --tensorboard`` does the same when training ends. Then
``tensorboard --logdir WORKDIR``.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
from collections.abc import Iterator

from experiments import metrics

SKIP = {"type", "step", "epoch", "wall_s"}


def scalars(record: dict) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number of a record (nested dicts one level deep).

    Example:
      >>> dict(scalars({"type": "topology", "step": 5, "moved": 2, "skipped": False,
      ...               "density": {"Dense_0": 0.5}}))
      {'topology/moved': 2.0, 'topology/density/Dense_0': 0.5}
    """
    kind = record.get("type", "record")
    for field, value in record.items():
        if field in SKIP:
            continue
        if isinstance(value, dict):
            for key, v in value.items():
                if _is_number(v):
                    yield f"{kind}/{field}/{key}", float(v)
        elif _is_number(value):
            yield f"{kind}/{field}", float(value)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def export(jsonl_path: str, logdir: str) -> int:
    """Writes the scalars of ``jsonl_path`` as a fresh event file in ``logdir``; returns how many.

    Raises:
      FileNotFoundError: ``jsonl_path`` does not exist.
    """
    from tensorboardX import SummaryWriter  # the experiments extra

    records = metrics.read(jsonl_path)
    if os.path.isdir(logdir):
        shutil.rmtree(logdir)  # the JSONL is the source: no stale events from before a resume
    count = 0
    with SummaryWriter(logdir) as writer:
        for record in records:
            if record.get("type") == "final":
                continue  # a summary of the eval records; its fields are config, not curves
            for tag, value in scalars(record):
                writer.add_scalar(tag, value, global_step=int(record.get("step", 0)))
                count += 1
    return count


def export_workdir(workdir: str) -> dict[str, int]:
    """Exports every ``<method>/metrics.jsonl`` under ``workdir``; ``{logdir: #scalars}``."""
    out = {}
    pattern = os.path.join(glob.escape(workdir), "**", "metrics.jsonl")
    for path in sorted(glob.glob(pattern, recursive=True)):
        logdir = os.path.join(os.path.dirname(path), "tensorboard")
        out[logdir] = export(path, logdir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tensorboard",
        description="TensorBoard event files from the metrics.jsonl of every run under WORKDIR",
    )
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    written = export_workdir(args.workdir)
    if not written:
        print(f"error: no metrics.jsonl under {args.workdir}", file=sys.stderr)
        return 2
    for logdir, n in written.items():
        print(f"{logdir}: {n} scalars")
    print(f"view with: tensorboard --logdir {args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
