"""What the network learns: parameterizations, their exact conversions, time sampling, weightings, the loss.

Given x_t = alpha x0 + sigma eps, a network predicts one of
    eps        the noise (Ho et al. 2020)
    x0         the clean data
    v          alpha eps - sigma x0 (Salimans & Ho 2022); for VP schedules the velocity of the angle
    velocity   dx_t/dt = alpha' x0 + sigma' eps (flow matching: eps - x0 for rectified flow)
    edm        F of EDM's preconditioning (Karras et al. 2022, Table 1): x0 = c_skip y + c_out F(c_in y, c_noise),
               with y = x_t / alpha and sigma~ = sigma / alpha so that it holds for any schedule
Every one converts exactly to (x0_hat, eps_hat) given (x_t, t, schedule), and back.

Weightings are expressed as multipliers of the per-example eps-MSE ||eps_hat - eps||^2 / D (Kingma & Gao 2023
write every diffusion loss this way). With lambda = log-SNR and SNR = exp(lambda):
    x0-MSE = eps-MSE / SNR,  v-MSE = (1 + 1/SNR) eps-MSE (VP),  EDM's D-MSE = sigma~^2 eps-MSE.
The loss in eps space is finite wherever sigma > 0, for any prediction type, including alpha = 0.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffax.schedules import Schedule, broadcast_to_data

Array = jax.Array
PREDICTIONS = ("eps", "x0", "v", "velocity", "edm")
NOISE_CONDITIONINGS = ("time", "log_snr", "edm")


def _coefficients(x_t: Array, t: Array, schedule: Schedule):
    """alpha, sigma, d alpha/dt, d sigma/dt at t (scalar or (batch,)), broadcast against x_t."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    return tuple(broadcast_to_data(c, x_t) for c in schedule.derivatives(t))


