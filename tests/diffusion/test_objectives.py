"""Parameterizations, weightings, time samplers and the loss against closed forms and exact identities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import mixture as M
from diffax import objectives as O
from diffax import schedules as S

SCHEDULES = [S.get_schedule(name) for name in S.SCHEDULES] + [S.Shifted(S.RectifiedFlow(), -2.0)]
X0 = jax.random.normal(jax.random.key(0), (6, 3, 2, 2))
EPS = jax.random.normal(jax.random.key(1), X0.shape)
T = jnp.array([0.02, 0.1, 0.3, 0.5, 0.8, 0.97])


@pytest.mark.parametrize("prediction", O.PREDICTIONS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_every_prediction_round_trips(schedule, prediction):
    x_t = schedule.marginal(X0, T, EPS)
    output = O.from_x0_eps(prediction, X0, EPS, T, schedule)
    x0_hat, eps_hat = O.to_x0_eps(prediction, output, x_t, T, schedule)
    scale = jnp.abs(x_t).max() + 1
    np.testing.assert_allclose(x0_hat, X0, atol=2e-5 * scale)
    np.testing.assert_allclose(eps_hat, EPS, atol=2e-5 * scale)


def test_published_special_cases():
    flow = S.RectifiedFlow()
    np.testing.assert_allclose(O.from_x0_eps("velocity", X0, EPS, T, flow), EPS - X0, atol=1e-6)
    vp = S.VPCosine()
    alpha, sigma = (c.reshape(-1, 1, 1, 1) for c in vp.alpha_sigma(T))
    np.testing.assert_allclose(O.from_x0_eps("v", X0, EPS, T, vp), alpha * EPS - sigma * X0, atol=1e-6)
    c_skip, c_out, c_in, c_noise = O.edm_preconditioning(jnp.array(2.0), 0.5)
    np.testing.assert_allclose([c_skip, c_out, c_in, c_noise],
                               [0.25 / 4.25, 1.0 / math.sqrt(4.25), 1 / math.sqrt(4.25), math.log(2.0) / 4], rtol=1e-6)


@pytest.mark.parametrize("schedule", [S.VPLinear(), S.VE(), S.RectifiedFlow()], ids=repr)
def test_score_is_the_gradient_of_the_exact_log_density(schedule):
    mixture = M.toy_mixture_2d(num_modes=3)
    x = 2.0 * jax.random.normal(jax.random.key(2), (5, 2))
    t = jnp.array([0.05, 0.2, 0.5, 0.7, 0.9])
    autodiff = jax.grad(lambda x: mixture.log_prob(x, t, schedule).sum())(x)
    tweedie = O.score_from_x0(mixture.denoise(x, t, schedule), x, t, schedule)
    np.testing.assert_allclose(tweedie, autodiff, rtol=1e-4, atol=1e-4)


def _oracle_net(prediction, schedule, x0, noise_conditioning="time"):
    """A network that knows x0 and reads x_t and t back from its inputs: the perfect predictor."""

    def net_fn(x_in, noise_level, cond):
        t = noise_level if noise_conditioning == "time" else schedule.t_from_log_snr(noise_level)
        alpha, sigma = (c.reshape((-1,) + (1,) * (x0.ndim - 1)) for c in schedule.alpha_sigma(t))
        x_t = x_in
        if prediction == "edm":
            _, _, c_in, _ = O.edm_preconditioning(sigma / alpha)
            x_t = x_in * alpha / c_in
        eps = (x_t - alpha * x0) / sigma
        return O.from_x0_eps(prediction, x0, eps, t, schedule)

    return net_fn


@pytest.mark.parametrize("time_sampling", sorted(O.TIME_SAMPLERS))
@pytest.mark.parametrize("prediction", O.PREDICTIONS)
def test_perfect_network_has_zero_loss(prediction, time_sampling):
    schedule = S.VPCosine()
    for weighting in ("eps", "min_snr", "edm"):
        loss, metrics = O.denoising_loss(_oracle_net(prediction, schedule, X0), X0, jax.random.key(3),
                                         schedule=schedule, prediction=prediction, weighting=weighting,
                                         time_sampling=time_sampling)
        assert float(loss) < 1e-6 and float(metrics["x0_mse"]) < 1e-6


def _loss_terms(prediction, schedule):
    """A random (imperfect) output: per-example MSEs in the native space and the eps-MSE."""
    x_t = schedule.marginal(X0, T, EPS)
    output = jax.random.normal(jax.random.key(4), X0.shape)
    x0_hat, eps_hat = O.to_x0_eps(prediction, output, x_t, T, schedule)
    target = O.from_x0_eps(prediction, X0, EPS, T, schedule)
    mse = lambda a, b: jnp.mean((a - b) ** 2, axis=(1, 2, 3))  # noqa: E731
    return mse(output, target), mse(eps_hat, EPS), mse(x0_hat, X0)


@pytest.mark.parametrize("prediction,weighting", [("x0", "x0"), ("v", "v"), ("edm", "edm")])
def test_weightings_are_the_native_losses(prediction, weighting):
    """x0-MSE = eps-MSE / SNR, v-MSE = (1 + 1/SNR) eps-MSE (VP), EDM: unit weight on the F-MSE."""
    schedule = S.VPLinear() if prediction == "v" else S.EDM()
    native, eps_mse, _ = _loss_terms(prediction, schedule)
    np.testing.assert_allclose(O.WEIGHTINGS[weighting](schedule, T) * eps_mse, native, rtol=1e-4)


def test_min_snr_weighting():
    schedule = S.VPLinear()
    snr = jnp.exp(schedule.log_snr(T))
    weight = O.min_snr_weight(schedule, T, gamma=5.0)
    np.testing.assert_allclose(weight, jnp.where(snr < 5, 1.0, 5.0 / snr), rtol=1e-5)


def test_elbo_weighting_closed_form():
    """VP linear: -d lambda/dt = beta(t) / sigma(t)^2 (Kingma et al. 2021)."""
    schedule = S.VPLinear()
    beta = 0.1 + T * (20.0 - 0.1)
    np.testing.assert_allclose(O.elbo_weight(schedule, T), 0.5 * beta / schedule.sigma(T) ** 2, rtol=1e-4)
    np.testing.assert_allclose(O.sigmoid_weight(schedule, T, bias=2.0),
                               O.elbo_weight(schedule, T) * jax.nn.sigmoid(2.0 - schedule.log_snr(T)), rtol=1e-5)


def test_time_samplers():
    schedule = S.EDM()
    key = jax.random.key(5)
    t = O.log_normal_time(key, 100_000, schedule, mean=-1.2, std=1.2)
    log_sigma = jnp.log(schedule.sigma(t))
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)
    t = O.logit_normal_time(key, 100_000, schedule)
    assert float(jax.scipy.special.logit(t).std()) == pytest.approx(1.0, abs=0.02)
    t = O.discrete_time(key, 10_000, schedule, num_steps=1000)
    np.testing.assert_allclose(t * 1000, jnp.round(t * 1000), atol=1e-3)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    t = O.uniform_time(key, 1000, schedule, antithetic=True)
    np.testing.assert_allclose(jnp.sort(t)[::100], jnp.linspace(0, 1, 11)[:-1], atol=0.1)


def test_loss_jits_and_differentiates():
    schedule = S.VPLinear()

    def loss(scale):
        return O.denoising_loss(lambda x, n, c: scale * x, X0, jax.random.key(6), schedule=schedule)[0]

    value, grad = jax.jit(jax.value_and_grad(loss))(0.5)
    assert jnp.isfinite(value) and jnp.isfinite(grad)


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        O.denoising_loss(lambda x, n, c: x, X0, jax.random.key(0), schedule=S.VPLinear(), weighting="snr")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        O.to_x0_eps("score", X0, X0, T, S.VPLinear())
