"""The sampling driver: one `lax.scan` over a time grid with any registered solver.

    x_0 = sigma(t_0) * noise (or a given x_t: `sample_from`);  x_{i+1} = step(x_i, t_i -> t_{i+1});
    optionally x = x0_fn(x_N, t_N) at the end.

The grid is an array argument, so a jitted sampler compiles once per (data shape, number of steps, solver, options)
and reuses the executable for any grid values. Randomness is `fold_in(key, i)` at step i: the same key gives the
same samples. With per-example keys (B,) it is `fold_in(key_b, i)` for example b, and every draw of example b comes
from key b alone (`common.gaussian_like`): sample b is the same whatever batch or device layout it is drawn in.

The final step. A grid ending at t = 0 (sigma = 0) ends with a first-order step, which returns the denoised last
state x0_fn(x_{N-1}, t_{N-1}) (diffusers' final_sigmas_type="zero"). A grid ending at t_end > 0 stops at that noise
level: denoise_final=True then denoises there with one more call, False returns x_N itself (diffusers' "sigma_min"
with t_end = 1 / T on a discrete schedule).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffax.sampling import ancestral, dpm_solver, ode, sde, unipc
from diffax.sampling.common import Solver, StepContext, X0Fn, as_typed_keys, fold_in
from diffax.schedules import Schedule

Array = jax.Array

SOLVERS: dict[str, Solver] = {**ancestral.SOLVERS, **ode.SOLVERS, **sde.SOLVERS, **dpm_solver.SOLVERS,
                             **unipc.SOLVERS}


def get_solver(method: str) -> Solver:
    if method not in SOLVERS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[method]


def sample(x0_fn: X0Fn, schedule: Schedule, noise: Array, grid: Array, method: str = "dpmpp_2m",
           key: Array | None = None, *, denoise_final: bool = True, return_trajectory: bool = False,
           **options) -> Array | tuple[Array, Array]:
    """Runs the reverse process from pure noise: `sample_from` with x_start = sigma(grid[0]) * noise.

    noise: (B, *data) standard normal draws. The other arguments and the result are `sample_from`'s.
    """
    x_start = schedule.sigma(jnp.asarray(grid, jnp.float32)[0]) * noise
    return sample_from(x0_fn, schedule, x_start, grid, method, key, denoise_final=denoise_final,
                       return_trajectory=return_trajectory, **options)


def sample_from(x0_fn: X0Fn, schedule: Schedule, x_start: Array, grid: Array, method: str = "dpmpp_2m",
                key: Array | None = None, *, denoise_final: bool = True, return_trajectory: bool = False,
                **options) -> Array | tuple[Array, Array]:
    """Runs the reverse process from the state x_start at time grid[0] (pure noise, or a given x_t to edit).

    Args:
      x0_fn: denoiser x0_fn(x_t (B, *data), t (B,)) -> x0_hat (B, *data); conditioning closed over
        (see `guidance.classifier_free_guidance`).
      schedule: the forward process the denoiser was trained for.
      x_start: (B, *data) the state at grid[0].
      grid: (N + 1,) decreasing times from `schedules.time_grid`.
      method: a key of SOLVERS; options are passed to its step (eta, churn, order, variant, lower_order_final, ...).
      key: required by stochastic solvers: one PRNG key for the batch (typed `jax.random.key`, or raw uint32 (2,)),
        or per-example keys (B,) typed / (B, 2) raw uint32, so that example b's randomness depends on key b only
        (the Langevin corrector of "pc" then uses its batch-independent step size).
      denoise_final: finish with x0_fn(x, grid[-1]) when sigma(grid[-1]) > 0 (VE/EDM grids end above zero noise).
      return_trajectory: also return the (N + 1, B, *data) states x_0, ..., x_N (before the final denoise).
    Returns:
      samples (B, *data), and the trajectory if asked for.
    """
    solver = get_solver(method)
    if key is None:
        if solver.is_stochastic(options):
            raise ValueError(f"sampling method {method!r} with options {options} is stochastic: pass a PRNG key")
        key = jax.random.key(0)
    key = as_typed_keys(key, x_start.shape[0])
    grid = jnp.asarray(grid, jnp.float32)
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 times, got shape {grid.shape}")
    num_steps = grid.shape[0] - 1
    x = x_start
    step = jax.tree_util.Partial(solver.step, **options) if options else solver.step

    def body(carry, inputs):
        x, state = carry
        index, t, t_next = inputs
        ctx = StepContext(x0_fn, schedule, index, num_steps, fold_in(key, index))
        x_next, state = step(ctx, x, state, t, t_next)
        return (x_next, state), (x_next if return_trajectory else None)

    steps = (jnp.arange(num_steps), grid[:-1], grid[1:])
    (x, _), trajectory = jax.lax.scan(body, (x, solver.init(x, **options)), steps)
    if return_trajectory:
        trajectory = jnp.concatenate([x_start[None], trajectory])
    if denoise_final:
        t_end = grid[-1]
        x = jax.lax.cond(schedule.sigma(t_end) > 0,
                         lambda x: x0_fn(x, jnp.full(x.shape[:1], t_end)).astype(x.dtype), lambda x: x, x)
    return (x, trajectory) if return_trajectory else x


def make_sampler(x0_fn: X0Fn, schedule: Schedule, method: str = "dpmpp_2m", **options) -> Callable:
    """A jitted `sampler(noise, grid, key=None)`; compiles once per noise shape and grid length."""

    @jax.jit
    def sampler(noise: Array, grid: Array, key: Array | None = None) -> Array:
        return sample(x0_fn, schedule, noise, grid, method, key, **options)

    return sampler
