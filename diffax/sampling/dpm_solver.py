"""DPM-Solver++ (Lu et al. 2022): exponential integrators in data-prediction form, for the probability-flow ODE and
(eta > 0) the reverse SDE.

With half log-SNR l = log(alpha / sigma), step h = l(t_next) - l(t) > 0 and H = (1 + eta) h, the solution of the
SDE family (eta = 0: the ODE; eta = 1: the reverse SDE, "SDE-DPM-Solver++", Lu et al. 2022, section 5) is
    x_next = (sigma_next / sigma) e^{-eta h} x + sigma_next sqrt(1 - e^{-2 eta h}) z
             + alpha_next int_l^l_next (1 + eta) e^{-(1 + eta)(l_next - u)} x0_hat(u) du,
and the solvers expand x0_hat(u) in u. Substituting v = (1 + eta) u, the x0 terms are the ODE's with h -> H:
    order 1   alpha_next phi1(H) x0_hat,                       phi1(H) = 1 - e^{-H}
    2M        + alpha_next phi1(H) D1 / 2                       (the reference "midpoint" form, second order)
    3M        + alpha_next (1 - phi1(H) / H) D1 - alpha_next c2(H) D2,   phi2(H) = (e^{-H} - 1 + H) / H^2
with D1, D2 the first and half the second divided differences of the last three outputs in l, scaled by h and h^2.

3M's D2 coefficient c2 is the option `second_difference`:
    "reference" (default)  c2 = phi2(H) - 1/2     diffusers' DPMSolverMultistepScheduler (solver_order=3),
                                                   k-diffusion's sample_dpmpp_3m_sde ("phi_3 = phi_2 / h - 0.5")
                                                   and LuChengTHU/dpm-solver: second order (measured);
    "exact"                c2 = 2 phi2(H) - 1     the exact integral of the quadratic Taylor term: third order,
                                                   exact for quadratic x0_hat (tests/diffusion/test_sampling.py).
The default is the solver users know as "DPM++ 3M" and reproduces the reference's samples. It is also the more
accurate one at equal calls on DDPM's trailing grid down to sigma = 0 (`python benchmarks/solver_accuracy.py`, RMS
error against the ODE's solution, benchmarks/RESULTS.md), where the steps grow in log-SNR towards the end and its
halved, damped extrapolation of D2 loses less; reference / exact: 2.38e-01 / 2.37e-01 at 5 calls, 1.11e-01 /
1.13e-01 at 10, 4.43e-02 / 5.13e-02 at 20, 7.17e-03 / 8.98e-03 at 50. "exact" wins once the steps are small and
even: stopping at t = 0.1 without lowering the final orders, 2.8e-04 / 1.4e-04 at 45 steps and 6.4e-05 / 1.8e-05 at
90 (slopes 2.1 / 2.9; tests/diffusion/test_sampling.py::test_solvers_reach_their_order_stopping_at_t01).

Multistep solvers make one denoiser call per step: order min(k, 1 + earlier outputs) on the first steps (no extra
call), and with `lower_order_final` (default) on grids of N < LOWER_ORDER_FINAL_BELOW = 15 steps order at most N - i
on step i of N: diffusers' rule (`lower_order_final and len(timesteps) < 15`), so that 3M's samples are the
reference's at any N. (Lowering the second-to-last step at N >= 15 as well loses at 20 calls on the benchmark above,
5.83e-02 instead of 4.43e-02, and gains at 50, 4.76e-03 instead of 7.17e-03: neither rule wins both.)
The step onto sigma = 0 (h infinite) is first order: x_next = alpha_next x0_hat, the denoised last state, which is
the reference's final_sigmas_type="zero". To stop at a noise level instead, end the grid at t_end > 0 and sample with
denoise_final=False (the reference's "sigma_min"), or True to denoise there with one more call.
2S evaluates a midpoint (singlestep, two calls per step); "dpmpp_2s_ancestral" takes that step to the reduced level
sigma_down and adds noise sigma_up (k-diffusion's sample_dpmpp_2s_ancestral; see ancestral.ancestral_levels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffax.sampling.ancestral import ancestral_levels
from diffax.sampling.common import (Solver, StepContext, denoise, gaussian_like, history_init, history_push,
                                    multistep_order, num_earlier)

_SMALL_H = 1e-2
LOWER_ORDER_FINAL_BELOW = 15


def _phi1(h):
    """(1 - e^{-h}), so that the first-order update is x_next = (sigma_next/sigma) x + alpha_next phi1 x0."""
    return -jnp.expm1(-h)


def _phi2(h):
    """(e^{-h} - 1 + h) / h^2, with its Taylor series 1/2 - h/6 + h^2/24 where float32 would cancel."""
    safe_h = jnp.where(h < _SMALL_H, 1.0, h)
    return jnp.where(h < _SMALL_H, 0.5 - h / 6.0 + h**2 / 24.0, (jnp.expm1(-safe_h) + safe_h) / safe_h**2)


def half_log_snr(schedule, t):
    return 0.5 * schedule.log_snr(t)


# second_difference -> 3M's D2 coefficient c2(H) (module docstring).
SECOND_DIFFERENCES = {
    "reference": lambda big_h: _phi2(big_h) - 0.5,
    "exact": lambda big_h: 2.0 * _phi2(big_h) - 1.0,
}


def _first_order(x, x0_hat, sigma, sigma_next, alpha_next, h):
    return (sigma_next / sigma) * x + alpha_next * _phi1(h) * x0_hat


def multistep_step(ctx: StepContext, x, state, t, t_next, *, order: int, eta: float = 0.0,
                   lower_order_final: bool = True, second_difference: str = "reference"):
    """DPM-Solver++(kM) with k = order in {1, 2, 3}; its SDE form with eta > 0; second_difference picks 3M's D2
    coefficient (a key of SECOND_DIFFERENCES). State: earlier x0_hat (k-1, *x.shape), their half log-SNRs (k-1,)."""
    if second_difference not in SECOND_DIFFERENCES:
        raise ValueError(f"unknown second_difference {second_difference!r}; expected one of "
                         f"{sorted(SECOND_DIFFERENCES)}")
    history, l_history = state
    _, sigma = ctx.schedule.alpha_sigma(t)
    alpha_next, sigma_next = ctx.schedule.alpha_sigma(t_next)
    l_now, l_next = half_log_snr(ctx.schedule, t), half_log_snr(ctx.schedule, t_next)
    h = l_next - l_now
    big_h = (1.0 + eta) * h
    x0_hat = denoise(ctx, x, t)
    x_scale = (sigma_next / sigma) * jnp.exp(-eta * h) if eta else sigma_next / sigma
    x_next = first = x_scale * x + alpha_next * _phi1(big_h) * x0_hat
    order_now = multistep_order(ctx, order, num_earlier(l_history), h, sigma_next,
                                lower_order_final and ctx.num_steps < LOWER_ORDER_FINAL_BELOW)
    if order >= 2:
        r0 = (l_now - l_history[0]) / h
        d1_0 = (x0_hat - history[0]) / r0
        x_next = jnp.where(order_now >= 2, first + 0.5 * alpha_next * _phi1(big_h) * d1_0, first)
    if order >= 3:
        r1 = (l_history[0] - l_history[1]) / h
        d1_1 = (history[0] - history[1]) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        c2 = SECOND_DIFFERENCES[second_difference](big_h)
        third = first + alpha_next * (1.0 - _phi1(big_h) / big_h) * d1 - alpha_next * c2 * d2
        x_next = jnp.where(order_now >= 3, third, x_next)
    if eta:
        noise_scale = jnp.where(sigma_next > 0, sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)), 0.0)
        x_next = x_next + noise_scale * gaussian_like(ctx.key, x)
    return x_next, (history_push(history, l_history, x0_hat, l_now) if order >= 2 else state)


def _singlestep_second_order(ctx: StepContext, x, x0_hat, t, h, sigma, sigma_next, alpha_next, midpoint):
    """DPM-Solver++(2S)'s update from a first denoiser output x0_hat: one more call at l + midpoint h."""
    l_now = half_log_snr(ctx.schedule, t)
    t_mid = ctx.schedule.t_from_log_snr(2.0 * (l_now + midpoint * h))
    alpha_mid, sigma_mid = ctx.schedule.alpha_sigma(t_mid)
    u = _first_order(x, x0_hat, sigma, sigma_mid, alpha_mid, midpoint * h)
    x0_mid = denoise(ctx, u, t_mid)
    d = (1.0 - 0.5 / midpoint) * x0_hat + (0.5 / midpoint) * x0_mid
    return _first_order(x, d, sigma, sigma_next, alpha_next, h)


