"""A classifier run (config.task = 'classifier') through launch.py: the same engine trains it, eval reports held-out
accuracy, `load_run` gives labels and penultimate features, and the diffusion-only modes refuse it by name."""

import json

import jax
import numpy as np
import pytest

from train_helpers import launch


@pytest.fixture(scope="module")
def classifier_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("classifier_tiny")
    launch("configs/classifier_digits.py:tiny", workdir, "--config.train.ema_decays=(0.9, 0.99)")
    return workdir


def test_train_logs_accuracy_and_writes_no_sample_grid(classifier_run):
    lines = [json.loads(line) for line in open(classifier_run / "metrics.jsonl")]
    assert [line["step"] for line in lines] == [2, 4]
    assert {"loss", "accuracy", "grad_norm", "learning_rate"} <= set(lines[0])
    assert all(0.0 <= line["accuracy"] <= 1.0 and np.isfinite(line["loss"]) for line in lines)
    assert not (classifier_run / "samples").exists()


def test_eval_reports_accuracy_and_loss_of_every_parameter_set_on_the_whole_split(classifier_run):
    from diffax.modes.evaluate_classifier import accuracy_and_loss, heldout_examples
    from diffax.run import load_run

    launch("configs/classifier_digits.py:tiny", classifier_run, mode="eval")
    results = json.load(open(classifier_run / "eval_0000004.json"))
    assert results["examples"] == 297  # The digits test split, every example (not whole batches only).
    names = ("raw", "ema_0.9", "ema_0.99")
    assert set(results) == {"step", "examples"} | {f"eval/{m}/{n}" for m in ("accuracy", "loss") for n in names}
    run = load_run(str(classifier_run))
    images, labels = heldout_examples(run.config)
    expected = accuracy_and_loss(run.logits(images, ema=1), labels)
    np.testing.assert_allclose((results["eval/accuracy/ema_0.99"], results["eval/loss/ema_0.99"]), expected,
                               rtol=1e-5)


def test_accuracy_and_loss_match_their_definitions():
    from diffax.modes.evaluate_classifier import accuracy_and_loss

    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))  # Normalized: softmax gives these back.
    accuracy, loss = accuracy_and_loss(logits, np.array([0, 1]))
    assert accuracy == 0.5
    np.testing.assert_allclose(loss, -(np.log(0.7) + np.log(0.3)) / 2)


def test_load_run_features_are_batched_padded_and_equal_to_the_network(classifier_run):
    from diffax.run import ClassifierRun, load_run

    run = load_run(str(classifier_run))
    assert isinstance(run, ClassifierRun) and run.step == 4 and run.config.task == "classifier"
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 1), np.uint8)
    features = run.features(images, batch_size=4)  # Two batches, the last padded with one zero image.
    assert features.shape == (7, 16) and features.dtype == np.float32
    model_images = images.astype(np.float32) / 127.5 - 1.0
    direct = run.experiment.model.apply({"params": jax.device_get(run.params())}, model_images,
                                        return_features=True)
    np.testing.assert_allclose(features, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run.features(images, batch_size=8), features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(run.features(images, ema=False), features)  # Raw parameters differ from the EMA.
    labels = run.predict(images)
    assert labels.shape == (7,) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.argmax(run.logits(images), axis=1))


def test_diffusion_modes_refuse_a_classifier_run(classifier_run):
    from diffax.modes import check_mode
    from diffax.run_config import read_run_file

    result = launch("configs/classifier_digits.py:tiny", classifier_run, mode="sample", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {classifier_run} is a classifier run (config.task = 'classifier'); --mode sample needs a "
        f"diffusion run, a classifier run has --mode train, eval, stats, bench")
    config = read_run_file(str(classifier_run))[0]
    with pytest.raises(ValueError, match="is a classifier run .*; --mode edit needs a diffusion run"):
        check_mode("edit", config, str(classifier_run))
    for mode in ("train", "eval", "stats", "bench"):
        check_mode(mode, config, str(classifier_run))


@pytest.mark.parametrize("overrides,message", [
    ({"model.name": "unet"}, r"config.model.name = 'unet': expected a classifier \(\['classifier'\]\)"),
    ({"model.class_conditional": True}, r"config.model.class_conditional = True: expected False"),
    ({"task": "diffusion"}, r"config.model.name = 'classifier': expected a score network"),
    ({"task": "diffusion", "model.name": "autoencoder_kl_tiny"},
     r"config.model.name = 'autoencoder_kl_tiny': expected a score network .*not a classifier or an autoencoder"),
    ({"task": "segmentation"},
     r"config.task = 'segmentation': expected one of \['autoencoder', 'classifier', 'diffusion'\]"),
])
def test_classifier_configs_are_checked(overrides, message):
    from configs import classifier_digits
    from diffax.config_checks import validate_config

    config = classifier_digits.get_config("tiny")
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_a_classifier_needs_labelled_data():
    from configs import classifier_digits
    from diffax.experiment import build_experiment

    config = classifier_digits.get_config("tiny")
    config.data.name = "toy2d"
    with pytest.raises(ValueError, match="config.task = 'classifier' needs labelled data; data set 'toy2d'"):
        build_experiment(config)
