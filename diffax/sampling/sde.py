"""Reverse-SDE samplers: Euler-Maruyama and predictor-corrector with a Langevin corrector (Song et al. 2021).

The forward SDE of x_t = alpha x0 + sigma eps is dx = f x dt + g dw with
    f = alpha' / alpha,    g^2 = d(sigma^2)/dt - 2 f sigma^2 = -sigma^2 d lambda/dt,
and the reverse SDE is dx = (f x - g^2 score) dt + g dw_bar, with score = -eps_hat / sigma (Anderson 1982).
f is infinite where alpha = 0 (rectified flow at t = 1): start such grids below t = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffax.sampling.common import Solver, StepContext, denoise, eps_from_x0, gaussian_like, split_key


def _drift_and_diffusion(ctx: StepContext, x, t):
    """(reverse drift f x - g^2 score, g) at (x, t), from one denoiser call."""
    alpha, sigma, dalpha, dsigma = ctx.schedule.derivatives(t)
    f = dalpha / alpha
    g_squared = 2.0 * sigma * dsigma - 2.0 * f * sigma**2
    score = -eps_from_x0(x, denoise(ctx, x, t), alpha, sigma) / sigma
    return f * x - g_squared * score, jnp.sqrt(g_squared)


def euler_maruyama_step(ctx: StepContext, x, state, t, t_next):
    """x_next = x - h (f x - g^2 score) + g sqrt(h) z with h = t - t_next; no noise onto sigma = 0."""
    h = t - t_next
    drift, diffusion = _drift_and_diffusion(ctx, x, t)
    noise_scale = jnp.where(ctx.schedule.sigma(t_next) > 0, diffusion * jnp.sqrt(h), 0.0)
    return x - h * drift + noise_scale * gaussian_like(ctx.key, x), state


def langevin_correct(ctx: StepContext, x, t, key, *, snr: float = 0.16, corrector_steps: int = 1):
    """Langevin dynamics at fixed t: x += e score + sqrt(2 e) z, with e = 2 (snr ||z|| / ||score||)^2 from the
    batch-mean norms, so the noise-to-update ratio hits the target snr (Song et al. 2021, Algorithm 5; per-example
    norms blow up on low-dimensional data, where a score can vanish at a mode).

    With per-example keys (key of shape (B,)) a sample may not depend on the rest of its batch, so the norms take
    their noise-dominated values ||z|| ~ sqrt(D) and ||score|| ~ sqrt(D) / sigma: e = 2 (snr sigma)^2, a step no
    larger than the batch rule's (the score of alpha x0 + sigma eps is at most sqrt(D) / sigma in norm on average).
    """
    alpha, sigma = ctx.schedule.alpha_sigma(t)

    def mean_norm(v):
        return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=1))

    def one_step(x, step_key):
        score = -eps_from_x0(x, denoise(ctx, x, t), alpha, sigma) / sigma
        noise = gaussian_like(step_key, x)
        if step_key.ndim == 0:
            step_size = 2.0 * (snr * mean_norm(noise) / mean_norm(score)) ** 2
        else:
            step_size = 2.0 * (snr * sigma) ** 2
        return x + step_size * score + jnp.sqrt(2.0 * step_size) * noise, None

    x, _ = jax.lax.scan(one_step, x, split_key(key, corrector_steps))
    return x


def predictor_corrector_step(ctx: StepContext, x, state, t, t_next, *, snr: float = 0.16,
                             corrector_steps: int = 1):
    """Langevin corrector at t, then an Euler-Maruyama predictor step to t_next."""
    corrector_key, predictor_key = split_key(ctx.key)
    x = langevin_correct(ctx, x, t, corrector_key, snr=snr, corrector_steps=corrector_steps)
    return euler_maruyama_step(ctx._replace(key=predictor_key), x, state, t, t_next)


SOLVERS = {
    "euler_maruyama": Solver(euler_maruyama_step, is_stochastic=lambda options: True),
    "pc": Solver(predictor_corrector_step, is_stochastic=lambda options: True),
}
