"""Euler and Heun on the probability-flow ODE, with EDM's optional churn (Karras et al. 2022, Algorithms 1-2).

The probability-flow ODE of x_t = alpha x0 + sigma eps is dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat: the time
derivative of the forward process with x0 and eps replaced by their posterior means. With the EDM schedule
(alpha = 1, sigma linear in t) Euler and Heun in t are exactly the paper's solvers in sigma; for rectified flow it is
the flow-matching velocity; for VP schedules it is Song et al.'s probability-flow ODE.

Heun integrates by default in EDM's recommended coordinates instead (time sigma~ = sigma / alpha, state x / alpha,
velocity eps_hat; Karras et al. 2022, section 3), as k-diffusion and diffusers do, wherever sigma~(1) is a finite
noise level of the schedule (`heun_step`). Euler in those coordinates is DDIM ("ddim"); "euler" stays in t, which
measured more accurate than DDIM on DDPM's discrete schedule (benchmarks/RESULTS.md).

Churn raises the noise level sigma~ = sigma / alpha by a factor (1 + gamma) before each step, adding fresh noise
so that x stays a sample of the marginal at the raised level, then solves the ODE down from there.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffax.objectives import probability_flow_velocity
from diffax.sampling.common import Solver, StepContext, denoise, eps_from_x0, gaussian_like


def ode_velocity(ctx: StepContext, x, t):
    """dx/dt of the probability-flow ODE at (x, t), from one denoiser call."""
    return probability_flow_velocity(denoise(ctx, x, t), x, t, ctx.schedule)


def _churn(ctx: StepContext, x, t, churn: float, churn_min: float, churn_max: float, churn_noise: float):
    """EDM's stochastic step: (x_hat, t_hat) with sigma~(t_hat) = (1 + gamma) sigma~(t),
    gamma = min(churn / N, sqrt(2) - 1) when churn_min <= sigma~(t) <= churn_max, else 0."""
    if not churn:
        return x, t
    alpha, sigma = ctx.schedule.alpha_sigma(t)
    sigma_tilde = sigma / alpha
    in_range = (sigma_tilde >= churn_min) & (sigma_tilde <= churn_max)
    gamma = jnp.where(in_range, min(churn / ctx.num_steps, math.sqrt(2.0) - 1.0), 0.0)
    sigma_tilde_hat = (1.0 + gamma) * sigma_tilde
    t_hat = jnp.where(gamma > 0, ctx.schedule.t_from_log_snr(-2.0 * jnp.log(sigma_tilde_hat)), t)
    alpha_hat = ctx.schedule.alpha(t_hat)
    noise = gaussian_like(ctx.key, x)
    extra = alpha_hat * sigma_tilde * jnp.sqrt(gamma * (2.0 + gamma)) * churn_noise  # sqrt(s_hat^2 - s^2)
    # The where keeps sigma~ = inf (alpha = 0, outside any churn range) from turning 0 * inf into NaN.
    return jnp.where(gamma > 0, (alpha_hat / alpha) * x + extra * noise, x), t_hat


def euler_step(ctx: StepContext, x, state, t, t_next, *, churn: float = 0.0, churn_min: float = 0.0,
               churn_max: float = float("inf"), churn_noise: float = 1.0):
    """One Euler step of the probability-flow ODE in t (after optional churn)."""
    x, t = _churn(ctx, x, t, churn, churn_min, churn_max, churn_noise)
    return x + (t_next - t) * ode_velocity(ctx, x, t), state


def heun_step(ctx: StepContext, x, state, t, t_next, *, churn: float = 0.0, churn_min: float = 0.0,
              churn_max: float = float("inf"), churn_noise: float = 1.0, ode_time: str = "auto"):
    """Heun's second-order step (EDM Algorithm 2); the correction is skipped onto sigma = 0, as in the paper.

    ode_time "sigma": time sigma~ = sigma / alpha and state x / alpha, where d(x / alpha)/d sigma~ = eps_hat (EDM's
    recommended sigma(t) = t, s(t) = 1; k-diffusion's and diffusers' Heun): no derivative of the schedule enters.
    "t": the schedule's own time. "auto": "t" for schedules that reach pure noise, alpha(1) = 0 in exact arithmetic
    (`Schedule.reaches_pure_noise`: rectified flow, zero terminal SNR, and VPCosine and VPSigmoid, whose log-SNR
    floor keeps sigma~(1) finite), "sigma" elsewhere. EDM's schedule gives the same steps either way.

    Why: the corrected step in sigma~ from S to s is the Euler (DDIM) step plus (S / s - 1) / 2 times the change
    x0_hat(s) - x0_hat(S) of the denoiser over the step (in units of x / alpha; x0_hat(s) at the Euler point). The
    first step of a grid uniform in t starts at sigma~(1), the floor's value on VPCosine (1,808 at log-SNR -15), and
    lands near sigma~ ~ 1 where the denoiser has changed most: with the exact denoiser of a 16-D Gaussian, 3 steps
    miss the ODE's solution by 142 RMS (Euler: 0.14), 25 steps by 0.46, and the error grows with the floor (x12 per 5
    of log-SNR), which "t" does not see. k-diffusion's sample_heun (and diffusers' HeunDiscreteScheduler) make the
    same update from the same sigmas and fail the same way (diffusers' cosine betas start at sigma~ = 20,291); EDM's
    grids start at 80. Even where sigma~(1) is finite, a single step over a large ratio of sigma~ (a Karras grid of 2
    or 3 steps from 80 to 0.002) makes "sigma" worse than Euler. Neither wins everywhere: on DDPM's discrete schedule
    with the trailing grid "sigma" is more accurate at 5 and 9 calls, "t" at 19 and 49 (benchmarks/RESULTS.md)."""
    x, t = _churn(ctx, x, t, churn, churn_min, churn_max, churn_noise)
    scale, time = _ode_frame(ctx.schedule, t, ode_time)
    scale_next, time_next = _ode_frame(ctx.schedule, t_next, ode_time)
    velocity = _frame_velocity(ctx, x, t, ode_time)
    x_euler = scale_next * (x / scale + (time_next - time) * velocity)

    def corrected(_):
        velocity_next = _frame_velocity(ctx, x_euler, t_next, ode_time)
        return scale_next * (x / scale + (time_next - time) * 0.5 * (velocity + velocity_next))

    x_next = jax.lax.cond(ctx.schedule.sigma(t_next) > 0, corrected, lambda _: x_euler, None)
    return x_next, state


def _resolve_ode_time(schedule, ode_time: str) -> str:
    if ode_time == "auto":
        return "t" if schedule.reaches_pure_noise else "sigma"
    if ode_time not in ("t", "sigma"):
        raise ValueError(f"unknown ode_time {ode_time!r}; expected 'auto', 't' or 'sigma'")
    return ode_time


def _ode_frame(schedule, t, ode_time: str):
    """(scale, time) of the ODE's coordinates: state x / scale, integrated in time."""
    if _resolve_ode_time(schedule, ode_time) == "t":
        return 1.0, t
    alpha, sigma = schedule.alpha_sigma(t)
    return alpha, sigma / alpha


def _frame_velocity(ctx: StepContext, x, t, ode_time: str):
    if _resolve_ode_time(ctx.schedule, ode_time) == "t":
        return ode_velocity(ctx, x, t)
    alpha, sigma = ctx.schedule.alpha_sigma(t)
    return eps_from_x0(x, denoise(ctx, x, t), alpha, sigma)


SOLVERS = {
    "euler": Solver(euler_step, is_stochastic=lambda options: options.get("churn", 0.0) > 0),
    "heun": Solver(heun_step, is_stochastic=lambda options: options.get("churn", 0.0) > 0),
}