def edm_preconditioning(sigma_tilde: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level sigma~ (Karras et al. 2022, Table 1)."""
    total = sigma_tilde**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma_tilde * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = 0.25 * jnp.log(sigma_tilde)
    return c_skip, c_out, c_in, c_noise


def to_x0_eps(prediction: str, output: Array, x_t: Array, t: Array, schedule: Schedule,
              sigma_data: float = 0.5) -> tuple[Array, Array]:
    """Converts a network output of the given prediction type to (x0_hat, eps_hat); shapes of x_t."""
    alpha, sigma, dalpha, dsigma = _coefficients(x_t, t, schedule)
    if prediction == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction == "x0":
        return output, (x_t - alpha * output) / sigma
    if prediction == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x_t - sigma * output) / norm, (sigma * x_t + alpha * output) / norm
    if prediction == "velocity":
        det = alpha * dsigma - sigma * dalpha
        return (dsigma * x_t - sigma * output) / det, (alpha * output - dalpha * x_t) / det
    if prediction == "edm":
        sigma_tilde = sigma / alpha
        c_skip, c_out, _, _ = edm_preconditioning(sigma_tilde, sigma_data)
        x0_hat = c_skip * x_t / alpha + c_out * output
        return x0_hat, (x_t / alpha - x0_hat) / sigma_tilde
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def from_x0_eps(prediction: str, x0: Array, eps: Array, t: Array, schedule: Schedule,
                sigma_data: float = 0.5) -> Array:
    """The output a perfect network of this prediction type gives for x_t = alpha x0 + sigma eps."""
    alpha, sigma, dalpha, dsigma = _coefficients(x0, t, schedule)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "velocity":
        return dalpha * x0 + dsigma * eps
    if prediction == "edm":
        sigma_tilde = sigma / alpha
        c_skip, c_out, _, _ = edm_preconditioning(sigma_tilde, sigma_data)
        return ((1.0 - c_skip) * x0 - c_skip * sigma_tilde * eps) / c_out
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def score_from_x0(x0_hat: Array, x_t: Array, t: Array, schedule: Schedule) -> Array:
    """grad_x log p_t(x_t) = -(x_t - alpha x0_hat) / sigma^2 (Tweedie's formula, inverted)."""
    alpha, sigma, _, _ = _coefficients(x_t, t, schedule)
    return (alpha * x0_hat - x_t) / sigma**2


def probability_flow_velocity(x0_hat: Array, x_t: Array, t: Array, schedule: Schedule) -> Array:
    """dx_t/dt of the probability-flow ODE: alpha'(t) x0_hat + sigma'(t) eps_hat (Song et al. 2021, in the
    parameterization-free form: the forward process's time derivative at the posterior means of x0 and eps)."""
    alpha, sigma, dalpha, dsigma = _coefficients(x_t, t, schedule)
    return dalpha * x0_hat + dsigma * (x_t - alpha * x0_hat) / sigma


def network_inputs(prediction: str, x_t: Array, t: Array, schedule: Schedule, noise_conditioning: str = "time",
                   sigma_data: float = 0.5) -> tuple[Array, Array]:
    """What the network sees: (x_in, noise_level of shape (batch,)).

    x_in is x_t, except for EDM preconditioning where it is c_in x_t / alpha. noise_level is t ("time"),
    the log-SNR ("log_snr"), or EDM's c_noise = log(sigma~) / 4 ("edm")."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
    alpha, sigma = schedule.alpha_sigma(t)
    x_in = x_t
    if prediction == "edm":
        _, _, c_in, _ = edm_preconditioning(sigma / alpha, sigma_data)
        x_in = broadcast_to_data(c_in / alpha, x_t) * x_t
    if noise_conditioning == "time":
        return x_in, t
    if noise_conditioning == "log_snr":
        return x_in, schedule.log_snr(t)
    if noise_conditioning == "edm":
        return x_in, 0.25 * jnp.log(sigma / alpha)
    raise ValueError(f"unknown noise_conditioning {noise_conditioning!r}; expected one of {NOISE_CONDITIONINGS}")


NetFn = Callable[[Array, Array, Any], Array]


def make_x0_fn(net_fn: NetFn, schedule: Schedule, prediction: str, noise_conditioning: str = "time",
               sigma_data: float = 0.5) -> Callable[..., Array]:
    """Wraps net_fn(x_in, noise_level, cond) -> output into the samplers' denoiser x0_fn(x_t, t, cond=None)."""

    def x0_fn(x_t: Array, t: Array, cond: Any = None) -> Array:
        x_in, noise_level = network_inputs(prediction, x_t, t, schedule, noise_conditioning, sigma_data)
        output = net_fn(x_in, noise_level, cond)
        return to_x0_eps(prediction, output.astype(x_t.dtype), x_t, t, schedule, sigma_data)[0]

    return x0_fn


# ----------------------------------------------------------------------------------------------------------------
# Time sampling: key, batch size, schedule -> t of shape (batch,).

def uniform_time(key: Array, batch: int, schedule: Schedule, *, t_min: float = 1e-5, t_max: float = 1.0,
                 antithetic: bool = False) -> Array:
    """t ~ U[t_min, t_max]; antithetic=True uses VDM's low-discrepancy sampler (one shared offset, stratified)."""
    if antithetic:
        u = jnp.mod(jax.random.uniform(key, ()) + jnp.arange(batch) / batch, 1.0)
    else:
        u = jax.random.uniform(key, (batch,))
    return t_min + (t_max - t_min) * u


def discrete_time(key: Array, batch: int, schedule: Schedule, *, num_steps: int = 1000) -> Array:
    """t = i / num_steps with i uniform on {1, ..., num_steps} (DDPM's training distribution)."""
    return jax.random.randint(key, (batch,), 1, num_steps + 1).astype(jnp.float32) / num_steps


def log_normal_time(key: Array, batch: int, schedule: Schedule, *, mean: float = -1.2, std: float = 1.2) -> Array:
    """EDM's ln(sigma~) ~ N(mean, std^2), mapped to t through the schedule's inverse log-SNR."""
    log_sigma = mean + std * jax.random.normal(key, (batch,))
    return schedule.t_from_log_snr(-2.0 * log_sigma)


def logit_normal_time(key: Array, batch: int, schedule: Schedule, *, mean: float = 0.0, std: float = 1.0) -> Array:
    """t = sigmoid(n), n ~ N(mean, std^2) (Esser et al. 2024, SD3)."""
    return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,)))


TIME_SAMPLERS = {"uniform": uniform_time, "discrete": discrete_time, "log_normal": log_normal_time,
                 "logit_normal": logit_normal_time}


# ----------------------------------------------------------------------------------------------------------------
# Weightings: schedule, t -> multiplier of the eps-MSE, shape of t.

