"""Orbax checkpoints of the whole train state (params, masks, optimizer state, step, RNG) and
metadata.

The data position is the step (batches are a pure function of seed and step), so restoring the state
resumes the run exactly.
"""

import os

import jax
import orbax.checkpoint as ocp

from experiments.errors import UserError


class Checkpoints:
    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(int(step), args=args, force=True)

    def restore(self, template):
        """Restores the latest checkpoint into the structure, shapes, shardings of ``template``."""
        step = self.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 (a broken checkpoint is a user-fixable condition)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(
                f"checkpoint {os.path.join(self.directory, str(step))} is unreadable "
                f"({type(e).__name__}: {first}); delete it to resume from an earlier "
                "one, or start a new --workdir"
            ) from None
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
