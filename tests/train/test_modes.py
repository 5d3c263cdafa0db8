"""The modes on a trained run: sample and eval read the run's own config (whatever variant the command line names),
take only sampling/eval overrides, never open the data set to sample, and name what made each sample file."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from train_helpers import launch, tiny_digits


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory):
    from diffax.modes.train import train

    workdir = tmp_path_factory.mktemp("digits_tiny")
    config = tiny_digits(**{"train.ema_decays": (0.9, 0.99)})
    train(config, str(workdir))
    return config, workdir


def test_train_writes_run_file_metrics_tensorboard_and_a_grid(trained):
    from diffax.run_config import read_run_file

    config, workdir = trained
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [2, 4]
    assert {"loss", "grad_norm", "learning_rate", "steps_per_second", "examples_per_second"} <= set(lines[0])
    assert len(os.listdir(workdir / "tensorboard")) == 1
    grid = np.asarray(PIL.Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.ndim == 2 and grid.shape[0] > 32  # 4 samples, one column per class (10), upscaled 8 -> 32.
    saved, spec = read_run_file(str(workdir))
    assert saved.to_dict() == config.to_dict() and spec.example_shape == (8, 8, 1) and spec.num_classes == 10


def test_sample_and_eval_with_another_variant_use_the_saved_config_and_never_open_the_data(trained, tmp_path):
    _, workdir = trained
    missing = tmp_path / "no_data_here"  # Sampling would prepare the bundled digits here if it opened the data.
    launch("configs/digits.py", workdir, "--config.sample.method=ddim", "--config.sample.options.eta=1.0",
           "--config.sample.num_steps=2", "--config.sample.num_samples=6", "--config.sample.batch_size=4",
           "--config.sample.guidance_scale=3", "--config.sample.ema_index=1", "--config.sample.labels=(3, 5)",
           "--config.sample.seed=7", f"--config.data.data_dir={missing}", mode="sample")
    assert not missing.exists()
    stem = workdir / "samples" / "0000004_ddim-eta1_2-uniform_g3_ema0.99_seed7_n6_labels-3-5"
    saved = np.load(f"{stem}.npz")
    assert saved["samples"].shape == (6, 8, 8, 1) and saved["samples"].dtype == np.uint8
    assert saved["labels"].tolist() == [3, 5, 3, 5, 3, 5] and os.path.exists(f"{stem}.png")
    launch("configs/digits.py:cpu", workdir, "--config.eval.bpd_examples=2", mode="eval")
    results = json.load(open(workdir / "eval_0000004.json"))
    names = ("raw", "ema_0.9", "ema_0.99")
    assert set(results) == {"step"} | {f"eval/{metric}/{name}" for metric in ("loss", "bits_per_dim") for name in names}
    assert all(np.isfinite(results[key]) and results[key] > 0 for key in results)


def test_sampling_a_tfds_recipe_run_needs_no_data_directory(tfds_dir, tmp_path):
    """A cifar10_ddpm run samples with the full recipe named on the command line: CIFAR-10 is nowhere prepared."""
    from configs import cifar10_ddpm
    from diffax.modes.train import train

    train(cifar10_ddpm.get_config("tiny"), str(tmp_path))
    missing = tmp_path / "no_data_here"
    launch("configs/cifar10_ddpm.py", tmp_path, "--config.sample.num_steps=2", "--config.sample.num_samples=2",
           f"--config.data.data_dir={missing}", mode="sample")
    assert not missing.exists()
    assert os.path.exists(tmp_path / "samples" / "0000004_ddpm_2-trailing_g1_clip_ema0.999_seed0_n2.npz")


def test_edit_mode_writes_strips_and_scores_denoising(trained):
    from diffax.modes import edit

    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.edit.update(num_images=3, num_steps=2, jump_length=1, jump_n_sample=2, noise_std=(0.2,), intermediates=2)
    widths = {}
    for task in ("denoise", "inpaint"):
        config.edit.task = task
        path = edit.run(config, str(workdir))
        widths[task] = np.asarray(PIL.Image.open(path)).shape[1]
    assert widths["denoise"] > widths["inpaint"]  # Original, noisy, 2 states, result against original, given, result.
    saved = np.load(path.replace(".png", ".npz"))
    np.testing.assert_array_equal(saved["result"][:, 0, :, :4], saved["original"][:, :, :4])  # The kept left half.
    assert "posterior-cg1" in path and json.load(open(path.replace(".png", ".json")))["repainted_psnr"] > 0
    report = json.load(open(str(workdir / "edits" / "0000004_denoise_std0.2_steps2_seed0_n3.json")))
    assert {"noisy_psnr", "denoised_psnr", "best_blur_psnr", "best_blur_radius"} <= set(report["psnr_by_noise_std"]["0.2"])


def test_denoising_held_out_digits_beats_the_noisy_input_and_the_best_blur(digits_cpu_run, digits_data_dir):
    """The :cpu digits run (200 steps, raw parameters; the session's) denoises 64 held-out digits at noise std 0.1,
    0.2 and 0.4 better than the noisy input and than the best Gaussian blur of it (about 1, 1.4 and 3 dB above the
    blur)."""
    from configs import digits
    from diffax.modes import edit

    config = digits.get_config("cpu")
    config.data.data_dir = digits_data_dir
    config.sample.ema_index = -1
    config.edit.num_images = 64
    edit.run(config, digits_cpu_run)
    report = json.load(open(os.path.join(digits_cpu_run, "edits",
                                         "0000200_denoise_std0.1-0.2-0.4_steps0_seed0_n64.json")))
    for level, scores in report["psnr_by_noise_std"].items():
        assert scores["denoised_psnr"] > scores["noisy_psnr"] + 0.5, level
        assert scores["denoised_psnr"] > scores["best_blur_psnr"] + 0.5, level


def test_a_loaded_run_refuses_changes_to_what_it_trained(trained):
    from diffax.run_config import resolve_config

    _, workdir = trained
    with pytest.raises(ValueError, match=r"\['data.name', 'model.kwargs.channels'\] of the run in .* cannot be "
                                         r"changed after training"):
        resolve_config(False, None, str(workdir), {"model.kwargs.channels": "64", "data.name": "mnist5k",
                                                   "sample.num_steps": "3"})
    config = resolve_config(False, None, str(workdir), {"sample.num_steps": "3", "model.kwargs.channels": "16"})
    assert config.sample.num_steps == 3  # Equal values of run keys are fine.
    with pytest.raises(ValueError, match=r"holds a run trained with other values of \['model.name'"):
        resolve_config(True, tiny_digits(**{"model.name": "unet_tiny"}), str(workdir), {})
    with pytest.raises(ValueError, match=r"config.sample.nm_steps does not exist"):
        resolve_config(False, None, str(workdir), {"sample.nm_steps": "3"})


def test_checkpoint_step_is_selectable_and_missing_steps_are_named(trained):
    from diffax.run import load_run

    _, workdir = trained
    run = load_run(str(workdir), step=2)
    assert run.step == 2
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 .* its steps are \[2, 4\]"):
        load_run(str(workdir), step=3)


def test_bench_mode_through_launch(tfds_dir, tmp_path):
    launch("configs/cifar10_ddpm.py:tiny", tmp_path, "--config.bench.steps=1", "--config.bench.example_shape=8,8,2",
           "--config.model.compute_dtype=bfloat16", mode="bench")
    results = json.load(open(tmp_path / "bench.json"))
    assert results["example_shape"] == [8, 8, 2] and results["compute_dtype"] == "bfloat16"
    assert results["train_examples_per_second"] > 0 and results["sampler_step_ms"] > 0
    assert results["train_launch_ms"] > 0 and results["train_state_arrays"] > 0
    assert results["denoiser_examples_per_second"] > 0 and results["sampler_step_over_denoiser"] > 0
    assert results["sample_end_to_end_examples_per_second"] > 0
    assert results["forward_gflops_per_example"] > 0 and results["mfu"] is None  # No peak FLOP/s known for CPUs.
    assert 0 < results["loss_relative_error"] < 1e-2 and 0 < results["output_relative_error"] < 3e-2  # bf16.


def test_toy2d_trains_samples_a_scatter_plot_and_scores_its_samples_exactly(tmp_path):
    from configs import toy2d
    from diffax.modes import evaluate, sample
    from diffax.modes.train import train

    config = toy2d.get_config("tiny")
    train(config, str(tmp_path))
    path = sample.run(config, str(tmp_path))
    assert np.asarray(PIL.Image.open(path)).shape == (256, 256)
    points = np.load(path.replace(".png", ".npz"))["samples"]
    assert points.shape == (256, 2) and points.dtype == np.float32

    config.eval.num_samples, config.eval.loss = 512, False
    first = evaluate.run(config, str(tmp_path))
    record = json.load(open(tmp_path / "eval" / "0000004_heun_3-uniform_g1_ema0.999_seed0_n512.json"))
    assert record["num_samples"] == 512 and record["sampler"]["method"] == "heun"
    assert first == evaluate.run(config, str(tmp_path))  # Reproducible by seed.
    scores = record["scores"]
    # 4 training steps: far from the data (fresh data against fresh data is the floor of each score).
    assert scores["energy_distance"] > 10 * abs(scores["energy_distance_data"])
    assert scores["log_density"] < scores["log_density_data"] - 1.0
    assert not os.path.exists(tmp_path / "eval_0000004.json")  # eval.loss False, bits/dim off for points.


def test_bf16_compute_keeps_float32_parameters(tfds_dir, tmp_path):
    import jax

    from diffax.modes.train import train

    state = train(tiny_digits(**{"model.compute_dtype": "bfloat16", "train.num_steps": 2}), str(tmp_path))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    loss = json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])["loss"]
    assert np.isfinite(loss) and loss > 0
