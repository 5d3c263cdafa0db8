"""Checkpoints with Orbax: async saves, keep-N, the data iterator's position and the config beside the train state.

    WORKDIR/checkpoints/<step>/state    the TrainState {step, params, ema_params, opt_state, key}, Orbax's array format
    WORKDIR/checkpoints/<step>/data     JSON: the data iterator's state (its position in the global stream)
    WORKDIR/checkpoints/<step>/config   JSON: the run's config

A step directory appears only once complete (Orbax writes to a temporary directory and renames it), so a run
killed while saving resumes from the previous checkpoint. Restoring reads each array straight into the sharding of
the abstract state it is given, so a checkpoint saved on 8 devices restores onto 1, 4 or a pod's mesh. The data
state is the same for every process (the position in the global stream), so it is saved once as JSON and is
valid for any number of processes.

Restoring reads only the fields it is asked for (Orbax's partial restore): sampling reads one parameter set and
never the optimizer state, and fields that older checkpoints hold beside the current ones are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
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
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: bytes | None, config: ml_collections.ConfigDict) -> None:
        """Starts an (async) save of step `step`; the arrays are copied off-device before this returns."""
        items = {"state": ocp.args.PyTreeSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(json.loads(data_state))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def check_step(self, step: int | None) -> int:
        """`step`, or the newest checkpoint's for None; a clear error when there is no such checkpoint."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}: train first (--mode train)")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; its steps are {steps}")
        return step

    def restore(self, abstract: Mapping[str, Any], step: int | None = None) -> tuple[dict[str, Any], bytes | None]:
        """({field: tree} placed as `abstract`'s ShapeDtypeStructs say, data-iterator state) of `step` (default:
        the newest checkpoint). `abstract` maps some of the state's top-level fields to their abstract trees; the
        other fields are not read. Inside a tuple field (ema_params) an entry None is not read either."""
        step = self.check_step(step)
        stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        missing = sorted(set(abstract) - set(stored))
        if missing:
            raise ValueError(f"checkpoint {self.directory / str(step)} has no {missing}; it holds {sorted(stored)}")
        item = {field: _skip_nones(tree, stored[field]) for field, tree in abstract.items()}
        restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        items = {"state": ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)}
        has_data = (self.directory / str(step) / "data").exists()
        if has_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        data_state = json.dumps(restored["data"]).encode() if has_data else None
        return dict(restored["state"]), data_state

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _skip_nones(abstract: Any, stored: Any) -> Any:
    """`abstract` with each None entry of a tuple replaced by Orbax placeholders of the stored subtree (not read)."""
    if isinstance(abstract, tuple) and any(entry is None for entry in abstract):
        return [jax.tree.map(lambda _: ocp.PLACEHOLDER, stored[index]) if entry is None else entry
                for index, entry in enumerate(abstract)]
    return abstract