def singlestep_2s_step(ctx: StepContext, x, state, t, t_next, *, midpoint: float = 0.5, eta: float = 0.0):
    """DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1): an intermediate point at l + midpoint h. With eta > 0 the
    step goes to the reduced noise sigma_down and adds noise sigma_up (ancestral sampling, in sigma~ = sigma / alpha);
    first order onto sigma = 0."""
    alpha, sigma = ctx.schedule.alpha_sigma(t)
    alpha_next, sigma_next = ctx.schedule.alpha_sigma(t_next)
    if eta:  # the deterministic part ends at sigma~ = sigma_down, in the scale of alpha_next
        sigma_down, sigma_up = ancestral_levels(sigma / alpha, sigma_next / alpha_next, eta)
        sigma_next, l_next = alpha_next * sigma_down, -jnp.log(sigma_down)
    else:
        l_next = half_log_snr(ctx.schedule, t_next)
    h = l_next - half_log_snr(ctx.schedule, t)
    x0_hat = denoise(ctx, x, t)
    x_next = jax.lax.cond(
        jnp.isfinite(h) & (sigma_next > 0),
        lambda: _singlestep_second_order(ctx, x, x0_hat, t, h, sigma, sigma_next, alpha_next, midpoint),
        lambda: _first_order(x, x0_hat, sigma, sigma_next, alpha_next, h))
    if eta:
        x_next = x_next + alpha_next * sigma_up * gaussian_like(ctx.key, x)
    return x_next, state


def _multistep(order: int, eta: float = 0.0) -> Solver:
    return Solver(functools.partial(multistep_step, order=order, eta=eta),
                  init=lambda x, order=order, **options: history_init(x, order - 1),
                  is_stochastic=lambda options: options.get("eta", eta) > 0)


SOLVERS = {
    "dpmpp_2m": _multistep(2),
    "dpmpp_3m": _multistep(3),
    "dpmpp_2m_sde": _multistep(2, eta=1.0),
    "dpmpp_3m_sde": _multistep(3, eta=1.0),
    "dpmpp_2s": Solver(singlestep_2s_step, is_stochastic=lambda options: options.get("eta", 0.0) > 0),
    "dpmpp_2s_ancestral": Solver(functools.partial(singlestep_2s_step, eta=1.0),
                                 is_stochastic=lambda options: options.get("eta", 1.0) > 0),
}
