"""Latent diffusion end to end: configs/ldm_mnist.py:tiny on the latents of a tiny autoencoder_mnist run, its
latent scale, samples decoded to images, and configs that point at no autoencoder run."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_helpers import perturbed


def ldm_config(autoencoder: str, data_dir: str):
    from configs import ldm_mnist

    config = ldm_mnist.get_config("tiny")
    config.data.autoencoder, config.data.data_dir = autoencoder, data_dir
    return config


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory, tiny_autoencoder_run, mnist5k_data_dir):
    from diffax.modes.train import train

    path = str(tmp_path_factory.mktemp("ldm_tiny"))
    train(ldm_config(tiny_autoencoder_run, mnist5k_data_dir), path)
    return path


def test_ldm_recipe_trains_on_unit_std_latents_and_samples_images(ldm_run, tiny_autoencoder_run):
    from diffax import generate
    from diffax.experiment import make_iterator
    from diffax.latents import encode_batch, open_autoencoder
    from diffax.run import load_run

    with open(os.path.join(ldm_run, "run.json")) as file:
        spec = json.load(file)["data_spec"]
    autoencoder = open_autoencoder(tiny_autoencoder_run)
    assert spec["example_shape"] == [8, 8, 4] == list(autoencoder.latent_shape)
    assert spec["image_shape"] == [32, 32, 1]
    assert spec["autoencoder_step"] == autoencoder.step == 4
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


def test_the_latent_cache_holds_every_training_example_once(ldm_run):
    from diffax.latents import cache_latents
    from diffax.run import load_run

    cached = cache_latents(load_run(ldm_run).experiment)
    assert cached["image"].shape == (4500, 8, 8, 4)  # mnist5k's train split, nothing dropped.
    np.testing.assert_array_equal(np.bincount(cached["label"]), np.full(10, 450))
    assert abs(float(np.std(cached["image"])) - 1.0) < 0.1


def test_latent_configs_name_a_missing_or_wrong_autoencoder(tmp_path, ldm_run, tiny_autoencoder_run,
                                                           mnist5k_data_dir):
    from diffax.config_checks import check_autoencoder_run, validate_config
    from diffax.latents import latent_spec

    missing = str(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match=f"config.data.autoencoder = '{missing}': expected the workdir of a trained "
                                         f"autoencoder run \\(there is no run there\\)"):
        check_autoencoder_run(ldm_config(missing, mnist5k_data_dir))  # At launch, before anything compiles.
    with pytest.raises(FileNotFoundError, match=f"config.data.autoencoder = '{missing}'"):
        latent_spec(ldm_config(missing, mnist5k_data_dir))
    with pytest.raises(ValueError, match=f"config.data.autoencoder = '{ldm_run}': expected the workdir of an "
                                         f"autoencoder run \\(config.task = 'autoencoder'\\), not of a diffusion run"):
        check_autoencoder_run(ldm_config(ldm_run, mnist5k_data_dir))
    with pytest.raises(ValueError, match=f"config.data.autoencoder = '{ldm_run}' holds a diffusion run, not an "
                                         f"autoencoder run"):
        latent_spec(ldm_config(ldm_run, mnist5k_data_dir))
    check_autoencoder_run(ldm_config(tiny_autoencoder_run, mnist5k_data_dir))
    unpadded = ldm_config(tiny_autoencoder_run, mnist5k_data_dir)
    unpadded.data.pad_to = None
    with pytest.raises(ValueError, match=r"images of shape \(28, 28, 1\), but the autoencoder .* \(32, 32, 1\)"):
        latent_spec(unpadded)
    flipped = ldm_config(tiny_autoencoder_run, mnist5k_data_dir)
    flipped.data.latent_cache = flipped.data.random_flip = True
    with pytest.raises(ValueError, match="config.data.latent_cache = True: expected False with data.random_flip"):
        validate_config(flipped)


def test_labels_reach_the_network_through_the_context_and_guide_against_the_null_class(ldm_run):
    from diffax.generate import make_denoiser
    from diffax.run import load_run

    run = load_run(ldm_run)
    experiment, params = run.experiment, run.params()
    assert params["label_context"]["Embed_0"]["embedding"].shape == (11, 64)  # num_classes + 1 rows, 4 x 16 wide.
    assert "Embed_0" not in params["embedding"]  # No label table in the time embedding.
    params = perturbed(params)  # Four steps from zero output layers hardly read the attention.

    @jax.jit
    def outputs(params, x, t, labels):  # Each network call compiles apart: batch what can be batched.
        x0_fn = experiment.x0_fn(params)
        others = jnp.concatenate([labels, labels.at[0].add(1), jnp.full_like(labels, 10)])
        return (x0_fn(jnp.tile(x, (3, 1, 1, 1)), jnp.tile(t, 3), others).reshape(3, *x.shape), x0_fn(x, t, None),
                make_denoiser(experiment, params, labels, 1.0)(x, t), make_denoiser(experiment, params, labels, 3.0)(x, t))

    x, t = jax.random.normal(jax.random.key(2), (2, 8, 8, 4)), jnp.array([0.3, 0.6])
    (conditional, other_label, null), unconditional, scale_1, scale_3 = outputs(params, x, t, jnp.array([3, 7]))
    assert float(jnp.abs(other_label[0] - conditional[0]).max()) > 1e-4
    np.testing.assert_allclose(other_label[1], conditional[1], rtol=1e-6, atol=1e-6)
    # The unconditional call is the null class (the table's last row), the condition label dropout trains.
    np.testing.assert_allclose(unconditional, null, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale_1, conditional, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale_3, null + 3.0 * (conditional - null), rtol=1e-5, atol=1e-5)
