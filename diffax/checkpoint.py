"""Checkpoints with Orbax: async saves, keep-N, the data iterator's position and the config beside the train state;
every file checksummed, and a damaged newest checkpoint set aside so that training resumes from the one before.

    WORKDIR/checkpoints/<step>/state            the TrainState {step, params, ema_params, opt_state, key}, Orbax's
                                                array format (OCDBT)
    WORKDIR/checkpoints/<step>/data             JSON: the data iterator's state (its position in the global stream)
    WORKDIR/checkpoints/<step>/config           JSON: the run's config
    WORKDIR/checkpoints/<step>/checksums.json   {"sha256": {relative path: hex digest}} of every file above
    WORKDIR/checkpoints/<step>.damaged          a checkpoint that failed to verify or read, set aside (never deleted)

A step directory appears only once complete (Orbax writes to a temporary directory and renames it), so a run
killed while saving resumes from the previous checkpoint. Orbax's format has no checksums of its own (garbled bytes
in a data file restore silently), so process 0 writes `checksums.json` inside the step's directory before it is
committed: Orbax calls `AsyncOptions.post_finalization_callback` on the primary host once every process has written
and the items are finalized, before it renames the temporary directory (`<step>.orbax-checkpoint-tmp[-<n>]`; on GCS,
where nothing is renamed, before it writes the commit marker). A checkpoint thus never appears without its
checksums. Restoring checks them first; checkpoints written before checksums existed restore unverified (the log
says so once).

Healing (`restore(..., heal=True)`, what training does): the newest checkpoint that fails to verify or to read is
renamed to `<step>.damaged` with a one-line message naming it and why, and the next older one is tried; with none
left a `CheckpointError` names each one tried. A checkpoint that verifies but does not fit the requested state (a
changed config) is not damage: that is an error, and nothing is moved. Opening the checkpointer removes Orbax's
leftover temporary directories, and `trim()` deletes the oldest checkpoints beyond keep-N (a run killed right after
a save has not trimmed yet).

Restoring reads each array straight into the sharding of the abstract state it is given, so a checkpoint saved on 8
devices restores onto 1, 4 or a pod's mesh, and reads only the fields it is asked for (Orbax's partial restore):
sampling reads one parameter set and never the optimizer state, and fields that older checkpoints hold beside the
current ones are skipped. The data state is the same for every process (the position in the global stream), so it
is saved once as JSON and is valid for any number of processes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from diffax import console

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checksums.json"
DAMAGED_SUFFIX = ".damaged"
# Orbax's own bookkeeping beside the items, rewritten around the commit; damage there fails Orbax's reads anyway.
_UNCHECKED = {CHECKSUM_FILE, "_CHECKPOINT_METADATA", "commit_success.txt"}
_CHUNK = 1 << 24


class CheckpointError(RuntimeError):
    """No checkpoint could be restored, or the one asked for is damaged; the message names each and why."""


def file_checksums(step_dir: epath.Path) -> dict[str, str]:
    """{path relative to step_dir: sha256 hex digest} of every file under it except Orbax's bookkeeping."""
    checksums = {}
    for path in _files(step_dir):
        relative = str(path.relative_to(step_dir))
        if relative in _UNCHECKED:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        checksums[relative] = digest.hexdigest()
    return checksums


def _files(directory: epath.Path) -> list[epath.Path]:
    """Every file under `directory`, sorted (a walk by `iterdir`: epath refuses recursive globs on GCS)."""
    files = []
    for path in sorted(directory.iterdir()):
        files.extend(_files(path) if path.is_dir() else [path])
    return files


def verify(step_dir: epath.Path) -> str | None:
    """None if every file under `step_dir` matches its checksums.json, else what is wrong (one line). A directory
    without checksums.json is reported as "unverified" by the caller (`Checkpointer.problem`), not here."""
    expected = json.loads((step_dir / CHECKSUM_FILE).read_text())["sha256"]
    actual = file_checksums(step_dir)
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    changed = sorted(name for name in expected if expected[name] != actual[name])
    if changed:
        return f"checksum mismatch in {', '.join(changed[:3])}"
    return None


