"""Helpers for the training-system tests: tiny configs, launching subprocesses, comparing states.

Tests that need several (virtual) devices or processes run `launch.py` or a script in a subprocess, because JAX
fixes the device count when it initializes.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # For `configs`.


# Runs launch.py, but the training data iterator sends SIGNAL to its own process when it is about to read batch
# AT + 1 (after AT optimizer steps were dispatched), wherever the run then is (possibly writing a checkpoint).
INTERRUPTED_LAUNCH = """
import os, runpy, signal, sys
from diffax.data import pipeline
signal_name, at = sys.argv.pop(1), int(sys.argv.pop(1))
original = pipeline.DataIterator.__next__
def next_or_signal(self):
    if self._position == at:
        os.kill(os.getpid(), getattr(signal, signal_name))
    return original(self)
pipeline.DataIterator.__next__ = next_or_signal
sys.argv[0] = "launch.py"
runpy.run_path("launch.py", run_name="__main__")
"""


def subprocess_env(devices: int = 1) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


def run_python(args: list[str], devices: int = 1, check: bool = True, timeout: int = 600,
               **kwargs) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository with `devices` virtual CPU devices; fails with its output."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(devices), capture_output=True,
                            text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{args} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def launch(config: str, workdir, *overrides: str, mode: str = "train", devices: int = 1, **kwargs):
    return run_python(["launch.py", f"--config={config}", f"--workdir={workdir}", f"--mode={mode}", *overrides],
                      devices=devices, **kwargs)


def load_state(config, workdir):
    """The newest checkpoint's train state as numpy arrays, restored onto this process's devices."""
    from diffax.modes.train import restore_train_state

    return jax.device_get(restore_train_state(config, str(workdir))[2])


def tiny_digits(**overrides):
    """configs/digits.py:tiny with dotted-key overrides, e.g. tiny_digits(**{"train.num_steps": 6})."""
    from configs import digits

    config = digits.get_config("tiny")
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def perturbed(params, scale: float = 0.05, seed: int = 3, zeros: bool = False):
    """params + N(0, scale^2) noise (drawn with numpy: nothing compiles), or with zeros=True that noise alone on
    the shapes of `params` (e.g. from jax.eval_shape): a fresh init's zero output layers hide what a network reads."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: (0 if zeros else np.asarray(leaf)) + scale * rng.standard_normal(
        leaf.shape).astype(np.float32), params)


def train_on_random_batches(experiment, steps: int):
    """(train state after `steps` runner calls on fixed random batches, the runner), as training runs them."""
    from diffax import parallel
    from diffax.train.optimizer import make_optimizer
    from diffax.train.runner import StepRunner
    from diffax.train.state import config_abstract_state, create_train_state

    config = experiment.config
    mesh = parallel.mesh_from_config(config.mesh)
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    abstract = config_abstract_state(experiment, optimizer, mesh)
    runner = StepRunner(experiment, optimizer, mesh, abstract)
    held = runner.hold(create_train_state(experiment, optimizer, abstract, config.seed))
    rng = np.random.default_rng(0)
    per_call, batch_size = config.train.steps_per_dispatch, config.train.batch_size

    def one_batch():  # Drawn step by step: the same batches whatever the steps per call.
        return {"image": rng.standard_normal((batch_size, *experiment.example_shape), np.float32),
                "label": rng.integers(0, experiment.num_classes or 1, (batch_size,)).astype(np.int32)}

    for _ in range(steps):
        batches = [one_batch() for _ in range(per_call)]
        batch = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
        held, _ = runner(held, parallel.global_batch(batch, parallel.batch_sharding(mesh, leading_axes=1),
                                                     example_axis=1))
    return runner.state(held), runner


def assert_trees_equal(first, second, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Every leaf bitwise equal, or (with a tolerance) all within it and 99% within 1e-6 + 1e-5 |b|: Adam's
    normalized updates amplify the odd float-rounding difference, while a real error (a wrong batch, layout or
    key) moves most entries."""
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        if rtol == atol == 0.0:
            np.testing.assert_array_equal(a, b)
            continue
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
        close = np.abs(np.asarray(a, np.float64) - b) <= 1e-6 + 1e-5 * np.abs(b)
        assert close.mean() >= 0.99, f"only {close.mean():.2%} of a {np.shape(a)} leaf agree closely"