def _log_snr_and_rate(schedule: Schedule, t: Array) -> tuple[Array, Array]:
    """(lambda(t), -d lambda/dt), the second positive."""
    log_snr, dlog_snr = jax.jvp(schedule.log_snr, (t,), (jnp.ones_like(t),))
    return log_snr, -dlog_snr


def eps_weight(schedule, t):
    """Uniform eps-MSE: DDPM's L_simple."""
    return jnp.ones_like(t)


def x0_weight(schedule, t):
    """Plain x0-MSE: 1 / SNR."""
    return jnp.exp(-schedule.log_snr(t))


def v_weight(schedule, t):
    """Plain v-MSE for VP schedules: 1 + 1 / SNR."""
    return 1.0 + jnp.exp(-schedule.log_snr(t))


def min_snr_weight(schedule, t, *, gamma: float = 5.0):
    """Min-SNR-gamma (Hang et al. 2023): x0-MSE weighted by min(SNR, gamma), i.e. min(SNR, gamma) / SNR."""
    snr = jnp.exp(schedule.log_snr(t))
    return jnp.minimum(snr, gamma) / snr


def edm_weight(schedule, t, *, sigma_data: float = 0.5):
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the D-MSE:
    (sigma~^2 + sigma_data^2) / sigma_data^2 on the eps-MSE, so that the F-MSE has unit weight."""
    sigma_tilde_sq = jnp.exp(-schedule.log_snr(t))
    return (sigma_tilde_sq + sigma_data**2) / sigma_data**2


def elbo_weight(schedule, t):
    """Continuous-time ELBO (Kingma et al. 2021, eq. 17): -d lambda/dt / 2 per unit of eps-MSE summed over dims.
    With uniform t, the mean loss times the data dimension is the diffusion term of -ELBO in nats."""
    return 0.5 * _log_snr_and_rate(schedule, t)[1]


def sigmoid_weight(schedule, t, *, bias: float = 2.0):
    """Kingma & Gao 2023: the ELBO integrand weighted by w(lambda) = sigmoid(bias - lambda)."""
    log_snr, rate = _log_snr_and_rate(schedule, t)
    return 0.5 * rate * jax.nn.sigmoid(bias - log_snr)


WEIGHTINGS = {"eps": eps_weight, "x0": x0_weight, "v": v_weight, "min_snr": min_snr_weight, "edm": edm_weight,
              "elbo": elbo_weight, "sigmoid": sigmoid_weight}


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(registry)}")
    return registry[name]


def denoising_loss(net_fn: NetFn, x0: Array, key: Array, *, schedule: Schedule, prediction: str = "eps",
                   weighting: str = "eps", time_sampling: str = "uniform", noise_conditioning: str = "time",
                   sigma_data: float = 0.5, cond: Any = None, weighting_kwargs: dict | None = None,
                   time_kwargs: dict | None = None) -> tuple[Array, dict[str, Array]]:
    """The weighted denoising loss E_t,eps [ w(t) ||eps_hat - eps||^2 / D ] for a batch x0 of shape (B, *data).

    net_fn(x_in, noise_level, cond) -> output is the network with its parameters (and dropout key) closed over.
    Returns (loss, metrics) with metrics {"loss", "eps_mse", "x0_mse"} averaged over the batch.
    """
    time_key, noise_key = jax.random.split(key)
    sample_time = _lookup(TIME_SAMPLERS, time_sampling, "time_sampling")
    weight = _lookup(WEIGHTINGS, weighting, "weighting")
    t = sample_time(time_key, x0.shape[0], schedule, **(time_kwargs or {}))
    eps = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = schedule.marginal(x0, t, eps)
    x_in, noise_level = network_inputs(prediction, x_t, t, schedule, noise_conditioning, sigma_data)
    output = net_fn(x_in, noise_level, cond).astype(jnp.float32)
    x0_hat, eps_hat = to_x0_eps(prediction, output, x_t, t, schedule, sigma_data)
    data_axes = tuple(range(1, x0.ndim))
    eps_mse = jnp.mean((eps_hat - eps) ** 2, axis=data_axes)
    loss = jnp.mean(weight(schedule, t, **(weighting_kwargs or {})) * eps_mse)
    metrics = {"loss": loss, "eps_mse": jnp.mean(eps_mse),
               "x0_mse": jnp.mean(jnp.mean((x0_hat - x0) ** 2, axis=data_axes))}
    return loss, metrics
