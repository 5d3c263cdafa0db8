"""Editing a given x0 with the reverse process: denoising, image-to-image (SDEdit) and inpainting.

Denoising and img2img start the reverse process from a state made of the given data rather than from pure noise
(`driver.sample_from`); inpainting either samples from pure noise with a conditioned denoiser (posterior) or
replaces the kept region along the way (RePaint). All work with any data shape, any denoiser (guided ones
included) and any solver (RePaint: one without memory).

denoise(y, noise_std): y = x0 + noise_std * eps is, scaled by alpha, a state of the forward process at the time t*
with the same signal-to-noise ratio: alpha(t*) y = alpha x0 + alpha noise_std eps, so sigma(t*) / alpha(t*) =
noise_std, i.e. log_snr(t*) = -2 log(noise_std). One step returns the posterior mean x0_fn(alpha(t*) y, t*) =
E[x0 | y] (the MMSE estimate); a reverse run from t* draws from p(x0 | y) instead (with a stochastic solver).

img2img(x, strength) (SDEdit, Meng et al. 2022): with the grid of `num_steps` steps from t = 1, the last
round(strength * num_steps) steps run, from x_t = alpha(t_s) x + sigma(t_s) eps at their first time t_s, as
diffusers' img2img pipelines count them. strength 0 returns x; strength 1 runs every step from
alpha(1) x + sigma(1) noise, which is the unconditional sampler's start sigma(1) noise where alpha(1) = 0
(rectified flow, zero terminal SNR) and differs from it by alpha(1) x elsewhere.

inpaint(x, mask). mask = 1 (white in a mask image, as in Stable Diffusion) marks what to repaint, 0 what to keep;
the result keeps the kept region exactly. Two algorithms:

  posterior (the default): the ordinary sampler from pure noise, with any solver (multistep ones included), run on
  the posterior denoiser E[x0 | x_t, x0_kept = x_kept] of `posterior.posterior_denoiser` (Tweedie moment
  projection, Boys et al. 2023): exact on Gaussian data given cg_steps >= the number of kept coordinates, so the
  samples follow p(x0 | x_kept) up to the solver's discretization error (benchmarks/RESULTS.md, "Inpainting": within
  sampling error at n = 10,000 with dpmpp_2m in 50 steps). With a learned denoiser the Jacobian it relies on is
  only roughly symmetric, and cg_steps 1 is the measured choice.

  repaint (Lugmayr et al. 2022): after every reverse step to time s the kept region is replaced by a fresh draw of
  the forward process, alpha(s) x + sigma(s) z, so the final state keeps it exactly. With jump_n_sample = r > 1
  the run goes back up jump_length grid steps r - 1 times at every jump_length-th step, re-noising with the
  forward transition q(x_t | x_s) = N((alpha_t / alpha_s) x_s, sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2),
  which lets the repainted region harmonize with the kept one. jump_n_sample = 1 is plain replacement. The jumps
  need a solver without memory (ddpm, ddim, euler, heun, ...): a multistep solver's history does not survive a
  jump. RePaint is biased: on Gaussian data its best mean error is 4-5 standard errors at n = 10,000.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffax.sampling import driver, posterior
from diffax.sampling.common import StepContext, X0Fn, as_typed_keys, fold_in, gaussian_like, split_key
from diffax.schedules import Schedule, broadcast_to_data, time_grid

Array = jax.Array


def noise_std_time(schedule: Schedule, noise_std: float | Array) -> Array:
    """The time t* with sigma(t*) / alpha(t*) = noise_std: log_snr(t*) = -2 log(noise_std)."""
    return schedule.t_from_log_snr(-2.0 * jnp.log(jnp.asarray(noise_std, jnp.float32)))


def denoise(x0_fn: X0Fn, schedule: Schedule, noisy: Array, noise_std: float, *, num_steps: int = 0,
            method: str = "ddpm", key: Array | None = None, grid: str = "uniform", intermediates: int = 0,
            **options) -> Array:
    """Denoises y = x0 + noise_std * eps (B, *data): num_steps 0 gives the posterior mean E[x0 | y] in one
    denoiser call; num_steps > 0 runs the reverse process from alpha(t*) y at t* to t = 0 on a `grid` of that
    kind from t* (module docstring). noise_std: a number (or, for num_steps 0, an array).

    intermediates k > 0 (with num_steps >= k) returns (B, k + 1, *data) instead: the states x_t / alpha(t) at k
    evenly spaced steps of the run (in data scale, the noise shrinking), then the result.
    """
    if num_steps == 0:
        if intermediates:
            raise ValueError(f"intermediates {intermediates} need a reverse run: pass num_steps >= {intermediates}")
        t_star = noise_std_time(schedule, noise_std)
        return x0_fn(schedule.alpha(t_star) * noisy, jnp.full(noisy.shape[:1], t_star))
    with jax.ensure_compile_time_eval():  # The grid's start must be a number.
        t_star = float(noise_std_time(schedule, noise_std))
    times = time_grid(schedule, num_steps, grid, t_start=t_star)
    x_start = schedule.alpha(t_star) * noisy
    if not intermediates:
        return driver.sample_from(x0_fn, schedule, x_start, times, method, key, **options)
    result, states = driver.sample_from(x0_fn, schedule, x_start, times, method, key, return_trajectory=True,
                                        **options)
    picks = np.linspace(0, num_steps - 1, intermediates).round().astype(int)  # States before the last step.
    shown = states[picks] / broadcast_to_data(schedule.alpha(times[picks]), states[picks])  # (k, B, *data)
    return jnp.concatenate([shown, result[None]]).swapaxes(0, 1)


def img2img_grid(schedule: Schedule, num_steps: int, strength: float, kind: str = "uniform") -> Array:
    """The last round(strength * num_steps) + 1 times of the `num_steps`-step grid: the steps img2img runs."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength}: expected a number in [0, 1]")
    run = int(round(strength * num_steps))
    return time_grid(schedule, num_steps, kind)[num_steps - run:]


