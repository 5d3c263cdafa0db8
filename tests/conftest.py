"""Makes the repository importable from every test (`configs`, `tests.train.train_helpers`)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """The workdir of a trained configs/digits.py:tiny run with two EMAs (0.9, 0.99), data in its own data_dir."""
    from diffax.data import builders
    from diffax.modes.train import train
    from tests.train.train_helpers import tiny_digits

    data_dir = str(tmp_path_factory.mktemp("tiny_run_tfds"))
    builders.prepare("digits", data_dir)
    path = str(tmp_path_factory.mktemp("tiny_run"))
    train(tiny_digits(**{"train.ema_decays": (0.9, 0.99), "data.data_dir": data_dir}), path)
    return path
