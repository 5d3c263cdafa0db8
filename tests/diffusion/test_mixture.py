"""The exact Gaussian-mixture denoiser against Monte Carlo and Gaussian closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffax import mixture as M
from diffax import schedules as S


def test_log_prob_matches_scipy():
    mixture = M.toy_mixture_2d(num_modes=4)
    x = jax.random.normal(jax.random.key(0), (7, 2)) * 2
    expected = np.log(sum(0.25 * stats.multivariate_normal(np.asarray(m), 0.09 * np.eye(2)).pdf(np.asarray(x))
                          for m in mixture.means))
    np.testing.assert_allclose(mixture.log_prob(x), expected, rtol=1e-5)


def test_gaussian_posterior_mean_closed_form():
    """For N(mu, Sigma): E[x0 | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov, mu = a @ a.T / 5 + 0.1 * np.eye(5), rng.normal(size=5)
    gaussian = M.gaussian(mu, cov)
    schedule = S.VPCosine()
    x = jax.random.normal(jax.random.key(1), (3, 5))
    t = jnp.array([0.1, 0.5, 0.9])
    alpha, sigma = (np.asarray(c, np.float64) for c in schedule.alpha_sigma(t))
    for i in range(3):
        gain = alpha[i] * cov @ np.linalg.inv(alpha[i] ** 2 * cov + sigma[i] ** 2 * np.eye(5))
        expected = mu + gain @ (np.asarray(x[i], np.float64) - alpha[i] * mu)
        np.testing.assert_allclose(gaussian.denoise(x, t, schedule)[i], expected, rtol=1e-4, atol=1e-5)


def test_denoiser_is_the_monte_carlo_posterior_mean():
    """Draw (x0, x_t) pairs; among pairs whose x_t falls near a point, the mean x0 approaches E[x0 | x_t]."""
    mixture = M.toy_mixture_2d(num_modes=3, std=0.5)
    schedule = S.VPLinear()
    t = 0.3
    key0, key1 = jax.random.split(jax.random.key(2))
    x0 = mixture.sample(key0, 2_000_000)
    x_t = schedule.marginal(x0, jnp.full((x0.shape[0],), t), jax.random.normal(key1, x0.shape))
    point = jnp.array([[0.5, 0.3]])
    near = jnp.linalg.norm(x_t - point, axis=1) < 0.08
    assert int(near.sum()) > 2000
    monte_carlo = x0[near].mean(axis=0)
    np.testing.assert_allclose(mixture.denoise(point, t, schedule)[0], monte_carlo, atol=0.03)


def test_moments_and_samples():
    mixture = M.toy_mixture_2d()
    samples = mixture.sample(jax.random.key(3), 200_000)
    np.testing.assert_allclose(samples.mean(0), mixture.mean(), atol=0.02)
    np.testing.assert_allclose(jnp.cov(samples.T), mixture.covariance(), atol=0.03)
    assert float(mixture.covariance()[0, 0]) == pytest.approx(2.0**2 / 2 + 0.3**2, rel=1e-5)


def test_any_data_shape_and_exact_ends():
    gaussian = M.gaussian(np.zeros(12), np.eye(12) * 0.5)
    x = jax.random.normal(jax.random.key(4), (2, 2, 3, 2))
    assert gaussian.denoise(x, 0.5, S.VPLinear()).shape == x.shape
    np.testing.assert_allclose(gaussian.denoise(x, 0.0, S.VPLinear()), x, atol=1e-6)  # sigma = 0: identity
    np.testing.assert_allclose(gaussian.denoise(x, 1.0, S.RectifiedFlow()), 0.0, atol=1e-6)  # alpha = 0: mean
    with pytest.raises(ValueError, match="12"):
        gaussian.denoise(jnp.ones((2, 5)), 0.5, S.VPLinear())
    with pytest.raises(ValueError, match="positive definite"):
        M.gaussian(np.zeros(2), np.zeros((2, 2)))


def test_gaussian_conditional_in_two_dimensions():
    """(a, b) standard normal with correlation r: b | a ~ N(r a, 1 - r^2)."""
    r, a = 0.6, 1.5
    mean, covariance = M.gaussian_conditional([0.0, 0.0], [[1.0, r], [r, 1.0]], [0], [a, 0.0])
    np.testing.assert_allclose(mean, [r * a])
    np.testing.assert_allclose(covariance, [[1.0 - r**2]])
