"""Exact resume: runs killed by SIGKILL or stopped by SIGTERM at a random step and resumed end bitwise equal to the
uninterrupted run; a non-finite loss stops the run naming the step and keeps the last good checkpoint."""

import os
import random

import pytest

from train_helpers import INTERRUPTED_LAUNCH, assert_trees_equal, launch, load_state, run_python, tiny_digits

STEPS = 8
OVERRIDES = (f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=2", "--config.train.log_every=1")

@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    launch("configs/digits.py:tiny", workdir, *OVERRIDES)
    return load_state(tiny_digits(), workdir)


def _interrupted_run(workdir, signal_name: str, at: int):
    return run_python(["-c", INTERRUPTED_LAUNCH, signal_name, str(at), "--config=configs/digits.py:tiny",
                       f"--workdir={workdir}", *OVERRIDES], check=False)


def test_sigkill_at_random_step_then_resume_is_bitwise_exact(uninterrupted, tmp_path):
    at = random.Random().randint(1, STEPS - 1)
    result = _interrupted_run(tmp_path, "SIGKILL", at)
    assert result.returncode == -9, f"kill at step {at}: {result.stderr[-3000:]}"
    assert not os.path.exists(tmp_path / "checkpoints" / str(STEPS))
    launch("configs/digits.py:tiny", tmp_path, *OVERRIDES)
    assert_trees_equal(load_state(tiny_digits(), tmp_path), uninterrupted)


def test_sigterm_saves_exits_zero_and_resumes_exactly(uninterrupted, tmp_path):
    at = random.Random().randint(1, STEPS - 2)
    result = _interrupted_run(tmp_path, "SIGTERM", at)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = sorted(int(step) for step in os.listdir(tmp_path / "checkpoints") if step.isdigit())
    assert saved[-1] == at + 1  # The step in flight when the signal came.
    launch("configs/digits.py:tiny", tmp_path, *OVERRIDES)
    assert_trees_equal(load_state(tiny_digits(), tmp_path), uninterrupted)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path):
    import jax
    import numpy as np

    from diffax.modes.train import NonFiniteLossError, train

    good = train(tiny_digits(**{"train.num_steps": 2, "train.checkpoint_every": 2}), str(tmp_path))
    diverging = tiny_digits(**{"train.num_steps": 8, "train.checkpoint_every": 2, "train.log_every": 2,
                               "optim.learning_rate": 1e30})
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf|-inf) at step [3-8]\b"):
        train(diverging, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert_trees_equal(load_state(diverging, tmp_path).params, jax.device_get(good.params))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(good.params))