def img2img(x0_fn: X0Fn, schedule: Schedule, x: Array, strength: float, noise: Array, *, num_steps: int = 50,
            grid: str = "uniform", method: str = "dpmpp_2m", key: Array | None = None, **options) -> Array:
    """SDEdit: x (B, *data) noised to the first time of `img2img_grid` with `noise` (B, *data) and denoised by
    the reverse process from there (module docstring). The same noise and key as `driver.sample` give its run at
    strength 1."""
    times = img2img_grid(schedule, num_steps, strength, grid)
    if times.shape[0] == 1:  # strength 0: no step runs.
        return x
    alpha, sigma = schedule.alpha_sigma(times[0])
    return driver.sample_from(x0_fn, schedule, alpha * x + sigma * noise, times, method, key, **options)


def repaint_positions(num_steps: int, jump_length: int = 10, jump_n_sample: int = 1) -> np.ndarray:
    """The grid positions RePaint visits, from 0 (t = 1) to num_steps (the end): one step down at a time, and
    after reaching each jump_length-th position from the end (RePaint's t = 0, j, 2j, ... below T - j) a jump back
    up jump_length positions, jump_n_sample - 1 times. Plain replacement (jump_n_sample 1) visits 0, 1, ..., N."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length {jump_length} and jump_n_sample {jump_n_sample}: expected positive integers")
    remaining = {num_steps - 1 - t: jump_n_sample - 1 for t in range(0, num_steps - jump_length, jump_length)}
    position, path = 0, [0]
    while position < num_steps:
        position += 1
        path.append(position)
        if remaining.get(position, 0) > 0:
            remaining[position] -= 1
            position -= jump_length
            path.append(position)
    return np.asarray(path, np.int32)


INPAINT_ALGORITHMS = ("posterior", "repaint")


def inpaint(x0_fn: X0Fn, schedule: Schedule, x: Array, mask: Array, noise: Array, key: Array, *,
            algorithm: str = "posterior", num_steps: int = 50, grid: str = "uniform", method: str = "ddpm",
            cg_steps: int = 1, jump_length: int = 10, jump_n_sample: int = 1, **options) -> Array:
    """Inpainting (module docstring): repaints x (B, *data) where mask (B, *data) or broadcastable is 1 and keeps
    it exactly where mask is 0. noise (B, *data) the start; key one PRNG key or per-example keys (B,);
    method, grid, num_steps and options: the solver's. algorithm "posterior": any solver sampling with the
    posterior denoiser (cg_steps conjugate-gradient iterations per call); "repaint": RePaint's replacement with
    jump_length and jump_n_sample (a solver without memory)."""
    mask = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
    if algorithm == "posterior":
        conditioned = posterior.posterior_denoiser(x0_fn, x, mask, cg_steps)
        times = time_grid(schedule, num_steps, grid)
        x_end = driver.sample(conditioned, schedule, noise, times, method, key, **options)
        return mask * x_end + (1.0 - mask) * x
    if algorithm != "repaint":
        raise ValueError(f"unknown inpainting algorithm {algorithm!r}; expected one of {INPAINT_ALGORITHMS}")
    return _repaint(x0_fn, schedule, x, mask, noise, key, num_steps=num_steps, grid=grid, method=method,
                    jump_length=jump_length, jump_n_sample=jump_n_sample, **options)


def _repaint(x0_fn: X0Fn, schedule: Schedule, x: Array, mask: Array, noise: Array, key: Array, *,
             num_steps: int, grid: str, method: str, jump_length: int, jump_n_sample: int, **options) -> Array:
    """RePaint (module docstring) with mask (B, *data)."""
    solver = driver.get_solver(method)
    if jax.tree.leaves(jax.eval_shape(lambda: solver.init(x, **options))):
        raise ValueError(f"inpainting jumps back up the grid, so it needs a solver without memory; {method!r} "
                         f"keeps state between steps (use ddpm, ddim, euler or heun)")
    times = time_grid(schedule, num_steps, grid)
    path = repaint_positions(num_steps, jump_length, jump_n_sample)
    key = as_typed_keys(key, x.shape[0])
    step = jax.tree_util.Partial(solver.step, **options) if options else solver.step

    def move(state, inputs):
        index, start, end = inputs
        t, s = times[start], times[end]
        step_key, known_key = split_key(fold_in(key, index))

        def reverse(x_t):
            ctx = StepContext(x0_fn, schedule, end - 1, num_steps, step_key)
            x_s, _ = step(ctx, x_t, (), t, s)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            known = alpha_s * x + sigma_s * gaussian_like(known_key, x)
            return mask * x_s + (1.0 - mask) * known

        def renoise(x_t):  # Here t < s: forward transition from t up to s.
            alpha_t, sigma_t = schedule.alpha_sigma(t)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            ratio = alpha_s / alpha_t
            scale = jnp.sqrt(jnp.maximum(sigma_s**2 - ratio**2 * sigma_t**2, 0.0))
            return ratio * x_t + scale * gaussian_like(step_key, x_t)

        return jax.lax.cond(end > start, reverse, renoise, state), None

    moves = (jnp.arange(len(path) - 1), jnp.asarray(path[:-1]), jnp.asarray(path[1:]))
    x_end, _ = jax.lax.scan(move, schedule.sigma(times[0]) * noise, moves)
    t_end = times[-1]
    x_end = jax.lax.cond(schedule.sigma(t_end) > 0, lambda v: x0_fn(v, jnp.full(v.shape[:1], t_end)),
                         lambda v: v, x_end)
    return mask * x_end + (1.0 - mask) * x

