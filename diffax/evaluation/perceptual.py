"""Perceptual distances for the autoencoder's reconstruction loss, by name: `perceptual_distance(name, weights)`.

Each is a function distance(x, x_hat) -> (B,) of images (B, H, W, C) in [-1, 1], 0 for identical images, that the
autoencoder loss adds to its L1 term (`diffax.train.autoencoder_step`):

    ms_ssim   1 - MS-SSIM(x, x_hat) with data range 2 (`diffax.evaluation.ssim`; fewer scales on small images):
              needs no weights, so it is the offline default
    lpips     LPIPS v0.1 on VGG16 (Zhang et al. 2018; `diffax.evaluation.lpips`), LDM's choice; `weights` is the
              path of the `.npz` that `python -m diffax.convert lpips VGG16.pth LIN.pth OUT.npz` writes from the
              public VGG16 and LPIPS linear-layer files. Grayscale images are repeated to 3 channels.
    none      no perceptual term (perceptual_weight is then ignored)

The LPIPS weights (59 MB) are closed over, so they are constants of the training step's program: it compiles once
per run, where passing them as an argument would change the step's signature for one loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

import jax.numpy as jnp

from diffax.evaluation import lpips, ssim

Distance = Callable[[jax.Array, jax.Array], jax.Array]


def _ms_ssim_distance(weights: str) -> Distance:
    del weights  # Needs none.
    return lambda x, x_hat: 1.0 - ssim.ms_ssim(x, x_hat, data_range=2.0)


def _lpips_distance(weights: str) -> Distance:
    if not weights:
        raise ValueError("perceptual loss 'lpips' needs its weights: set config.autoencoder.lpips_weights to the .npz "
                         "of `python -m diffax.convert lpips VGG16.pth LIN.pth OUT.npz`")
    variables = lpips.load_variables(weights)

    def distance(x: jax.Array, x_hat: jax.Array) -> jax.Array:
        if x.shape[-1] == 1:
            x, x_hat = jnp.repeat(x, 3, axis=-1), jnp.repeat(x_hat, 3, axis=-1)
        return lpips.lpips_distance(variables, x, x_hat)

    return distance


PERCEPTUAL_LOSSES: dict[str, Callable[[str], Distance | None]] = {
    "ms_ssim": _ms_ssim_distance,
    "lpips": _lpips_distance,
    "none": lambda weights: None,
}


def perceptual_distance(name: str, weights: str = "") -> Distance | None:
    """The distance called `name` in PERCEPTUAL_LOSSES (None for 'none'); `weights`: a path, where it needs one."""
    if name not in PERCEPTUAL_LOSSES:
        raise ValueError(f"unknown perceptual loss {name!r}; expected one of {sorted(PERCEPTUAL_LOSSES)}")
    return PERCEPTUAL_LOSSES[name](weights)
