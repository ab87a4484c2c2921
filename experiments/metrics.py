"""Metrics as JSON lines: one record per line with a ``type`` (init, eval, topology, final)."""

import json
import os

import jax
import numpy as np

import ggr_jax as gj


def layer_of(path: str) -> str:
    """A leaf's layer from its path (``gj.path_str``): 'Dense_0/kernel' -> 'Dense_0'."""
    return path.removesuffix("/kernel")


def layer_name(keys) -> str:
    """The layer name of a key path: 'Dense_0/kernel' -> 'Dense_0'; nested modules are joined
    with '/' (``gj.path_str``)."""
    return layer_of(gj.path_str(keys))


def per_layer(tree) -> dict[str, float | int]:
    """A pytree of scalars (None leaves skipped) as {layer name: python number}."""
    out = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        v = np.asarray(leaf)
        out[layer_name(keys)] = v.item()
    return out


def layer_sizes(masks) -> dict[str, int]:
    """{layer name: number of weights} of the sparse layers."""
    return per_layer(jax.tree.map(lambda m: m.size, masks))


def densities(masks, layer_size: dict) -> dict:
    """Exact per-layer and global densities from the integer active counts."""
    return densities_of(per_layer(gj.active_counts(masks)), layer_size)


def densities_of(active: dict, layer_size: dict) -> dict:
    """``{"density": {layer: active / size}, "global_density": ...}`` of active counts."""
    return {
        "density": {k: active[k] / layer_size[k] for k in active},
        "global_density": sum(active.values()) / sum(layer_size[k] for k in active),
    }


def init_record(masks, layer_size: dict) -> dict:
    """The ``init`` record: the initial densities and each layer's size."""
    return {
        "type": "init",
        "step": 0,
        "epoch": 0.0,
        **densities(masks, layer_size),
        "size": layer_size,
    }


def topology_record(step: int, steps_per_epoch: int, fraction, info, layer_size: dict) -> dict:
    """The ``topology`` record of the update at ``step`` from its ``info`` (as redistribute's)."""
    info = jax.device_get(info)
    active = per_layer(info["active"])
    return {
        "type": "topology",
        "step": step,
        "epoch": step / steps_per_epoch,
        "fraction": float(fraction),
        **densities_of(active, layer_size),
        "active": active,
        "dropped": per_layer(info["dropped"]),
        "grown": per_layer(info["grown"]),
        "moved": int(info["moved"]),
        "skipped": bool(info["skipped"]),
    }


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
