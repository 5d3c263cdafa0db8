"""What a user sees, from a fresh process (the point of these tests): SIGTERM during the first step's compilation
exits 0 without a checkpoint; a Ctrl-C in the loop saves and exits 130, and a run piped to a file logs its loss
lines with no library INFO lines; a missing config file is one `error:` line and exit 2."""

import os

from train_helpers import INTERRUPTED_LAUNCH, run_python

TINY = ("--config=configs/digits.py:tiny", "--config.train.num_steps=8", "--config.train.checkpoint_every=4",
        "--config.train.log_every=1")

# launch.py with SIGTERM sent to itself when the first training step starts (compilation comes first).
SIGNAL_IN_FIRST_STEP = """
import os, runpy, signal, sys
from diffax.train import runner
original = runner.StepRunner.__call__
def call(self, *args):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(self, *args)
runner.StepRunner.__call__ = call
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


def test_sigterm_during_compilation_exits_zero_without_a_checkpoint(tfds_dir, tmp_path):
    result = run_python(["-c", SIGNAL_IN_FIRST_STEP, *TINY, f"--workdir={tmp_path}"], check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM before the first step: exiting without a checkpoint" in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


def test_ctrl_c_in_the_loop_saves_exits_130_and_a_piped_run_logs_loss_lines(tfds_dir, tmp_path):
    result = run_python(["-c", INTERRUPTED_LAUNCH, "SIGINT", "2", *TINY, f"--workdir={tmp_path}"], check=False)
    assert result.returncode == 130, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]  # The step in flight when the signal came.
    lines = result.stderr.splitlines()
    assert any(" step 3/8 | loss " in line and " steps/s | ETA " in line for line in lines), result.stderr
    assert not [line for line in lines if line.startswith("I1")], "absl INFO lines are on by default"
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line_and_exit_2(tmp_path):
    result = run_python(["launch.py", "--config=configs/no_such_recipe.py", f"--workdir={tmp_path}"], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --config: [Errno 2] No such file or directory: 'configs/no_such_recipe.py'"]
    assert not os.listdir(tmp_path)
