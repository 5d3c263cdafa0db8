"""Probability-flow ODE likelihood against the exact Gaussian log-density."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import likelihood as L
from diffax import mixture as M
from diffax import schedules as S

DIM = 6


@pytest.fixture(scope="module")
def gaussian_data():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(DIM, DIM))
    data = M.gaussian(rng.normal(size=DIM) * 0.5, a @ a.T / DIM + 0.3 * np.eye(DIM))
    return data, data.sample(jax.random.key(0), 256)


@pytest.mark.parametrize("schedule", [S.VPLinear(), S.RectifiedFlow()], ids=repr)
def test_exact_divergence_recovers_gaussian_log_density(gaussian_data, schedule):
    data, x = gaussian_data
    log_prob, latent, steps = jax.jit(lambda x: L.ode_log_likelihood(data.x0_fn(schedule), schedule, x,
                                                                      divergence="exact"))(x)
    error_per_dim = jnp.abs(log_prob - data.log_prob(x)) / DIM
    assert float(error_per_dim.max()) < 0.01, float(error_per_dim.max())
    assert latent.shape == x.shape and int(steps) > 0


def test_hutchinson_agrees_within_its_error_bars(gaussian_data):
    data, x = gaussian_data
    schedule = S.VPCosine()
    exact = data.log_prob(x)
    for probe in ("rademacher", "gaussian"):
        log_prob, _, _ = jax.jit(lambda x, k: L.ode_log_likelihood(data.x0_fn(schedule), schedule, x, k,
                                                                    probe=probe))(x, jax.random.key(1))
        error = log_prob - exact
        standard_error = float(error.std()) / math.sqrt(x.shape[0])
        assert abs(float(error.mean())) < 4 * standard_error + 0.01 * DIM, (float(error.mean()), standard_error)
        assert float(error.std()) > 0  # a random estimate, not the exact trace


@jax.custom_vjp
def _identity_with_custom_vjp(x):  # As cuDNN's fused attention: a reverse-mode rule only.
    return x


_identity_with_custom_vjp.defvjp(lambda x: (x, None), lambda _, cotangent: (cotangent,))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_networks_with_custom_vjp_layers_get_the_same_likelihood(gaussian_data, divergence):
    data, x = gaussian_data
    schedule = S.VPLinear()
    plain = data.x0_fn(schedule)
    wrapped = lambda x, t: _identity_with_custom_vjp(plain(x, t))  # noqa: E731
    log_probs = [jax.jit(lambda x: L.ode_log_likelihood(fn, schedule, x, jax.random.key(4),
                                                         divergence=divergence)[0])(x[:32]) for fn in (plain, wrapped)]
    np.testing.assert_allclose(log_probs[1], log_probs[0], rtol=1e-5)


def test_bits_per_dim_of_uniform_density_is_eight():
    """Uniform on [-1, 1]^D has log p = -D log 2: exactly log2(256) = 8 bits/dim after dequantization."""
    dim = 3072
    assert float(L.bits_per_dim(jnp.array(-dim * math.log(2.0)), dim)) == pytest.approx(8.0)


def test_dequantize_stays_in_each_bin():
    images = jnp.array([[0, 1, 254, 255]], jnp.uint8)
    x = L.dequantize(images, jax.random.key(2))
    bins = jnp.floor((x + 1.0) / 2.0 * 256)
    np.testing.assert_array_equal(bins, images)


def test_image_bits_per_dim_runs_on_images():
    data = M.gaussian(np.zeros(12), np.eye(12) * 0.3)
    images = jax.random.randint(jax.random.key(3), (2, 2, 2, 3), 0, 256).astype(jnp.uint8)
    bpd = L.image_bits_per_dim(data.x0_fn(S.VPLinear()), S.VPLinear(), images, jax.random.key(4))
    assert bpd.shape == (2,) and bool(jnp.all(jnp.isfinite(bpd)))


def test_a_solve_that_runs_out_of_steps_gives_nan_not_an_error(gaussian_data):
    data, x = gaussian_data
    solve = jax.jit(lambda x, max_steps: L.ode_log_likelihood(
        data.x0_fn(S.VPLinear()), S.VPLinear(), x[:4], divergence="exact", max_steps=max_steps), static_argnums=1)
    short, _, steps = solve(x, 2)
    assert int(steps) == 2 and bool(jnp.all(jnp.isnan(short)))
    converged, _, _ = solve(x, 4096)
    assert bool(jnp.all(jnp.isfinite(converged)))


def test_bad_options_are_named(gaussian_data):
    data, x = gaussian_data
    with pytest.raises(ValueError, match="divergence must be"):
        L.ode_log_likelihood(data.x0_fn(S.VPLinear()), S.VPLinear(), x, divergence="trace")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        L.ode_log_likelihood(data.x0_fn(S.VPLinear()), S.VPLinear(), x)


def test_discrete_schedule_likelihood_is_converged_in_the_solver_tolerance(gaussian_data):
    """On DDPM's discrete schedule (a C^1 interpolant of the 1,000-step table) the likelihood at the default
    tolerance agrees with the same computation at ten times the accuracy, and with the exact density (up to the
    prior's mismatch at t = 1, as on the continuous schedule). The kinks of the former linear interpolant made the
    adaptive solver take 66 steps at the default tolerance; the smooth one takes 9, as VPLinear does."""
    data, x = gaussian_data
    schedule = S.VPDiscrete()
    x = x[:64]

    def log_likelihood(tolerance):
        return jax.jit(lambda x: L.ode_log_likelihood(data.x0_fn(schedule), schedule, x, divergence="exact",
                                                      rtol=tolerance, atol=tolerance))(x)

    default, _, steps = log_likelihood(1e-5)
    tight, _, tight_steps = log_likelihood(1e-6)
    assert float(jnp.abs(default - tight).max()) / DIM < 1e-4, float(jnp.abs(default - tight).max())
    assert float(jnp.abs(tight - data.log_prob(x)).max()) / DIM < 0.01
    assert int(steps) < 20, int(steps)  # no step-size collapse at kinks
    assert int(tight_steps) > int(steps)  # the tighter run did take smaller steps
