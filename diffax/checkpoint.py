"""Checkpoints with Orbax: async saves, keep-N, the data iterator's position and the config beside the train state.

    WORKDIR/checkpoints/<step>/state    the TrainState (params, EMA, optimizer, step, key), Orbax's array format
    WORKDIR/checkpoints/<step>/data     JSON: the data iterator's state (its position in the global stream)
    WORKDIR/checkpoints/<step>/config   JSON: the run's config

A step directory appears only once complete (Orbax writes to a temporary directory and renames it), so a run
killed while saving resumes from the previous checkpoint. Restoring reads each array straight into the sharding of
the abstract state it is given, so a checkpoint saved on 8 devices restores onto 1, 4 or a pod's mesh. The data
state is the same for every process (the position in the global stream), so it is saved once as JSON and is
valid for any number of processes.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Saves and restores (train state, data-iterator state, config) under `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: bytes | None, config: ml_collections.ConfigDict) -> None:
        """Starts an (async) save of step `step`; the arrays are copied off-device before this returns."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(json.loads(data_state))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, bytes | None]:
        """(state placed as `abstract_state`'s ShapeDtypeStructs say, data-iterator state) of `step` (default: the
        newest checkpoint)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = (self.directory / str(step) / "data").exists()
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        data_state = json.dumps(restored["data"]).encode() if has_data else None
        return restored["state"], data_state

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
