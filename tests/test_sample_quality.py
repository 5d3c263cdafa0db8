"""Sample-quality scoring (`diffax.modes.sample_quality`) against exact truths: samples of the true mixture score
like fresh data, shifted ones worse; FD against stored statistics equals FD against the features themselves."""

import os

import jax
import numpy as np
import pytest

from diffax import mixture
from diffax.modes import sample_quality


def test_exact_mixture_samples_score_like_fresh_data_and_shifted_ones_worse():
    truth = mixture.toy_mixture_2d(8)
    exact = np.asarray(truth.sample(jax.random.PRNGKey(7), 2000))
    scores = sample_quality.mixture_scores(truth, exact, seed=0)
    # Both are 2,000 draws of the same distribution: log-densities agree within ~3 standard errors (std ~1.3 per
    # point, so 0.09), energy distances are sampling noise around 0 (spread ~0.002 at n = 2,000, measured).
    assert scores["log_density"] == pytest.approx(scores["log_density_data"], abs=0.12)
    assert abs(scores["energy_distance"]) < 0.01 and abs(scores["energy_distance_data"]) < 0.01
    shifted = sample_quality.mixture_scores(truth, exact + 0.3, seed=0)
    assert shifted["energy_distance"] > 0.03 and shifted["log_density"] < scores["log_density"] - 0.3


def test_frechet_distance_to_reference_statistics_equals_the_distance_to_the_features(tmp_path):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(500, 6)), rng.normal(0.2, 1.1, size=(400, 6))
    path = str(tmp_path / "reference.npz")
    np.savez(path, mu=real.mean(0), sigma=np.cov(real, rowvar=False))
    scores = sample_quality.feature_scores("fcd", real, fake, seed=0)
    assert sample_quality.reference_distance(path, fake) == pytest.approx(scores["fcd"], rel=1e-9)
    assert set(scores) == {"fcd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    np.savez(str(tmp_path / "bad.npz"), mu=real.mean(0))
    with pytest.raises(ValueError, match="lack \\['sigma'\\]"):
        sample_quality.reference_distance(str(tmp_path / "bad.npz"), fake)
    with pytest.raises(ValueError, match="have 3 dims|features have 3"):
        sample_quality.reference_distance(path, fake[:, :3])


def _classifier_eval_config(workdir, classifier, **eval_changes):
    from diffax.run_config import read_run_file

    config = read_run_file(workdir)[0]
    config.eval.update(features=f"classifier:{classifier}", loss=False, bits_per_dim=False, **eval_changes)
    config.sample.num_steps = 10
    return config


def test_stats_mode_writes_the_held_out_features_mean_and_covariance(tiny_run, trained_digits_classifier, tmp_path):
    """--mode stats equals the mean and covariance of the classifier's features of every held-out digit, and an eval
    against those statistics reports the Fréchet distance to them beside the one to the held-out features."""
    import json

    from diffax.modes import evaluate, stats
    from diffax.modes.evaluate_classifier import heldout_examples
    from diffax.run import load_run

    config = _classifier_eval_config(tiny_run, trained_digits_classifier, stats_split="test", num_samples=32)
    path = stats.run(config, str(tmp_path))
    assert path.endswith("stats/digits_test_classifier-" + os.path.basename(trained_digits_classifier) + ".npz")
    reference = np.load(path)
    images, _ = heldout_examples(config)
    features = load_run(trained_digits_classifier).features(images)
    assert int(reference["num_examples"]) == len(images) == 297
    np.testing.assert_allclose(reference["mu"], features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference["sigma"], np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)

    config.eval.reference_stats = path
    evaluate.run(config, tiny_run)
    name = "0000004_dpmpp_2m_10-uniform_g2_ema0.9_seed0_n32.json"
    record = json.load(open(os.path.join(tiny_run, "eval", name)))
    assert record["num_real"] == 32 and record["features"] == f"classifier:{trained_digits_classifier}"
    assert set(record["scores"]) == {"fcd", "fcd_reference", "kid", "kid_std", "precision", "recall", "density",
                                     "coverage"}


def test_a_trained_digits_run_scores_far_better_than_an_untrained_one(tiny_run, digits_cpu_run,
                                                                      trained_digits_classifier):
    from diffax.modes import evaluate

    fcd = {}
    for name, workdir in (("untrained", tiny_run), ("trained", digits_cpu_run)):
        config = _classifier_eval_config(workdir, trained_digits_classifier, num_samples=128)
        results = evaluate.run(config, workdir)
        fcd[name] = next(value for key, value in results.items() if key.startswith("eval/fcd/"))
    assert fcd["trained"] * 3 < fcd["untrained"], fcd


def test_real_images_are_read_in_batches_that_divide_the_split():
    divisor_batch = sample_quality._divisor_batch
    assert divisor_batch(297, 256, 1) == 99  # Every held-out digit counts.
    assert divisor_batch(50_000, 250, 2) == 250 and divisor_batch(1000, 256, 1) == 250
    assert divisor_batch(10_007, 256, 1) == 256  # A prime: no divisor near the batch, the last partial one dropped.
    assert divisor_batch(10, 256, 4) == 8  # A multiple of the process count.
