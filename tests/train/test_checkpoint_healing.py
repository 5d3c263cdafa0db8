"""Checkpoints that heal: each kind of damage to the newest checkpoint (found by a real training run's checksums or
by Orbax failing to read it) makes the next run set it aside with a message naming it, restore the one before and
finish bitwise equal to an uninterrupted run; nothing older is touched; with nothing intact the error names every
checkpoint tried; a checkpoint that verifies but does not fit is an error, not damage; keep-N and leftover
temporary directories are cleaned when a run starts."""

import os
import random
import shutil
import signal

import jax
import pytest

from diffax.checkpoint import CHECKSUM_FILE, Checkpointer, CheckpointError
from diffax.data import pipeline
from diffax.modes.train import restore_train_state, train
from train_helpers import assert_trees_equal, load_state, tiny_digits

STEPS, STOP = 8, 6


def _config(**overrides):
    return tiny_digits(**{"train.num_steps": STEPS, "train.checkpoint_every": 2, **overrides})


@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, tmp_path_factory):
    return jax.device_get(train(_config(), str(tmp_path_factory.mktemp("uninterrupted"))))


@pytest.fixture(scope="module")
def stopped(tfds_dir, tmp_path_factory):
    """A workdir whose run a SIGTERM stopped after step STOP: checkpoints 2, 4 and 6, each with its checksums."""
    workdir = tmp_path_factory.mktemp("stopped")
    original = pipeline.DataIterator.__next__

    def next_or_signal(self):
        if self._position == STOP - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.DataIterator, "__next__", next_or_signal)
        train(_config(), str(workdir))
    steps = sorted(os.listdir(workdir / "checkpoints"))
    assert steps == ["2", "4", "6"] and all((workdir / "checkpoints" / s / CHECKSUM_FILE).exists() for s in steps)
    return workdir


def _largest_data_file(step_dir):
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state") for name in names
             if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep]
    return max(files, key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)


def _garble(path):
    rng = random.Random(os.path.basename(path))
    offset = rng.randrange(os.path.getsize(path) - 16)
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(bytes(rng.randrange(256) for _ in range(16)))


def _empty(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


DAMAGE = {
    "metadata_deleted": lambda step_dir: (step_dir / "state" / "_METADATA").unlink(),
    "data_truncated": lambda step_dir: _truncate(_largest_data_file(step_dir)),
    "manifest_deleted": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "data_json_truncated": lambda step_dir: _truncate(step_dir / "data" / "metadata"),
    "step_emptied": _empty,
    "bytes_garbled": lambda step_dir: _garble(_largest_data_file(step_dir)),
}


def _copy(stopped, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(stopped, workdir)
    return workdir


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_set_aside_and_the_run_ends_bitwise_equal(kind, stopped, uninterrupted,
                                                                                tmp_path, capsys):
    workdir = _copy(stopped, tmp_path)
    DAMAGE[kind](workdir / "checkpoints" / str(STOP))
    older = {name: sorted(os.listdir(workdir / "checkpoints" / name)) for name in ("2", "4")}
    final = train(_config(), str(workdir))
    assert f"checkpoint {workdir / 'checkpoints' / str(STOP)} is damaged" in capsys.readouterr().err
    assert (workdir / "checkpoints" / f"{STOP}.damaged").is_dir()
    assert sorted(os.listdir(workdir / "checkpoints" / "4")) == older["4"]  # Restored, not rewritten.
    assert_trees_equal(jax.device_get(final), uninterrupted)


def test_nothing_intact_names_every_checkpoint_tried(stopped, tmp_path):
    workdir = _copy(stopped, tmp_path)
    for step in (2, 4, 6):
        _empty(workdir / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*tried 6 \(.*; 4 \(.*; 2 \("):
        train(_config(), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2.damaged", "4.damaged", "6.damaged"]


def test_a_checkpoint_that_verifies_but_does_not_fit_is_an_error_and_stays(stopped, tmp_path):
    workdir = _copy(stopped, tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoints/6 verifies but does not fit"):
        train(_config(**{"model.kwargs.channels": 8}), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]


def test_reading_without_healing_refuses_damage_and_restores_unverified_old_checkpoints(stopped, tmp_path, capsys):
    workdir = _copy(stopped, tmp_path)
    DAMAGE["bytes_garbled"](workdir / "checkpoints" / "6")
    with pytest.raises(CheckpointError, match=r"checkpoints/6 is damaged: checksum mismatch in state/"):
        restore_train_state(_config(), str(workdir))
    (workdir / "checkpoints" / "4" / CHECKSUM_FILE).unlink()  # As written before checksums existed.
    state = restore_train_state(_config(), str(workdir), step=4)[2]
    assert int(state.step) == 4
    assert f"checkpoints/4 has no {CHECKSUM_FILE}" in capsys.readouterr().err
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]  # Reading moves nothing.


def test_opening_removes_leftover_temporaries_and_trim_keeps_n(stopped, tmp_path):
    workdir = _copy(stopped, tmp_path)
    (workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1234567").mkdir()  # A save killed mid-write.
    checkpointer = Checkpointer(str(workdir), max_to_keep=2)
    checkpointer.trim()  # As after a kill right after a save: keep-N + 1 on disk.
    checkpointer.close()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]
    assert load_state(_config(), workdir).step == STOP
