"""What every solver step shares: the step context, the denoiser call, the noise-prediction identity and the noise.

A solver is a pair (init, step): `init(x, **options) -> state` and
`step(ctx, x, state, t, t_next, **options) -> (x_next, state)` with scalar times t > t_next. State carries what
multistep solvers remember between steps (earlier denoiser outputs), as a fixed-shape pytree for `lax.scan`.

Randomness. `ctx.key` is either one typed PRNG key for the whole batch or a (B,) batch of typed keys, one per example.
Every random draw of a solver goes through `gaussian_like` (and `split_key` where a step needs several draws): with
per-example keys, example i's draws come from key i alone, so a sample does not depend on the batch it is drawn in.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffax.schedules import Schedule

Array = jax.Array
X0Fn = Callable[[Array, Array], Array]


class StepContext(NamedTuple):
    """x0_fn(x_t (B, ...), t (B,)) -> x0_hat; index of this step in [0, num_steps); key for this step alone:
    a typed key of shape () for the whole batch, or (B,) typed keys, one per example."""

    x0_fn: X0Fn
    schedule: Schedule
    index: Array
    num_steps: int
    key: Array


def as_typed_keys(key: Array, batch: int) -> Array:
    """Normalizes a PRNG key argument: one key (typed, shape (); or raw uint32, shape (2,)) or per-example keys
    (typed, shape (B,); or raw uint32, shape (B, 2)). Returns typed keys of shape () or (B,)."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2):
            raise ValueError(f"key must be a PRNG key, (B,) keys, or raw uint32 of shape (2,) or (B, 2); "
                             f"got dtype {key.dtype} and shape {key.shape}")
        key = jax.random.wrap_key_data(key)
    if key.ndim > 1 or (key.ndim == 1 and key.shape[0] != batch):
        raise ValueError(f"per-example keys of shape {key.shape} do not match the batch of {batch} examples; "
                         f"expected one key or shape ({batch},)")
    return key


def fold_in(key: Array, data: Array | int) -> Array:
    """jax.random.fold_in on one key or on each of a (B,) batch of keys."""
    if key.ndim == 0:
        return jax.random.fold_in(key, data)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, data)


def split_key(key: Array, num: int = 2) -> Array:
    """(num, *key.shape) keys: jax.random.split of one key, or of each of a (B,) batch of keys."""
    if key.ndim == 0:
        return jax.random.split(key, num)
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num))(key), 0, 1)


def gaussian_like(key: Array, x: Array) -> Array:
    """Standard normal draws of x's shape and dtype; with (B,) keys, row i is drawn from key i only."""
    if key.ndim == 0:
        return jax.random.normal(key, x.shape, x.dtype)
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)


def denoise(ctx: StepContext, x: Array, t: Array) -> Array:
    """Calls the denoiser at the scalar time t broadcast over the batch."""
    return ctx.x0_fn(x, jnp.full(x.shape[:1], t, jnp.float32))


def eps_from_x0(x: Array, x0_hat: Array, alpha: Array, sigma: Array) -> Array:
    """eps_hat = (x_t - alpha x0_hat) / sigma."""
    return (x - alpha * x0_hat) / sigma


def no_state(x: Array, **options) -> tuple:
    return ()


class Solver(NamedTuple):
    """A registered solver: its step, its state initializer and whether given options make it random."""

    step: Callable
    init: Callable[..., object] = no_state
    is_stochastic: Callable[[dict], bool] = lambda options: False


def multistep_order(ctx: StepContext, order: int, num_earlier: Array, h: Array, sigma_next: Array,
                    lower_order_final: bool) -> Array:
    """The order a multistep solver of nominal `order` can take at this step: at most 1 + the number of earlier
    denoiser outputs it holds (warm-up: no extra denoiser call on the first steps), at most num_steps - index with
    lower_order_final (the last step is first order, the one before at most second: the steps of a trailing grid
    do not shrink in log-SNR at the end, where extrapolating from far-away outputs loses), and 1 onto sigma = 0, where
    h = lambda_next - lambda is infinite and only the first-order term has a limit."""
    order_now = jnp.minimum(order, num_earlier + 1)
    if lower_order_final:
        order_now = jnp.minimum(order_now, ctx.num_steps - ctx.index)
    return jnp.where(jnp.isfinite(h) & (sigma_next > 0), order_now, 1)


def history_init(x: Array, size: int) -> tuple[Array, Array]:
    """State of solvers that remember `size` earlier denoiser outputs and their half log-SNRs (-inf marks an empty
    slot): ((size, *x.shape) outputs, (size,) half log-SNRs)."""
    return jnp.zeros((size,) + x.shape, x.dtype), jnp.full((size,), -jnp.inf, jnp.float32)


def history_push(history: Array, half_log_snrs: Array, x0_hat: Array, half_log_snr: Array) -> tuple[Array, Array]:
    """Puts the newest output first and drops the oldest."""
    return (jnp.concatenate([x0_hat[None], history[:-1]]),
            jnp.concatenate([half_log_snr[None], half_log_snrs[:-1]]))


def num_earlier(half_log_snrs: Array) -> Array:
    """How many leading history slots are filled."""
    return jnp.sum(jnp.cumprod(jnp.isfinite(half_log_snrs)))
