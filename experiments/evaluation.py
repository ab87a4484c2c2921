"""Evaluation: loss and accuracy of a train state on the test (and validation) split."""

from collections.abc import Callable

import jax

from experiments import data


def _summed(device_metrics: list[dict]) -> dict:
    if not device_metrics:
        return {}
    return {
        k: float(v)
        for k, v in jax.device_get(jax.tree.map(lambda *xs: sum(xs), *device_metrics)).items()
    }


def make_evaluate(run, eval_fn: Callable) -> Callable[..., dict]:
    """``evaluate(state) -> {"test_loss", "test_accuracy"[, "val_loss", "val_accuracy"]}``
    over every example of each split (``--steps_per_eval`` batches when set)."""
    ds, config = run.dataset, run.config
    splits = {"test": (ds.test_images, ds.test_labels)}
    if ds.val_images is not None:
        splits["val"] = (ds.val_images, ds.val_labels)

    def evaluate(state) -> dict:
        out = {}
        for split, (images, labels) in splits.items():
            batches = data.eval_batches(
                images, labels, config.eval_batch_size, config.steps_per_eval
            )
            sums = _summed(
                [
                    eval_fn(state.params, state.batch_stats, jax.device_put(b, run.batch_sharding))
                    for b in batches
                ]
            )
            out[f"{split}_loss"] = sums["loss"] / sums["count"]
            out[f"{split}_accuracy"] = sums["correct"] / sums["count"]
        return out

    return evaluate
