"""Fixtures of the training-system tests (helpers live in train_helpers.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # For `train_helpers` (which adds `configs`).


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
    """A TFDS data directory with the bundled `digits` prepared, exported as TFDS_DATA_DIR for subprocesses too."""
    from diffax.data import builders

    path = str(tmp_path_factory.mktemp("tfds"))
    builders.prepare("digits", path)
    os.environ["TFDS_DATA_DIR"] = path
    return path


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory) -> str:
    """One persistent XLA compilation cache for this process and every subprocess: the tests compile the same tiny
    programs many times (each resumed run, each process), and reuse turns those compiles into reads."""
    import jax

    path = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    return path


@pytest.fixture(scope="session")
def mnist_tfds_dir(tmp_path_factory) -> str:
    """A TFDS data directory with the bundled `mnist5k` prepared."""
    from diffax.data import builders

    path = str(tmp_path_factory.mktemp("mnist_tfds"))
    builders.prepare("mnist5k", path)
    return path


@pytest.fixture(scope="session")
def tiny_autoencoder_run(tmp_path_factory, mnist_tfds_dir) -> str:
    """The workdir of a trained configs/autoencoder_mnist.py:tiny run (4 steps; 32x32 images, 8x8x4 latents)."""
    from configs import autoencoder_mnist
    from diffax.modes.train import train

    config = autoencoder_mnist.get_config("tiny")
    config.data.data_dir = mnist_tfds_dir
    path = str(tmp_path_factory.mktemp("autoencoder_tiny"))
    train(config, path)
    return path
