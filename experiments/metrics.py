"""Metrics as JSON lines: one record per line with a ``type`` (init, eval, topology, final)."""

import json
import os

import jax
import numpy as np


def layer_name(keys) -> str:
    """'Dense_0/kernel' -> 'Dense_0'; nested modules are joined with '/'."""
    parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in keys]
    if len(parts) > 1 and parts[-1] == "kernel":
        parts = parts[:-1]
    return "/".join(parts)


def per_layer(tree) -> dict[str, float | int]:
    """A pytree of scalars (None leaves skipped) as {layer name: python number}."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        v = np.asarray(leaf)
        out[layer_name(keys)] = v.item()
    return out


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic | np.ndarray) or hasattr(x, "__array__"):
        v = np.asarray(x)
        return v.item() if v.ndim == 0 else v.tolist()
    return x


class MetricsLog:
    """Appends records to ``path``; on resume, first drops the records written after the restored
    checkpoint (``resume_step`` = its optimizer step count; 0 when no checkpoint was restored).

    The kept records are written to a temporary file that then replaces ``path``: a kill during
    the rewrite leaves the old file whole.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and os.path.exists(path):
            kept = [r for r in read(path) if _before(r, resume_step)]
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_plain(record)) + "\n")


def _before(record: dict, step: int) -> bool:
    """Whether a record precedes a checkpoint taken after ``step`` optimizer steps: a topology
    update logged at step t happens inside step t, i.e. after the checkpoint at t."""
    if record.get("type") == "final":
        return False
    if record.get("type") == "eval" and not float(record.get("epoch", 0)).is_integer():
        return False  # written where --num_train_steps stopped mid-epoch: the resumed run goes on
    if record.get("type") == "topology":
        return record["step"] < step
    return record.get("step", 0) <= step


def read(path) -> list[dict]:
    """All records; a last line cut short by a killed process is left out."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records
