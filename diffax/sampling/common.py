"""What every solver step shares: the step context, the denoiser call and the noise-prediction identity.

A solver is a pair (init, step): `init(x) -> state` and
`step(ctx, x, state, t, t_next, **options) -> (x_next, state)` with scalar times t > t_next. State carries what
multistep solvers remember between steps (earlier denoiser outputs), as a fixed-shape pytree for `lax.scan`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffax.schedules import Schedule

Array = jax.Array
X0Fn = Callable[[Array, Array], Array]


class StepContext(NamedTuple):
    """x0_fn(x_t (B, ...), t (B,)) -> x0_hat; index of this step in [0, num_steps); key for this step alone."""

    x0_fn: X0Fn
    schedule: Schedule
    index: Array
    num_steps: int
    key: Array


def denoise(ctx: StepContext, x: Array, t: Array) -> Array:
    """Calls the denoiser at the scalar time t broadcast over the batch."""
    return ctx.x0_fn(x, jnp.full(x.shape[:1], t, jnp.float32))


def eps_from_x0(x: Array, x0_hat: Array, alpha: Array, sigma: Array) -> Array:
    """eps_hat = (x_t - alpha x0_hat) / sigma."""
    return (x - alpha * x0_hat) / sigma


def no_state(x: Array) -> tuple:
    return ()


class Solver(NamedTuple):
    """A registered solver: its step, its state initializer and whether given options make it random."""

    step: Callable
    init: Callable[[Array], object] = no_state
    is_stochastic: Callable[[dict], bool] = lambda options: False
