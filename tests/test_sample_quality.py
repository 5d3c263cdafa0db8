"""Sample-quality scoring (`diffax.modes.sample_quality`) against exact truths: samples of the true mixture score
like fresh data, shifted ones worse; FD against stored statistics equals FD against the features themselves."""

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
