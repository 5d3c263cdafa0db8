"""Sample-quality metrics against closed forms, a reference implementation (scipy's sqrtm, as pytorch-fid uses)
and their invariants."""

import numpy as np
import pytest
from scipy import linalg

from diffax.evaluation import metrics


def _random_covariance(rng, dim):
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_matches_the_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    # Diagonal covariances commute: FD = |mu_1 - mu_2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(metrics.frechet_distance(m1, np.diag(a), m2, np.diag(b)), expected, rtol=1e-10)
    # General covariances: the reference formula with scipy's matrix square root.
    s1, s2 = _random_covariance(rng, 8), _random_covariance(rng, 8)
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    reference = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    np.testing.assert_allclose(metrics.frechet_distance(m1, s1, m2, s2), reference, rtol=1e-8)
    assert abs(metrics.frechet_distance(m1, s1, m1, s1)) < 1e-9


def test_feature_statistics_in_batches_equal_numpy_on_the_whole():
    features = np.random.default_rng(1).normal(size=(250, 6)).astype(np.float32) * 3 + 100
    stats = metrics.FeatureStatistics(6)
    for start in range(0, 250, 64):
        stats.update(features[start:start + 64])
    assert stats.count == 250
    np.testing.assert_allclose(stats.mean(), features.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(features.astype(np.float64).T), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"features of shape \(3, 5\): expected \(B, 6\)"):
        stats.update(np.zeros((3, 5)))


def test_kid_is_about_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(2)
    real, same = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    shifted = rng.normal(size=(600, 16)) + 0.5
    kid_same, spread = metrics.kernel_inception_distance(real, same, num_subsets=20, subset_size=300)
    kid_shifted, _ = metrics.kernel_inception_distance(real, shifted, num_subsets=20, subset_size=300)
    assert abs(kid_same) < 3 * spread + 1e-3 and kid_shifted > 10 * max(spread, abs(kid_same))


def test_precision_recall_density_coverage():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(300, 4))
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    density, coverage = metrics.density_coverage(real, real.copy())
    assert coverage == 1.0 and density >= 1.0  # Each point is in its own ball, and in others'.
    collapsed = real[:10].repeat(30, 0) + 1e-6 * rng.normal(size=(300, 4))  # Mode collapse: precise, low recall.
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.2
    far = real + 10.0  # Nothing generated is near the data.
    assert metrics.precision_recall(real, far) == (0.0, 0.0) and metrics.density_coverage(real, far) == (0.0, 0.0)


def test_energy_distance_matches_the_gaussian_closed_form():
    """X ~ N(0, 1), Y ~ N(m, 1): E|X - Y| = E|N(-m, 2)|, E|X - X'| = 2 / sqrt(pi), with
    E|N(mu, s^2)| = s sqrt(2 / pi) exp(-mu^2 / (2 s^2)) + mu (1 - 2 Phi(-mu / s))."""
    from scipy import stats

    rng = np.random.default_rng(0)
    shift, scale = 0.7, np.sqrt(2.0)
    mean_abs = scale * np.sqrt(2 / np.pi) * np.exp(-shift**2 / (2 * scale**2)) + shift * (
        1 - 2 * stats.norm.cdf(-shift / scale))
    expected = 2 * mean_abs - 2 * 2 / np.sqrt(np.pi)
    # Four estimates at n = 4,000 (their spread, measured: 0.017 each): the mean is within 3.5 standard errors.
    estimates = [metrics.energy_distance(rng.normal(size=(4000, 1)), rng.normal(shift, 1.0, size=(4000, 1)))
                 for _ in range(4)]
    assert np.mean(estimates) == pytest.approx(expected, abs=0.03)
    same = [metrics.energy_distance(rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2))) for _ in range(5)]
    assert abs(np.mean(same)) < 0.01 < metrics.energy_distance(rng.normal(size=(2000, 2)),
                                                               rng.normal(0.3, 1, size=(2000, 2)))


def test_blocked_distance_metrics_equal_the_whole_matrix(monkeypatch):
    """Precision/recall, density/coverage and energy distance computed in blocks of 7 rows equal one block."""
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 3)), rng.normal(0.5, 1.0, size=(30, 3))
    whole = (metrics.precision_recall(real, fake), metrics.density_coverage(real, fake),
             metrics.energy_distance(real, fake))
    monkeypatch.setattr(metrics, "_BLOCK", 7)
    blocked = (metrics.precision_recall(real, fake), metrics.density_coverage(real, fake),
               metrics.energy_distance(real, fake))
    np.testing.assert_allclose(np.hstack([np.ravel(v) for v in blocked]),
                               np.hstack([np.ravel(v) for v in whole]), rtol=1e-12)
