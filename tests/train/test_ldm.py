"""Latent diffusion end to end: configs/ldm_mnist.py:tiny on the latents of a tiny autoencoder_mnist run, its
latent scale, samples decoded to images, and configs that point at no autoencoder run."""

import dataclasses
import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    from diffax.data import builders

    path = str(tmp_path_factory.mktemp("mnist_tfds"))
    builders.prepare("mnist5k", path)
    return path


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory, mnist_dir):
    """A configs/autoencoder_mnist.py:tiny run (4 steps)."""
    from configs import autoencoder_mnist
    from diffax.modes.train import train

    config = autoencoder_mnist.get_config("tiny")
    config.data.data_dir = mnist_dir
    path = str(tmp_path_factory.mktemp("ae_tiny"))
    train(config, path)
    return path


def ldm_config(autoencoder: str, data_dir: str):
    from configs import ldm_mnist

    config = ldm_mnist.get_config("tiny")
    config.data.autoencoder, config.data.data_dir = autoencoder, data_dir
    return config


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory, autoencoder_run, mnist_dir):
    from diffax.modes.train import train

    path = str(tmp_path_factory.mktemp("ldm_tiny"))
    train(ldm_config(autoencoder_run, mnist_dir), path)
    return path


def test_ldm_recipe_trains_on_unit_std_latents_and_samples_images(ldm_run, autoencoder_run):
    from diffax import generate
    from diffax.experiment import make_iterator
    from diffax.latents import encode_batch, open_autoencoder
    from diffax.run import load_run

    with open(os.path.join(ldm_run, "run.json")) as file:
        spec = json.load(file)["data_spec"]
    autoencoder = open_autoencoder(autoencoder_run)
    assert spec["example_shape"] == [8, 8, 4] == list(autoencoder.latent_shape)
    assert spec["image_shape"] == [32, 32, 1]
    run = load_run(ldm_run)
    assert run.experiment.spec.latent_scale == spec["latent_scale"] > 0
    # scale_by_std: the training latents have unit standard deviation.
    batch = next(make_iterator(run.config, split="train", global_batch_size=256, seed=1))
    latents = encode_batch(run.experiment, batch)["image"]
    assert latents.shape == (256, 8, 8, 4)
    assert abs(float(np.std(latents)) - 1.0) < 0.1

    images = run.sample(4, labels=[3, 5], seed=0, raw=True)  # Guidance 2 through the label context.
    assert images.shape == (4, 32, 32, 1)
    # The samples are the decoded latents: decode(z / scale) of the latent sampler's output.
    latent_experiment = dataclasses.replace(run.experiment, latents=None)
    latent_samples = generate.generate_samples(
        latent_experiment, run.params(), run.sampler_settings(), run.mesh, num_samples=4, seed=0, batch_size=4,
        cond=generate.sample_labels(4, 10, [3, 5]))
    assert latent_samples.shape == (4, 8, 8, 4)
    decoded = autoencoder.decode(latent_samples / run.experiment.spec.latent_scale, raw=True)
    np.testing.assert_allclose(images, decoded, rtol=1e-5, atol=1e-5)
    assert os.path.exists(os.path.join(ldm_run, "samples", "step_0000004.png"))  # The training grid, decoded.
    edited = run.img2img(generate.to_data_range(images, True), 0.5, labels=[3, 5], steps=2)
    assert edited.shape == (4, 32, 32, 1) and edited.dtype == np.uint8
    with pytest.raises(ValueError, match="latent run .* img2img and inpaint"):
        run.denoise(edited, 0.1)


def test_latent_configs_name_a_missing_or_wrong_autoencoder(tmp_path, ldm_run, mnist_dir):
    from diffax.latents import latent_spec

    missing = str(tmp_path / "nothing_here")
    with pytest.raises(FileNotFoundError, match=f"config.data.autoencoder = '{missing}'"):
        latent_spec(ldm_config(missing, mnist_dir))
    with pytest.raises(ValueError, match=f"config.data.autoencoder = '{ldm_run}' holds a diffusion run, not an "
                                         f"autoencoder run"):
        latent_spec(ldm_config(ldm_run, mnist_dir))
