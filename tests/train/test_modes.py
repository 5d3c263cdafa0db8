"""`sample`, `eval` and `bench` on the tiny variants; `train` then `sample` on the 2-D toy data."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from train_helpers import launch, tiny_digits


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory):
    from diffax.train.loop import train

    workdir = tmp_path_factory.mktemp("digits_tiny")
    config = tiny_digits(**{"train.ema_decays": (0.9, 0.99)})
    train(config, str(workdir))
    return config, workdir


def test_train_writes_metrics_tensorboard_and_a_grid(trained):
    config, workdir = trained
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [2, 4]
    assert {"loss", "grad_norm", "learning_rate", "steps_per_second", "examples_per_second"} <= set(lines[0])
    assert len(os.listdir(workdir / "tensorboard")) == 1
    grid = np.asarray(PIL.Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.ndim == 2 and grid.shape[0] > 32  # 4 samples, one column per class (10), upscaled 8 -> 32.


def test_sample_mode_writes_png_and_npz_with_guidance(trained):
    from diffax.evaluation.sample_mode import run_sample

    config, workdir = trained
    config.sample.update(num_samples=6, batch_size=4, guidance_scale=3.0, method="ddim", num_steps=2, ema_index=1)
    path = run_sample(config, str(workdir))
    assert path.endswith("sample_0000004_ddim_2_g3.png") and os.path.exists(path)
    saved = np.load(path.replace(".png", ".npz"))
    assert saved["samples"].shape == (6, 8, 8, 1) and np.isfinite(saved["samples"]).all()
    assert saved["labels"].tolist() == [0, 1, 2, 3, 4, 5]


def test_eval_mode_reports_loss_and_bits_per_dim_for_every_parameter_set(trained):
    from diffax.evaluation.evaluate import run_eval

    config, workdir = trained
    results = run_eval(config, str(workdir))
    names = ("raw", "ema_0.9", "ema_0.99")
    assert set(results) == {f"eval/{metric}/{name}" for metric in ("loss", "bits_per_dim") for name in names}
    assert all(np.isfinite(value) and value > 0 for value in results.values())
    assert json.load(open(workdir / "eval_0000004.json"))["step"] == 4


def test_bench_mode_through_launch(tfds_dir, tmp_path):
    launch("configs/cifar10_ddpm.py:tiny", tmp_path, "--config.bench.steps=1", "--config.bench.example_shape=8,8,2",
           "--config.model.compute_dtype=bfloat16", mode="bench")
    results = json.load(open(tmp_path / "bench.json"))
    assert results["example_shape"] == [8, 8, 2] and results["compute_dtype"] == "bfloat16"
    assert results["train_examples_per_second"] > 0 and results["sampler_step_ms"] > 0
    assert results["train_launch_ms"] > 0 and results["train_state_arrays"] > 0
    assert results["denoiser_examples_per_second"] > 0 and results["sampler_step_over_denoiser"] > 0
    assert results["forward_gflops_per_example"] > 0 and results["mfu"] is None  # No peak FLOP/s known for CPUs.
    assert 0 < results["loss_relative_error"] < 1e-2 and 0 < results["output_relative_error"] < 3e-2  # bf16.


def test_toy2d_trains_and_samples_a_scatter_plot(tmp_path):
    from configs import toy2d
    from diffax.evaluation.sample_mode import run_sample
    from diffax.train.loop import train

    config = toy2d.get_config("tiny")
    train(config, str(tmp_path))
    path = run_sample(config, str(tmp_path))
    assert np.asarray(PIL.Image.open(path)).shape == (256, 256)
    assert np.load(path.replace(".png", ".npz"))["samples"].shape == (256, 2)


def test_bf16_compute_keeps_float32_parameters(tfds_dir, tmp_path):
    import jax

    from diffax.train.loop import train

    state = train(tiny_digits(**{"model.compute_dtype": "bfloat16", "train.num_steps": 2}), str(tmp_path))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
    loss = json.loads(open(tmp_path / "metrics.jsonl").readlines()[-1])["loss"]
    assert np.isfinite(loss) and loss > 0
