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
def tiny_autoencoder_run(tmp_path_factory, mnist5k_data_dir) -> str:
    """The workdir of configs/autoencoder_mnist.py:tiny trained by launch.py (4 steps, checkpoints at 2 and 4, the
    discriminator from step 2; 32x32 images, 8x8x4 latents), shared by the autoencoder and latent-diffusion tests."""
    from train_helpers import launch

    path = tmp_path_factory.mktemp("autoencoder_tiny")
    launch("configs/autoencoder_mnist.py:tiny", path, f"--config.data.data_dir={mnist5k_data_dir}")
    return str(path)
