"""`diffax.load_run`: a trained run's parameters, denoiser and samples, independent of batch size and device count;
checkpoints of the older layout restore."""

import os

import jax
import numpy as np
import pytest

from tests.train.train_helpers import run_python


@pytest.fixture
def workdir(tiny_run):
    return tiny_run


def test_load_run_reads_the_chosen_parameters_and_samples_in_the_data_range(workdir):
    from diffax.modes.train import restore_train_state
    from diffax.run import load_run

    run = load_run(workdir)
    _, _, state = restore_train_state(run.config, workdir)
    for ema, expected in ((True, state.ema_params[0]), (1, state.ema_params[1]), (False, state.params)):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.params(ema)), jax.device_get(expected))
    images = run.sample(5, labels=[7], method="ddim", steps=2, guidance=2.0, seed=3)
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    raw = run.sample(5, labels=[7], method="ddim", steps=2, guidance=2.0, seed=3, raw=True)
    np.testing.assert_array_equal(images, np.clip(np.round((raw + 1) * 127.5), 0, 255).astype(np.uint8))
    x0_hat = run.denoiser(labels=np.full(5, 7), guidance=2.0)(raw, np.full(5, 0.5, np.float32))
    assert x0_hat.shape == raw.shape
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        run.denoiser()


SAME_SAMPLES = """
import sys
import jax, numpy as np
from diffax import generate
from diffax.run import load_run
from diffax.run_config import read_run_file

assert jax.device_count() == 8
config = read_run_file(sys.argv[1])[0]
config.mesh.num_devices = 1
one, eight = load_run(sys.argv[1], config=config), load_run(sys.argv[1])
assert one.mesh.devices.size == 1 and eight.mesh.devices.size == 8
shape = one.experiment.example_shape
whole = np.asarray(jax.jit(generate.sample_noise, static_argnums=2)(0, np.arange(16), shape))
parts = [np.asarray(generate.sample_noise(0, np.arange(start, start + 4), shape)) for start in range(0, 16, 4)]
np.testing.assert_array_equal(whole, np.concatenate(parts))
samples = {(name, batch): run.sample(16, method="ddpm", steps=3, seed=0, batch_size=batch, raw=True)
           for name, run in (("one", one), ("eight", eight)) for batch in (4, 16)}
reference = samples[("one", 16)]
for key, value in samples.items():
    np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4, err_msg=str(key))
assert np.abs(reference[0] - reference[1]).max() > 0.1  # Different samples differ.
print("same samples")
"""


def test_samples_do_not_depend_on_batch_size_or_device_count(workdir):
    assert "same samples" in run_python(["-c", SAME_SAMPLES, workdir], devices=8).stdout


def test_checkpoints_of_the_older_layout_restore(workdir, tmp_path):
    """Checkpoints written before the cast copy was removed hold a `cast_params` field beside the state."""
    from diffax.checkpoint import Checkpointer
    from diffax.modes.train import restore_train_state
    from diffax.run import load_run

    config = load_run(workdir).config
    _, _, state = restore_train_state(config, workdir)
    old = Checkpointer(str(tmp_path), max_to_keep=None)
    old.save(4, {**{field: getattr(state, field) for field in ("step", "params", "ema_params", "opt_state", "key")},
                 "cast_params": {}}, None, config)
    old.wait()
    old.close()
    _, _, restored = restore_train_state(config, str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    assert not os.path.exists(tmp_path / "run.json")  # Read from the checkpoint's config instead.
    assert load_run(str(tmp_path)).sample(2, steps=2).shape == (2, 8, 8, 1)


def test_editing_a_loaded_run_keeps_what_it_should(workdir):
    from diffax.run import load_run

    run = load_run(workdir)
    images = run.sample(4, labels=[2], steps=2, seed=1)
    assert np.array_equal(run.img2img(images, 0.0, labels=[2]), images)  # Strength 0: nothing runs.
    assert run.img2img(images, 0.6, steps=5, labels=[2]).shape == images.shape
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 255  # White: repaint the right half.
    for settings in (dict(algorithm="repaint", jump_length=2, jump_n_sample=2), dict(method="dpmpp_2m")):
        painted = run.inpaint(images, mask, steps=4, labels=[2], **settings)
        np.testing.assert_array_equal(painted[:, :, :4], images[:, :, :4])
    denoised = run.denoise(images[0], 0.1, labels=[2])  # One image, posterior mean.
    assert denoised.shape == (1, 8, 8, 1) and denoised.dtype == np.uint8
    with pytest.raises(ValueError, match=r"images of shape \(4, 8, 9, 1\): expected \(N, 8, 8, 1\)"):
        run.denoise(np.zeros((4, 8, 9, 1), np.uint8), 0.1)