class Checkpointer:
    """Saves and restores (train state, data-iterator state, config) under `workdir/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        async_options = ocp.AsyncOptions(post_finalization_callback=self._write_checksums) if async_save else None
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True,
                                               async_options=async_options)
        self._async = async_save
        self._saving: int | None = None  # The step of the save in flight (Orbax runs one at a time).
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        self._max_to_keep = max_to_keep
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._told_unverified = False
        self._verified: set[int] = set()  # Steps whose files matched their checksums (sampling restores often).

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: bytes | None, config: ml_collections.ConfigDict) -> None:
        """Starts an (async) save of step `step`; the arrays are copied off-device before this returns. Its
        checksums are written before it is committed."""
        items = {"state": ocp.args.PyTreeSave(state), "config": ocp.args.JsonSave(config.to_dict())}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(json.loads(data_state))
        self._manager.wait_until_finished()  # Orbax would too; the callback below reads self._saving.
        self._saving = step
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self._async:
            self._write_checksums()

    def _write_checksums(self) -> None:
        """Writes checksums.json into the directory of the step being saved: its temporary directory before Orbax
        renames it (async saves: Orbax's callback on the primary host), else the step's directory. An error here
        must not stop Orbax's commit: the checkpoint is then unverified, and the log says why."""
        if jax.process_index() != 0:
            return
        step = self._saving
        temporaries = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        step_dir = temporaries[-1] if temporaries else self.directory / str(step)
        try:
            (step_dir / CHECKSUM_FILE).write_text(json.dumps({"sha256": file_checksums(step_dir)}))
        except Exception as error:  # Raised here it would abort Orbax's commit of an intact checkpoint.
            console.warning(f"checksums of checkpoint {step} not written: {_first_line(error)}")

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

    def problem(self, step: int) -> str | None:
        """What is wrong with checkpoint `step` (one line), or None if it verifies. One without checksums (older
        format, or emptied) is checked only for readable metadata and JSON items."""
        step_dir = self.directory / str(step)
        if step in self._verified:
            return None
        try:
            if (step_dir / CHECKSUM_FILE).exists():
                problem = verify(step_dir)
                if problem is None:
                    self._verified.add(step)
                return problem
            if not self._told_unverified:
                console.info(f"checkpoint {step_dir} has no {CHECKSUM_FILE} (written before diffax checksummed "
                             f"checkpoints): restoring it unverified")
                self._told_unverified = True
            self._manager.item_metadata(step)["state"]
            for item in ("data", "config"):  # The JSON items (Orbax's JsonCheckpointHandler file): parse them.
                if (step_dir / item).exists():
                    json.loads((step_dir / item / "metadata").read_text())
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"unreadable ({type(error).__name__}: {_first_line(error)})"
        return None

    def restore(self, abstract: Mapping[str, Any], step: int | None = None, *, heal: bool = False
                ) -> tuple[dict[str, Any], bytes | None]:
        """({field: tree} placed as `abstract`'s ShapeDtypeStructs say, data-iterator state) of `step` (default:
        the newest checkpoint). `abstract` maps some of the state's top-level fields to their abstract trees; the
        other fields are not read. Inside a tuple field (ema_params) an entry None is not read either.

        A damaged checkpoint raises `CheckpointError`; with heal=True (and step None) it is set aside and the next
        older one is tried (module docstring)."""
        if not heal:
            step = self.check_step(step)
            problem = self.problem(step)
            if problem:
                raise CheckpointError(f"checkpoint {self.directory / str(step)} is damaged: {problem}")
            return self._restore(abstract, step)
        tried = []
        while (step := self.latest_step()) is not None:
            problem = _agreed(self.problem(step))
            verified = problem is None and (self.directory / str(step) / CHECKSUM_FILE).exists()
            if problem is None:
                try:
                    return self._restore(abstract, step)
                except Exception as error:  # Orbax raises many kinds; judged below.
                    if verified:  # Intact files that do not fit: a config mismatch, not damage.
                        raise CheckpointError(f"checkpoint {self.directory / str(step)} verifies but does not fit "
                                              f"this run's state: {_first_line(error)}") from error
                    problem = f"unreadable ({type(error).__name__}: {_first_line(error)})"
            tried.append(f"{step} ({problem})")
            self._set_aside(step, problem)
            self._verified.discard(step)
        if tried:
            raise CheckpointError(f"no intact checkpoint in {self.directory}; tried {'; '.join(tried)}")
        raise FileNotFoundError(f"no checkpoint in {self.directory}")

    def _restore(self, abstract: Mapping[str, Any], step: int) -> tuple[dict[str, Any], bytes | None]:
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

    def _set_aside(self, step: int, problem: str) -> None:
        """Renames checkpoint `step` to `<step>.damaged` (`.damaged.N` if taken), on process 0, all in step."""
        source = self.directory / str(step)
        target = self.directory / f"{step}{DAMAGED_SUFFIX}"
        index = 1
        while target.exists():
            target, index = self.directory / f"{step}{DAMAGED_SUFFIX}.{index}", index + 1
        _sync("before_set_aside")
        if jax.process_index() == 0:
            source.rename(target)
            console.warning(f"checkpoint {source} is damaged ({problem}): moved to {target.name}, trying the "
                            f"previous one")
        _sync("after_set_aside")
        self._manager.reload()

    def trim(self) -> None:
        """Deletes the oldest checkpoints beyond keep-N (Orbax trims only on the next save). Every process calls
        it (Orbax's delete ends in a barrier)."""
        if self._max_to_keep is None:
            return
        for step in self.all_steps()[:-self._max_to_keep]:
            logging.info("deleting checkpoint %d beyond keep-%d", step, self._max_to_keep)
            self._manager.delete(step)

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"diffax_checkpoint_{name}")


def _agreed(problem: str | None) -> str | None:
    """Process 0's verdict on every process (they read the same files; one decides, so all set the same step
    aside)."""
    if jax.process_count() == 1:
        return problem
    damaged = multihost_utils.broadcast_one_to_all(np.int32(problem is not None))
    return (problem or "damaged on process 0") if int(damaged) else None


def _skip_nones(abstract: Any, stored: Any) -> Any:
    """`abstract` with each None entry of a tuple replaced by Orbax placeholders of the stored subtree (not read)."""
    if isinstance(abstract, tuple) and any(entry is None for entry in abstract):
        return [jax.tree.map(lambda _: ocp.PLACEHOLDER, stored[index]) if entry is None else entry
                for index, entry in enumerate(abstract)]
    return abstract
