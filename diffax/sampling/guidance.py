"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper, with a guidance interval and rescaling.

    x0_guided = x0_uncond + scale (x0_cond - x0_uncond)

At fixed x_t this is the same combination in eps, v or score space, since each is affine in x0 with weights that
sum to one. scale 0 gives the unconditional denoiser, 1 the conditional one. Options:
  interval  (sigma_lo, sigma_hi): guide only where sigma~ = sigma / alpha lies in it, use the conditional denoiser
            elsewhere (Kynkäänniemi et al. 2024, in EDM's sigma);
  rescale   phi in [0, 1]: blend with the guided prediction rescaled to the conditional one's per-example standard
            deviation (Lin et al. 2023, eq. 15-17), applied here to x0.
Both branches run as one batched call of twice the batch, which is what an accelerator prefers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffax.schedules import Schedule, broadcast_to_data

Array = jax.Array


def classifier_free_guidance(x0_fn: Callable[[Array, Array, Any], Array], cond: Any, null_cond: Any,
                             scale: float | Array, schedule: Schedule, *,
                             interval: tuple[float, float] | None = None, rescale: float = 0.0):
    """Returns x0_fn_guided(x_t, t) from a conditional denoiser x0_fn(x_t, t, cond).

    cond and null_cond are pytrees with leading batch dimension B (e.g. labels and the null label)."""

    def guided(x: Array, t: Array) -> Array:
        batch = x.shape[0]
        both_cond = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond, null_cond)
        both = x0_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both_cond)
        x0_cond, x0_uncond = both[:batch], both[batch:]
        weight = jnp.full(t.shape, scale, x.dtype)
        if interval is not None:
            alpha, sigma = schedule.alpha_sigma(t)
            sigma_tilde = sigma / alpha
            weight = jnp.where((sigma_tilde > interval[0]) & (sigma_tilde <= interval[1]), weight, 1.0)
        weight = broadcast_to_data(weight, x)
        x0_guided = x0_uncond + weight * (x0_cond - x0_uncond)
        if rescale:
            axes = tuple(range(1, x.ndim))
            std_ratio = jnp.std(x0_cond, axis=axes, keepdims=True) / jnp.std(x0_guided, axis=axes, keepdims=True)
            x0_guided = rescale * x0_guided * std_ratio + (1.0 - rescale) * x0_guided
        return x0_guided

    return guided
