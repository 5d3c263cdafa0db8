"""Log-likelihood under the probability-flow ODE, and bits per dimension (Song et al. 2021, Appendix D.2).

With dx/dt = v(x, t) the probability-flow ODE, the instantaneous change of variables (Chen et al. 2018) gives

    log p_{t_min}(x) = log p_{t_max}(x(t_max)) + int_{t_min}^{t_max} div v(x(t), t) dt,

solved forward from the data with an adaptive Runge-Kutta solver (diffrax) on the augmented state (x, int div v).
The prior p_{t_max} is N(0, sigma(t_max)^2 I). The divergence is exact (D vector-Jacobian products, for small D)
or Hutchinson's unbiased estimate eps^T (dv/dx) eps with one Rademacher or Gaussian probe per example, held fixed
along the trajectory (FFJORD). Both take reverse-mode products, not forward-mode ones: layers with a custom VJP
(cuDNN's fused attention, which the attention layer picks on GPUs, and the Pallas kernels) have no forward-mode
rule. Each example's velocity depends on its own input only, so one product per probe serves the whole batch.

All examples of the batch are integrated as one ODE system: the solver's step control sees the whole batch.
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

from diffax.objectives import probability_flow_velocity
from diffax.schedules import Schedule

Array = jax.Array


def _divergence_fn(velocity: Callable[[Array], Array], x: Array, divergence: str, probe: Array | None) -> tuple:
    """(v(x), div v(x) of shape (B,)); the network runs forward once and backward once per cotangent."""
    batch = x.shape[0]
    value, pull_back = jax.vjp(velocity, x)
    if divergence == "exact":
        flat_dim = math.prod(x.shape[1:])
        basis = jnp.eye(flat_dim, dtype=value.dtype).reshape((flat_dim, 1) + x.shape[1:])
        basis = jnp.broadcast_to(basis, (flat_dim,) + x.shape)
        rows = jax.vmap(lambda e: pull_back(e)[0])(basis)  # (D, B, *data): row d of each example's Jacobian.
        diagonal = jnp.einsum("dbi,di->b", rows.reshape(flat_dim, batch, flat_dim), jnp.eye(flat_dim))
        return value, diagonal
    (probe_times_jacobian,) = pull_back(probe.astype(value.dtype))
    return value, jnp.sum((probe_times_jacobian * probe).reshape(batch, -1), axis=1)


def ode_log_likelihood(x0_fn: Callable[[Array, Array], Array], schedule: Schedule, x: Array, key: Array | None = None,
                       *, divergence: str = "hutchinson", probe: str = "rademacher", t_min: float = 1e-5,
                       t_max: float = 1.0, rtol: float = 1e-5, atol: float = 1e-5,
                       max_steps: int = 4096) -> tuple[Array, Array, Array]:
    """log p(x) in nats for x of shape (B, *data) under the probability-flow ODE of denoiser x0_fn(x_t, t (B,)).

    Returns (log_prob (B,), the latent x(t_max) (B, *data), number of accepted solver steps). A solve that does not
    finish within max_steps gives log_prob NaN (for the whole batch, which is one ODE system) rather than an error, so
    that an evaluation keeps its other metrics."""
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("the Hutchinson divergence estimate needs a PRNG key")
        if probe == "rademacher":
            probe_vector = jax.random.rademacher(key, x.shape, x.dtype)
        elif probe == "gaussian":
            probe_vector = jax.random.normal(key, x.shape, x.dtype)
        else:
            raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    else:
        probe_vector = None

    def dynamics(t, state, args):
        x_t, _ = state
        t_batch = jnp.full(x_t.shape[:1], t, jnp.float32)

        def velocity(y):
            return probability_flow_velocity(x0_fn(y, t_batch), y, t_batch, schedule)

        return _divergence_fn(velocity, x_t, divergence, probe_vector)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(dynamics), diffrax.Tsit5(), t0=t_min, t1=t_max, dt0=None,
        y0=(x, jnp.zeros(x.shape[:1], jnp.float32)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps, throw=False)
    latent, integrated_divergence = (leaf[-1] for leaf in solution.ys)
    integrated_divergence = jnp.where(solution.result == diffrax.RESULTS.successful, integrated_divergence, jnp.nan)
    sigma_max = schedule.sigma(t_max)
    flat = latent.reshape(latent.shape[0], -1)
    prior = -0.5 * jnp.sum((flat / sigma_max) ** 2, axis=1) - flat.shape[1] * (
        jnp.log(sigma_max) + 0.5 * math.log(2 * math.pi))
    return prior + integrated_divergence, latent, solution.stats["num_accepted_steps"]


def dequantize(images: Array, key: Array, num_bins: int = 256) -> Array:
    """Uniform dequantization of integer images in {0, ..., num_bins - 1} to [-1, 1]: 2 (k + u) / num_bins - 1."""
    noise = jax.random.uniform(key, images.shape)
    return 2.0 * (images.astype(jnp.float32) + noise) / num_bins - 1.0


def bits_per_dim(log_prob: Array, dim: int, num_bins: int = 256) -> Array:
    """Bits/dim of dequantized data from log p in nats of its [-1, 1] scaling: the density of k + u on
    [0, num_bins)^D is p(x) (2 / num_bins)^D, so bpd = -log p / (D ln 2) + log2(num_bins / 2)."""
    return -log_prob / (dim * math.log(2.0)) + math.log2(num_bins / 2)


def image_bits_per_dim(x0_fn: Callable[[Array, Array], Array], schedule: Schedule, images: Array, key: Array,
                       **ode_options) -> Array:
    """(B,) bits/dim of integer images (B, H, W, C) in {0..255}: dequantize, ODE log-likelihood, convert."""
    dequant_key, probe_key = jax.random.split(key)
    x = dequantize(images, dequant_key)
    log_prob, _, _ = ode_log_likelihood(x0_fn, schedule, x, probe_key, **ode_options)
    return bits_per_dim(log_prob, math.prod(images.shape[1:]))
