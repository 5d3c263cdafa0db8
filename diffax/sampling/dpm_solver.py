"""DPM-Solver++ (Lu et al. 2022): exponential integrators of the probability-flow ODE in data-prediction form.

With half log-SNR l = log(alpha / sigma) and step h = l(t_next) - l(t) > 0, the exact solution is
    x_next = (sigma_next / sigma) x + alpha_next int_l^l_next e^{-(l_next - u)} x0_hat(u) du,
and the solvers expand x0_hat(u) in u: order 1 is DDIM; 2M and 3M extrapolate from the denoiser outputs of the last
one or two steps (multistep, one call per step); 2S evaluates a midpoint (singlestep, two calls per step).
Multistep orders warm up (order min(k, steps so far)); 3M takes its first step with 2S (one extra denoiser call),
since the local O(h^2) error of a first-order start would cap the global order at 2. Every solver takes a
first-order step onto sigma = 0, where h is infinite (the "lower order final" of the reference implementation).

3M's second-difference term uses the exact integral of the quadratic Taylor term, alpha_next (1 - 2 phi2(h)) D2 with
phi2 = (e^{-h} - 1 + h) / h^2 and D2 ~ h^2 x0_hat'' / 2. The reference implementation's coefficient
(1/2 - phi2) is half of it: the update is then not exact for quadratic x0_hat, and the measured global order falls
from 3 to 2 (tests/diffusion/test_sampling.py checks exactness on polynomials and the order on the ODE).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffax.sampling.common import Solver, StepContext, denoise

_SMALL_H = 1e-2


def _phi1(h):
    """(1 - e^{-h}), so that the first-order update is x_next = (sigma_next/sigma) x + alpha_next phi1 x0."""
    return -jnp.expm1(-h)


def _phi2(h):
    """(e^{-h} - 1 + h) / h^2, with its Taylor series 1/2 - h/6 + h^2/24 where float32 would cancel."""
    safe_h = jnp.where(h < _SMALL_H, 1.0, h)
    return jnp.where(h < _SMALL_H, 0.5 - h / 6.0 + h**2 / 24.0, (jnp.expm1(-safe_h) + safe_h) / safe_h**2)


def _half_log_snr(schedule, t):
    return 0.5 * schedule.log_snr(t)


def _first_order(x, x0_hat, sigma, sigma_next, alpha_next, h):
    return (sigma_next / sigma) * x + alpha_next * _phi1(h) * x0_hat


def multistep_init(order: int):
    def init(x):
        history = jnp.zeros((order - 1,) + x.shape, x.dtype)
        return history, jnp.full((order - 1,), -jnp.inf, jnp.float32)

    return init


def multistep_step(ctx: StepContext, x, state, t, t_next, *, order: int):
    """DPM-Solver++(kM) with k = order in {1, 2, 3}. State: earlier x0_hat (k-1, *x.shape), their l (k-1,)."""
    history, l_history = state
    _, sigma = ctx.schedule.alpha_sigma(t)
    alpha_next, sigma_next = ctx.schedule.alpha_sigma(t_next)
    l_now, l_next = _half_log_snr(ctx.schedule, t), _half_log_snr(ctx.schedule, t_next)
    h = l_next - l_now
    x0_hat = denoise(ctx, x, t)
    x_next = first = _first_order(x, x0_hat, sigma, sigma_next, alpha_next, h)
    if order >= 2:
        finite = jnp.isfinite(l_history) & jnp.isfinite(h)
        usable = jnp.where(sigma_next > 0, jnp.sum(jnp.cumprod(finite)), 0)
        r0 = (l_now - l_history[0]) / h
        d1_0 = (x0_hat - history[0]) / r0
        x_next = jnp.where(usable >= 1, first + 0.5 * alpha_next * _phi1(h) * d1_0, first)
    if order >= 3:
        r1 = (l_history[0] - l_history[1]) / h
        d1_1 = (history[0] - history[1]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        third = first + alpha_next * (1.0 - _phi1(h) / h) * d1 - alpha_next * (2.0 * _phi2(h) - 1.0) * d2
        x_next = jnp.where(usable >= 2, third, x_next)
        # Warm-up: a first-order first step would cap the global order at 2, so take it with 2S (one extra call).
        x_next = jax.lax.cond(
            (ctx.index == 0) & jnp.isfinite(h) & (sigma_next > 0),
            lambda: _singlestep_second_order(ctx, x, x0_hat, t, h, sigma, sigma_next, alpha_next, 0.5),
            lambda: x_next)
    new_state = (jnp.concatenate([x0_hat[None], history[:-1]]), jnp.concatenate([l_now[None], l_history[:-1]]))
    return x_next, new_state


def _singlestep_second_order(ctx: StepContext, x, x0_hat, t, h, sigma, sigma_next, alpha_next, midpoint):
    """DPM-Solver++(2S)'s update from a first denoiser output x0_hat: one more call at l + midpoint h."""
    l_now = _half_log_snr(ctx.schedule, t)
    t_mid = ctx.schedule.t_from_log_snr(2.0 * (l_now + midpoint * h))
    alpha_mid, sigma_mid = ctx.schedule.alpha_sigma(t_mid)
    u = _first_order(x, x0_hat, sigma, sigma_mid, alpha_mid, midpoint * h)
    x0_mid = denoise(ctx, u, t_mid)
    d = (1.0 - 0.5 / midpoint) * x0_hat + (0.5 / midpoint) * x0_mid
    return _first_order(x, d, sigma, sigma_next, alpha_next, h)


def singlestep_2s_step(ctx: StepContext, x, state, t, t_next, *, midpoint: float = 0.5):
    """DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1): an intermediate point at l + midpoint h."""
    _, sigma = ctx.schedule.alpha_sigma(t)
    alpha_next, sigma_next = ctx.schedule.alpha_sigma(t_next)
    h = _half_log_snr(ctx.schedule, t_next) - _half_log_snr(ctx.schedule, t)
    x0_hat = denoise(ctx, x, t)
    x_next = jax.lax.cond(
        jnp.isfinite(h) & (sigma_next > 0),
        lambda: _singlestep_second_order(ctx, x, x0_hat, t, h, sigma, sigma_next, alpha_next, midpoint),
        lambda: _first_order(x, x0_hat, sigma, sigma_next, alpha_next, h))
    return x_next, state


def _multistep(order: int) -> Solver:
    return Solver(functools.partial(multistep_step, order=order), init=multistep_init(order))


SOLVERS = {
    "dpmpp_2m": _multistep(2),
    "dpmpp_3m": _multistep(3),
    "dpmpp_2s": Solver(singlestep_2s_step),
}
