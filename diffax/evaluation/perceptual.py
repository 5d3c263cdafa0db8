"""Perceptual distances for the autoencoder's reconstruction loss, by name: `perceptual_distance(name, weights)`.

Each is a function distance(x, x_hat) -> (B,) of images (B, H, W, C) in [-1, 1], 0 for identical images, that the
autoencoder loss adds to its L1 term (`diffax.train.autoencoder_step`):

    ms_ssim   1 - MS-SSIM(x, x_hat) with data range 2 (`diffax.evaluation.ssim`; fewer scales on small images):
              needs no weights, so it is the offline default
    lpips     LPIPS (Zhang et al. 2018) on VGG16 features, LDM's choice; its weights are converted from the public
              VGG16 and LPIPS linear-layer files and passed as `weights` (a path): until diffax has the network,
              asking for it is an error naming the weights it would need
    none      no perceptual term (perceptual_weight is then ignored)
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from diffax.evaluation import ssim

Distance = Callable[[jax.Array, jax.Array], jax.Array]


def _ms_ssim_distance(weights: str) -> Distance:
    del weights  # Needs none.
    return lambda x, x_hat: 1.0 - ssim.ms_ssim(x, x_hat, data_range=2.0)


def _lpips_distance(weights: str) -> Distance:
    what = f"the weights file {weights!r}" if weights else "a weights file (config.autoencoder.lpips_weights)"
    raise ValueError(f"perceptual loss 'lpips' needs {what} converted from the public VGG16 and LPIPS linear-layer "
                     f"weights, and diffax's LPIPS network, which is not wired in yet; use "
                     f"config.autoencoder.perceptual = 'ms_ssim' (offline) or 'none'")


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
