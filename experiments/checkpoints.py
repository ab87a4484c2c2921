"""Orbax checkpoints of the whole train state (params, masks, optimizer state, step, RNG) and
metadata, with a checksum of every saved array.

The data position is the step (batches are a pure function of seed and step), so restoring the state
resumes the run exactly.

Guarantees (see README, "Reliability"):

* A checkpoint is written synchronously into a temporary folder that orbax renames when it is
  complete: a kill or a full disk during a write leaves the earlier checkpoints as they were.
* Each checkpoint's metadata holds the CRC-32 of every saved array (and of the metadata itself);
  :meth:`Checkpoints.restore` recomputes them and refuses a checkpoint that does not match, naming
  the step and the previous intact step to resume from.
* Nothing here deletes or rewrites a checkpoint except orbax's ``max_to_keep`` rotation of old
  ones after a newer one was written completely.
"""

import errno
import json
import os
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

import ggr_jax as gj
from experiments.errors import UserError

CHECKSUM_FORMAT = "crc32 of dtype, shape and C-order bytes of each state leaf"


def checksums(state) -> dict[str, str]:
    """``{leaf path: crc32 hex}`` of every array of ``state`` (fetched to the host)."""
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    out = {}
    for path, leaf in flat:
        a = np.ascontiguousarray(np.asarray(leaf))
        crc = zlib.crc32(f"{a.dtype.str}{a.shape}".encode())
        out[gj.path_str(path)] = f"{zlib.crc32(a.tobytes(), crc):08x}"
    return out


def _meta_checksum(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_checksum"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


class CheckpointError(UserError):
    """A checkpoint that cannot be written, read or trusted (one line naming the step)."""


class Checkpoints:
    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(int(keep), 1), create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.manager.all_steps())

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, meta: dict) -> None:
        """Writes ``state`` and ``meta`` (plus the arrays' checksums) as checkpoint ``step``.

        Raises `CheckpointError` (naming the intact earlier checkpoints) if the write fails, e.g.
        on a full disk; the earlier checkpoints are left as they were.
        """
        meta = {**meta, "checksums": checksums(state), "checksum_format": CHECKSUM_FORMAT}
        meta["meta_checksum"] = _meta_checksum(meta)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(int(step), args=args, force=True)
            self.manager.wait_until_finished()
        except OSError as e:
            intact = [s for s in self.steps() if s != int(step)]
            reason = (
                "no space left on device"
                if e.errno in (errno.ENOSPC, errno.EDQUOT)
                else (f"{type(e).__name__}: {e.strerror or e}")
            )
            kept = (
                f"the earlier checkpoints (steps {', '.join(map(str, intact))}) are intact; "
                "free space and continue with --resume"
                if intact
                else "no earlier checkpoint exists; free space and start again"
            )
            raise CheckpointError(
                f"could not write checkpoint step {step} to {self.directory} ({reason}); {kept}"
            ) from None

    def latest_meta(self) -> dict | None:
        """The latest checkpoint's metadata; None if there is none or it is unreadable (then
        :meth:`restore` gives the full error)."""
        step = self.latest_step()
        if step is None:
            return None
        try:
            return self.read_meta(step)
        except CheckpointError:
            return None

    def read_meta(self, step: int) -> dict:
        """The metadata of checkpoint ``step`` (settings, step, checksums), without its arrays."""
        try:
            meta = self.manager.restore(
                int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            ).meta
        except Exception as e:  # noqa: BLE001 (a broken checkpoint is a user-fixable condition)
            raise self._broken(step, f"its metadata is unreadable ({_first_line(e)})") from None
        if not isinstance(meta, dict) or "config" not in meta:
            raise self._broken(step, "its metadata holds no settings")
        if "meta_checksum" in meta and meta["meta_checksum"] != _meta_checksum(meta):
            raise self._broken(step, "its metadata does not match the checksum written with it")
        return meta

    def restore(self, template, step: int | None = None, *, explain: bool = True):
        """Restores checkpoint ``step`` (default: the latest) into the structure, shapes and
        shardings of ``template`` and verifies the arrays against the saved checksums.

        Returns ``(state, meta)``. Raises `CheckpointError` naming the step, and (with
        ``explain``) the previous intact checkpoint and how to resume from it.
        """
        step = self.latest_step() if step is None else int(step)
        meta = self._read_meta_or_explain(step, template, explain)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ).state
        except Exception as e:  # noqa: BLE001
            raise self._broken(
                step, f"its arrays are unreadable ({_first_line(e)})", template if explain else None
            ) from None
        saved = meta.get("checksums")
        if saved is not None:  # checkpoints written before checksums existed are not verified
            now = checksums(restored)
            bad = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            if bad:
                raise self._broken(
                    step,
                    f"array {bad[0]!r}"
                    + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                    + " does not match the checksum written with it",
                    template if explain else None,
                )
        return restored, meta

    def _read_meta_or_explain(self, step, template, explain):
        try:
            return self.read_meta(step)
        except CheckpointError as e:
            if not explain:
                raise
            raise CheckpointError(str(e) + self._advice(step, template)) from None

    def resume(self, template, check_settings):
        """Reads the latest checkpoint's metadata, calls ``check_settings(meta)`` (which raises if
        the run's settings differ), and only then restores the arrays: ``(state, meta)``."""
        step = self.latest_step()
        check_settings(self._read_meta_or_explain(step, template, True))
        return self.restore(template, step)

    def _broken(self, step: int, why: str, template=None) -> CheckpointError:
        message = f"checkpoint step {step} ({self.path(step)}) is corrupt: {why}"
        if template is not None:
            message += self._advice(step, template)
        return CheckpointError(message)

    def _advice(self, step: int, template) -> str:
        for earlier in reversed([s for s in self.steps() if s < step]):
            try:
                self.restore(template, earlier, explain=False)
            except CheckpointError:
                continue
            aside = os.path.join(os.path.dirname(self.directory), f"corrupt-checkpoint-{step}")
            return (
                f"; nothing was changed. To resume from step {earlier}, the previous intact "
                f"checkpoint, move this one aside (mv {self.path(step)} {aside}) and run "
                "--resume again"
            )
        return "; nothing was changed. No earlier intact checkpoint exists: start a new --workdir"

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _first_line(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
