"""The optimizer: AdamW (Loshchilov & Hutter 2019) with linear warmup, constant or cosine decay, global-norm clipping.

    lr(s) = lr_max * min(1, (s + 1) / warmup)                                    'constant'
    lr(s) = lr_max * min(1, (s + 1) / warmup) * [f + (1 - f) (1 + cos(pi p)) / 2]   'cosine', p = s / num_steps,
                                                                                 f = end_learning_rate_fraction
Clipping rescales the gradient g to g * min(1, c / ||g||_2) before Adam sees it (Pascanu et al. 2013).

An autoencoder run (config.task = 'autoencoder') trains two networks with two such optimizers, as LDM does (one Adam
for the encoder and decoder, one for the discriminator, betas (0.5, 0.9) in its recipes): `task_optimizer` labels
the parameter tree's top-level parts and gives each its own AdamW state (`optax.multi_transform`), so one update
applies both in one jitted step; the log-variance of the loss is frozen unless autoencoder.learn_logvar.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

DECAYS = ("constant", "cosine")
AUTOENCODER_GROUPS = ("autoencoder", "discriminator")  # Top-level keys of an autoencoder run's params.


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """lr(step) of the module docstring, from config.optim and the run's number of steps: optax's linear ramp
    (1 / warmup at step 0 to 1 at step warmup - 1) times its cosine decay (alpha = f) or the constant peak."""
    if optim.decay not in DECAYS:
        raise ValueError(f"optim.decay {optim.decay!r}: expected one of {DECAYS}")
    warmup = max(int(optim.warmup_steps), 1)
    ramp = optax.linear_schedule(1.0 / warmup, 1.0, transition_steps=warmup - 1)
    if optim.decay == "constant":
        decay = optax.constant_schedule(optim.learning_rate)
    else:
        decay = optax.cosine_decay_schedule(optim.learning_rate, max(num_steps, 1),
                                            alpha=optim.end_learning_rate_fraction)
    return lambda step: jnp.asarray(ramp(step) * decay(step), jnp.float32)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with the schedule above; the train step clips the gradient first (`clip_by_global_norm`)."""
    return optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay)


def task_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of the config's task: `make_optimizer`, or for an autoencoder run one AdamW of config.optim
    per group of `AUTOENCODER_GROUPS` over params {"autoencoder", "discriminator", "logvar"} (module docstring)."""
    adamw = make_optimizer(config.optim, config.train.num_steps)
    if config.get("task") != "autoencoder":
        return adamw
    learn_logvar = config.autoencoder.learn_logvar

    def labels(params: dict[str, Any]) -> dict[str, Any]:
        return {"autoencoder": jax.tree.map(lambda _: "autoencoder", params["autoencoder"]),
                "discriminator": jax.tree.map(lambda _: "discriminator", params["discriminator"]),
                "logvar": "autoencoder" if learn_logvar else "frozen"}

    return optax.multi_transform({"autoencoder": adamw, "discriminator": adamw, "frozen": optax.set_to_zero()},
                                 labels)


def clip_by_global_norm(grads, norm: jax.Array, max_norm: float):
    """grads * min(1, max_norm / norm) (max_norm 0: unchanged), with `norm` = ||grads||_2 computed once by the
    caller, which also logs it (optax's clipping transformation would compute it a second time)."""
    if max_norm <= 0:
        return grads
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
