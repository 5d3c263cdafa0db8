"""The optimizer: AdamW (Loshchilov & Hutter 2019) with linear warmup, constant or cosine decay, global-norm clipping.

    lr(s) = lr_max * min(1, (s + 1) / warmup)                                    'constant'
    lr(s) = lr_max * min(1, (s + 1) / warmup) * [f + (1 - f) (1 + cos(pi p)) / 2]   'cosine', p = s / num_steps,
                                                                                 f = end_learning_rate_fraction
Clipping rescales the gradient g to g * min(1, c / ||g||_2) before Adam sees it (Pascanu et al. 2013).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

DECAYS = ("constant", "cosine")


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """lr(step) of the module docstring, from config.optim and the run's number of steps."""
    if optim.decay not in DECAYS:
        raise ValueError(f"optim.decay {optim.decay!r}: expected one of {DECAYS}")
    peak = optim.learning_rate
    warmup = max(int(optim.warmup_steps), 1)
    fraction = optim.end_learning_rate_fraction

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup)
        if optim.decay == "constant":
            return peak * ramp
        progress = jnp.clip(step / max(num_steps, 1), 0.0, 1.0)
        return peak * ramp * (fraction + (1.0 - fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

    return schedule


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with the schedule above; the train step clips the gradient first (`clip_by_global_norm`)."""
    return optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay)


def clip_by_global_norm(grads, norm: jax.Array, max_norm: float):
    """grads * min(1, max_norm / norm) (max_norm 0: unchanged), with `norm` = ||grads||_2 computed once by the
    caller, which also logs it (optax's clipping transformation would compute it a second time)."""
    if max_norm <= 0:
        return grads
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
