"""Makes the repository importable from every test (`configs`, `tests.train.train_helpers`)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drops every compiled program when a test module ends: one pytest-xdist worker runs about half the modules,
    and JAX's caches would otherwise keep all their programs (4 GB per worker by the end of the suite)."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
    """A TFDS data directory of this session with the bundled `digits` prepared."""
    from diffax.data import builders

    data_dir = str(tmp_path_factory.mktemp("digits_tfds"))
    builders.prepare("digits", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_data_dir) -> str:
    """The workdir of a trained configs/digits.py:tiny run with two EMAs (0.9, 0.99), data in its own data_dir."""
    from diffax.modes.train import train
    from tests.train.train_helpers import tiny_digits

    path = str(tmp_path_factory.mktemp("tiny_run"))
    train(tiny_digits(**{"train.ema_decays": (0.9, 0.99), "data.data_dir": digits_data_dir}), path)
    return path


@pytest.fixture(scope="session")
def trained_digits_classifier(tmp_path_factory, digits_data_dir) -> str:
    """The workdir of a trained configs/classifier_digits.py:cpu run (200 steps of 32, seconds; 95.6% accuracy on
    the 297 held-out digits), whose features score digits (`diffax.run.ClassifierRun.features`)."""
    from configs import classifier_digits
    from diffax.modes.train import train

    config = classifier_digits.get_config("cpu")
    config.data.data_dir = digits_data_dir
    path = str(tmp_path_factory.mktemp("digits_classifier"))
    train(config, path)
    return path


@pytest.fixture(scope="session")
def digits_cpu_run(tmp_path_factory, digits_data_dir) -> str:
    """The workdir of a trained configs/digits.py:cpu run (200 steps of 32; about 40 s on 2 cores): a model whose
    samples look like digits, scored against the untrained `tiny_run` and used to denoise held-out digits."""
    from configs import digits
    from diffax.modes.train import train

    config = digits.get_config("cpu")
    config.data.data_dir = digits_data_dir
    path = str(tmp_path_factory.mktemp("digits_cpu"))
    train(config, path)
    return path


@pytest.fixture(scope="session")
def mnist5k_data_dir(tmp_path_factory) -> str:
    """A TFDS data directory of this session with the bundled `mnist5k` prepared."""
    from diffax.data import builders

    data_dir = str(tmp_path_factory.mktemp("mnist5k_tfds"))
    builders.prepare("mnist5k", data_dir)
    return data_dir
