"""Classifier-free guidance with exact class-conditional and unconditional mixture denoisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import mixture as M
from diffax import sampling
from diffax import schedules as S

NUM_MODES = 4
DATA = M.toy_mixture_2d(num_modes=NUM_MODES)
SCHEDULE = S.VPLinear()
COMPONENTS = [M.GaussianMixture(DATA.weights[k:k + 1] / DATA.weights[k], DATA.means[k:k + 1],
                                DATA.eigenvalues[k:k + 1], DATA.eigenvectors[k:k + 1]) for k in range(NUM_MODES)]


def conditional_x0_fn(x, t, labels):
    """Exact E[x0 | x_t, label]; label NUM_MODES is the null class (the whole mixture)."""
    outputs = jnp.stack([c.denoise(x, t, SCHEDULE) for c in COMPONENTS] + [DATA.denoise(x, t, SCHEDULE)])
    return jnp.take_along_axis(outputs, labels[None, :, None], axis=0)[0]


X = jax.random.normal(jax.random.key(0), (16, 2))
T = jnp.full((16,), 0.4)
LABELS = jnp.arange(16) % NUM_MODES
NULL = jnp.full((16,), NUM_MODES)


def test_scale_zero_and_one_are_the_unconditional_and_conditional_denoisers():
    guided = lambda scale, **kw: sampling.classifier_free_guidance(  # noqa: E731
        conditional_x0_fn, LABELS, NULL, scale, SCHEDULE, **kw)(X, T)
    np.testing.assert_allclose(guided(0.0), DATA.denoise(X, T, SCHEDULE), atol=1e-6)
    np.testing.assert_allclose(guided(1.0), conditional_x0_fn(X, T, LABELS), atol=1e-6)
    np.testing.assert_allclose(guided(1.0, rescale=0.7), conditional_x0_fn(X, T, LABELS), atol=1e-6)
    uncond, cond = DATA.denoise(X, T, SCHEDULE), conditional_x0_fn(X, T, LABELS)
    np.testing.assert_allclose(guided(3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_interval_and_rescale():
    sigma_tilde = float(SCHEDULE.sigma(0.4) / SCHEDULE.alpha(0.4))
    outside = sampling.classifier_free_guidance(conditional_x0_fn, LABELS, NULL, 4.0, SCHEDULE,
                                                interval=(sigma_tilde * 2, sigma_tilde * 4))(X, T)
    np.testing.assert_allclose(outside, conditional_x0_fn(X, T, LABELS), atol=1e-6)
    inside = sampling.classifier_free_guidance(conditional_x0_fn, LABELS, NULL, 4.0, SCHEDULE,
                                               interval=(sigma_tilde / 2, sigma_tilde * 2))(X, T)
    plain = sampling.classifier_free_guidance(conditional_x0_fn, LABELS, NULL, 4.0, SCHEDULE)(X, T)
    np.testing.assert_allclose(inside, plain, atol=1e-6)
    rescaled = sampling.classifier_free_guidance(conditional_x0_fn, LABELS, NULL, 4.0, SCHEDULE, rescale=1.0)(X, T)
    np.testing.assert_allclose(jnp.std(rescaled, axis=1), jnp.std(conditional_x0_fn(X, T, LABELS), axis=1),
                               rtol=1e-5)


def test_guided_sampling():
    """Scale 1 samples the class's own Gaussian; scale 3 extrapolates away from the unconditional prediction,
    pushing samples past the class mean, away from the other classes (the known effect of strong guidance)."""
    grid = S.time_grid(SCHEDULE, 40, "karras")
    labels = jnp.zeros((4000,), jnp.int32)
    noise = jax.random.normal(jax.random.key(1), (4000, 2))

    def draw(scale):
        x0_fn = sampling.classifier_free_guidance(conditional_x0_fn, labels, jnp.full_like(labels, NUM_MODES),
                                                  scale, SCHEDULE)
        return jax.jit(lambda n: sampling.sample(x0_fn, SCHEDULE, n, grid, "dpmpp_2m"))(noise)

    conditional = draw(1.0)
    np.testing.assert_allclose(conditional.mean(0), DATA.means[0], atol=0.03)
    np.testing.assert_allclose(conditional.std(0), [0.3, 0.3], rtol=0.05)
    direction = DATA.means[0] / jnp.linalg.norm(DATA.means[0])
    assert float(draw(3.0).mean(0) @ direction) > float(conditional.mean(0) @ direction) + 0.05


@pytest.mark.parametrize("method", ["unipc", "dpmpp_3m_sde", "dpmpp_2s_ancestral"])
def test_new_samplers_run_guided_on_any_data_shape(method):
    """Issue 16's samplers in the one driver, under guidance, on (B, H, W, C) data, with per-example keys."""
    guided = sampling.classifier_free_guidance(
        lambda x, t, labels: conditional_x0_fn(x.reshape(-1, 2), t, labels).reshape(x.shape), LABELS, NULL, 2.0,
        SCHEDULE)
    noise = jax.random.normal(jax.random.key(5), (16, 1, 2, 1))
    grid = S.time_grid(SCHEDULE, 16, "karras")
    keys = jax.random.split(jax.random.key(6), 16)
    samples = jax.jit(lambda n, k: sampling.sample(guided, SCHEDULE, n, grid, method, k))(noise, keys)
    assert samples.shape == noise.shape and bool(jnp.all(jnp.isfinite(samples)))
    # Guided towards each label's component: most samples land nearer their own mode than any other.
    nearest = jnp.argmin(jnp.linalg.norm(samples.reshape(16, 1, 2) - DATA.means[None], axis=-1), axis=1)
    assert float(jnp.mean(nearest == LABELS)) >= 0.75
