"""Discrete-time samplers on the Gaussian posterior q(x_s | x_t, x0): DDPM ancestral sampling and DDIM.

For s < t, with r = (alpha_t sigma_s) / (alpha_s sigma_t) = exp(-(lambda_s - lambda_t) / 2) in [0, 1]:
    posterior mean      alpha_s x0 + sigma_s r eps,   where eps = (x_t - alpha_t x0) / sigma_t
    posterior variance  sigma_s^2 (1 - r^2)                       (Ho et al. 2020, eq. 7, for any schedule)
DDIM (Song et al. 2021) keeps the marginals with any variance c^2 = eta^2 sigma_s^2 (1 - r^2):
    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
so eta = 1 is DDPM's posterior sampler and eta = 0 the deterministic DDIM (Euler in sigma/alpha).

In sigma~ = sigma / alpha and x / alpha this is Euler ancestral sampling (k-diffusion's sample_euler_ancestral,
diffusers' EulerAncestralDiscreteScheduler): c / alpha_s = sigma_up and sqrt(sigma_s^2 - c^2) / alpha_s = sigma_down
of `ancestral_levels`, so "euler_ancestral" is DDIM with eta = 1 by default, for any schedule.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from diffax.sampling.common import Solver, StepContext, denoise, eps_from_x0, gaussian_like


def ancestral_levels(sigma_tilde, sigma_tilde_next, eta):
    """(sigma_down, sigma_up) of an ancestral step from sigma~ to sigma~_next (Karras et al. 2022's code):
    sigma_up = min(sigma~_next, eta sigma~_next sqrt(1 - (sigma~_next / sigma~)^2)), sigma_down^2 + sigma_up^2 =
    sigma~_next^2; eta = 1 is the posterior (DDPM) noise, eta = 0 the ODE."""
    ratio = sigma_tilde_next / sigma_tilde
    sigma_up = jnp.minimum(sigma_tilde_next, eta * sigma_tilde_next * jnp.sqrt(1.0 - ratio**2))
    return jnp.sqrt(sigma_tilde_next**2 - sigma_up**2), sigma_up


def _posterior_terms(ctx: StepContext, x, t, t_next):
    alpha_t, sigma_t = ctx.schedule.alpha_sigma(t)
    alpha_s, sigma_s = ctx.schedule.alpha_sigma(t_next)
    x0_hat = denoise(ctx, x, t)
    eps_hat = eps_from_x0(x, x0_hat, alpha_t, sigma_t)
    ratio = (alpha_t * sigma_s) / (alpha_s * sigma_t)
    posterior_var = sigma_s**2 * (1.0 - ratio**2)
    return x0_hat, eps_hat, alpha_s, sigma_s, posterior_var


def ddim_step(ctx: StepContext, x, state, t, t_next, *, eta: float = 0.0):
    """DDIM with stochasticity eta in [0, 1]."""
    x0_hat, eps_hat, alpha_s, sigma_s, posterior_var = _posterior_terms(ctx, x, t, t_next)
    noise_var = eta**2 * posterior_var
    x_next = alpha_s * x0_hat + jnp.sqrt(jnp.maximum(sigma_s**2 - noise_var, 0.0)) * eps_hat
    if eta:
        x_next = x_next + jnp.sqrt(noise_var) * gaussian_like(ctx.key, x)
    return x_next, state


def ddpm_step(ctx: StepContext, x, state, t, t_next, *, variance: str = "posterior"):
    """DDPM ancestral step: the posterior mean plus noise of the posterior variance ("posterior", beta-tilde) or of
    the forward transition's sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 ("large", beta); none onto sigma_s = 0."""
    x0_hat, eps_hat, alpha_s, sigma_s, posterior_var = _posterior_terms(ctx, x, t, t_next)
    mean = alpha_s * x0_hat + jnp.sqrt(jnp.maximum(sigma_s**2 - posterior_var, 0.0)) * eps_hat
    if variance == "posterior":
        var = posterior_var
    elif variance == "large":
        alpha_t, sigma_t = ctx.schedule.alpha_sigma(t)
        var = jnp.where(sigma_s > 0, sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2, 0.0)
    else:
        raise ValueError(f"unknown DDPM variance {variance!r}; expected 'posterior' or 'large'")
    return mean + jnp.sqrt(var) * gaussian_like(ctx.key, x), state


SOLVERS = {
    "ddpm": Solver(ddpm_step, is_stochastic=lambda options: True),
    "ddim": Solver(ddim_step, is_stochastic=lambda options: options.get("eta", 0.0) > 0),
    "euler_ancestral": Solver(functools.partial(ddim_step, eta=1.0),
                              is_stochastic=lambda options: options.get("eta", 1.0) > 0),
}
