"""An autoencoder run end to end: configs/autoencoder_mnist.py:tiny through launch.py (the discriminator's start
in its metrics, resume, eval's PSNR / SSIM, `load_run` encode / decode), the networks of
configs/autoencoder_kl_f8.py (traced), and the errors of a bad autoencoder config."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from train_helpers import assert_trees_equal, launch, load_state


@pytest.fixture(scope="module")
def ae_run(tiny_autoencoder_run, mnist5k_data_dir):
    """(workdir, data_dir) of the session's configs/autoencoder_mnist.py:tiny run, trained by launch.py: 4 steps,
    checkpoints at 2 and 4, the discriminator from step 2."""
    return pathlib.Path(tiny_autoencoder_run), mnist5k_data_dir


def _config(workdir):
    from diffax.run_config import read_run_file

    return read_run_file(str(workdir))[0]


def test_the_discriminator_joins_at_disc_start(ae_run):
    workdir, _ = ae_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, second = records  # Means over steps 0-1 (before disc_start = 2) and 2-3.
    assert first["disc_factor"] == 0.0 and first["disc_loss"] == 0.0 and first["disc_grad_norm"] == 0.0
    assert first["g_loss"] == first["logits_real"] == 0.0  # The reconstruction-only program: no discriminator.
    assert first["loss"] == pytest.approx(first["nll"] + 1e-6 * first["kl"], rel=1e-5)
    assert second["disc_factor"] == 1.0 and second["disc_loss"] > 0.0 and second["d_weight"] > 0.0
    assert {"rec_l1", "perceptual", "g_loss", "logits_real", "logits_fake", "logvar", "grad_norm"} <= set(second)


def test_resume_reproduces_the_uninterrupted_run(ae_run, tmp_path):
    workdir, data_dir = ae_run
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    launch("configs/autoencoder_mnist.py:tiny", tmp_path, f"--config.data.data_dir={data_dir}")
    config = _config(workdir)
    resumed, uninterrupted = load_state(config, tmp_path), load_state(config, workdir)
    assert int(resumed.step) == 4 and resumed.model_state["discriminator"]  # BatchNorm statistics are state.
    assert_trees_equal(resumed, uninterrupted)


def test_eval_writes_psnr_and_ssim(ae_run):
    from diffax.modes import evaluate

    workdir, _ = ae_run
    results = evaluate.run(_config(workdir), str(workdir))
    record = json.loads((workdir / "eval_0000004.json").read_text())
    assert record["examples"] == 500
    for name in ("raw", "ema_0.999"):
        assert 0.0 < record[f"eval/psnr/{name}"] < 100.0 and -1.0 < record[f"eval/ssim/{name}"] <= 1.0
        assert results[f"eval/psnr/{name}"] == record[f"eval/psnr/{name}"]
    assert (workdir / "eval" / "reconstructions_0000004.png").exists()


def test_bench_times_the_step_and_counts_encode_and_decode_as_the_forward(ae_run, tmp_path):
    import jax
    import jax.numpy as jnp

    from diffax.modes import bench
    from diffax.nets.flops import cost_analysis_flops

    workdir, _ = ae_run
    config = _config(workdir)
    config.bench.steps, config.bench.batch_size = 1, 4
    results = bench.run(config, str(tmp_path))
    assert results["train_examples_per_second"] > 0 and "sampler_step_ms" not in results  # Train figures only.
    experiment = bench.bench_experiment(config)
    model, x = experiment.model, jnp.zeros((1, *experiment.example_shape))
    variables = jax.eval_shape(lambda key: model.init(key, x), jax.random.key(0))
    encode_decode = jax.jit(lambda v, x: model.apply(v, model.apply(v, x, method="encode").mode(), method="decode"))
    expected = cost_analysis_flops(encode_decode.lower(variables, x).compile())
    assert results["forward_gflops_per_example"] * 1e9 == pytest.approx(expected, rel=0.02)


def test_load_run_encodes_and_decodes(ae_run):
    import diffax
    from diffax.run import AutoencoderRun

    workdir, _ = ae_run
    run = diffax.load_run(str(workdir))
    assert isinstance(run, AutoencoderRun) and run.latent_shape == (8, 8, 4) and run.downsampling_factor == 4
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1), np.uint8)
    latents = run.encode(images)
    assert latents.shape == (5, 8, 8, 4) and latents.dtype == np.float32
    decoded = run.decode(latents)
    assert decoded.shape == (5, 32, 32, 1) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(run.reconstruct(images), decoded)
    raw = run.decode(latents, raw=True)
    np.testing.assert_array_equal(np.clip(np.round((raw + 1) * 127.5), 0, 255).astype(np.uint8), decoded)
    np.testing.assert_allclose(run.encode(images / 127.5 - 1.0, raw=True), latents, atol=1e-5)
    # A posterior draw: sample i comes from fold_in(PRNGKey(seed), i), whatever the batch size.
    drawn = run.encode(images, sample=True, batch_size=2)
    np.testing.assert_allclose(run.encode(images, sample=True, batch_size=4), drawn, atol=1e-5)
    assert not np.allclose(drawn, latents)
    with pytest.raises(ValueError, match=r"latents of shape \(5, 4, 4, 4\): expected \(N, 8, 8, 4\)"):
        run.decode(np.zeros((5, 4, 4, 4)))
    run.close()


def test_kl_f8_recipes_build_f8_networks_with_4x4x4_and_32x32x4_latents():
    """Traced only (training it would compile a second network in the suite): the full recipe is the 83,653,863-
    parameter Stable Diffusion VAE on 256x256x3, its tiny variant an f = 8 network on 32x32x1."""
    import jax

    from configs import autoencoder_kl_f8
    from diffax.experiment import DataSpec, build_experiment

    for variant, shape, latents, count in (("", (256, 256, 3), (32, 32, 4), 83_653_863),
                                           ("tiny", (32, 32, 1), (4, 4, 4), None)):
        experiment = build_experiment(autoencoder_kl_f8.get_config(variant), DataSpec(shape, None, True))
        params, model_state = jax.eval_shape(experiment.init_variables, jax.random.PRNGKey(0))
        assert set(params) == {"autoencoder", "discriminator", "logvar"} and set(model_state) == {"discriminator"}
        if count:
            assert sum(leaf.size for leaf in jax.tree.leaves(params["autoencoder"])) == count
        posterior = jax.eval_shape(lambda p: experiment.model.apply({"params": p}, jax.numpy.zeros((1, *shape)),
                                                                    method="encode"), params["autoencoder"])
        assert posterior.mean.shape == (1, *latents)


def test_bad_autoencoder_configs_fail_clearly(ae_run):
    from configs import autoencoder_mnist
    from diffax.config_checks import validate_config
    from diffax.modes import check_mode

    config = autoencoder_mnist.get_config("tiny")
    config.autoencoder.perceptual = "vgg"
    with pytest.raises(ValueError, match=r"config.autoencoder.perceptual = 'vgg': expected one of \['lpips', "
                                         r"'ms_ssim', 'none'\]"):
        validate_config(config)
    config.autoencoder.perceptual = "lpips"
    with pytest.raises(ValueError, match=r"config.autoencoder.lpips_weights = '': expected the path of an existing"):
        validate_config(config)
    config = autoencoder_mnist.get_config("tiny")
    config.model.name = "unet_tiny"
    with pytest.raises(ValueError, match=r"config.model.name = 'unet_tiny': expected an autoencoder"):
        validate_config(config)
    workdir, _ = ae_run
    with pytest.raises(ValueError, match=r"is an autoencoder run .* --mode sample needs a diffusion run, an "
                                         r"autoencoder run has --mode train, eval, bench"):
        check_mode("sample", _config(workdir), str(workdir))
