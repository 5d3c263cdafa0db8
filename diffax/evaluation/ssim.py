"""Structural similarity: SSIM (Wang et al. 2004) and multi-scale SSIM (Wang, Simoncelli & Bovik 2003), in jax.

On images x, y (B, H, W, C) with a Gaussian window w (11 taps, sigma 1.5, normalized) applied to each channel
without padding ('valid': the map is (H - 10) x (W - 10), skimage's `structural_similarity` cropped the same way):

    mu_x = w * x,   s_xx = w * x^2 - mu_x^2,   s_xy = w * (x y) - mu_x mu_y        (local, population moments)
    l  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)                               luminance
    cs = (2 s_xy + C2) / (s_xx + s_yy + C2)                                        contrast-structure
    C1 = (0.01 L)^2,  C2 = (0.03 L)^2,  L the data range (255 for uint8, 2 for [-1, 1])
    SSIM = mean over pixels and channels of l * cs

MS-SSIM: M scales, each after a 2x2 average pooling of the last (odd edges dropped, as TensorFlow's
`ssim_multiscale`); per channel, cs_j = mean cs at scale j and ssim_M = mean l * cs at the coarsest,

    MS-SSIM = mean over channels of  prod_(j < M) max(cs_j, eps)^(w_j) * max(ssim_M, eps)^(w_M)

with the paper's weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) for M = 5. Small images cannot have 5 scales
(the window needs 11 pixels at the coarsest): `num_scales` keeps the scales whose side is at least the window
(32x32 -> 2 scales: 32 and 16; 176 or more -> 5) and `scale_weights` renormalizes the first M weights to sum 1.
The floor eps = 1e-6 replaces the ReLU of pytorch_msssim / torchmetrics: negative means (rare, on unrelated images)
would give NaN powers, and a power of exactly 0 an infinite gradient, which a training loss cannot have.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

K1, K2 = 0.01, 0.03
WINDOW_SIZE, WINDOW_SIGMA = 11, 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
POWER_FLOOR = 1e-6


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """(size,) float32 exp(-d^2 / (2 sigma^2)) for offsets d from the centre, normalized to sum 1."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-offsets**2 / (2 * sigma**2))
    return (window / window.sum()).astype(np.float32)


def _filter(images: jax.Array, window: np.ndarray) -> jax.Array:
    """The separable window applied to every channel without padding: (B, H, W, C) -> (B, H - k + 1, W - k + 1, C)."""
    batch, height, width, channels = images.shape
    planes = images.transpose(0, 3, 1, 2).reshape(batch * channels, 1, height, width)
    size = len(window)
    for kernel in (window.reshape(1, 1, size, 1), window.reshape(1, 1, 1, size)):
        planes = jax.lax.conv_general_dilated(planes, jnp.asarray(kernel, images.dtype), (1, 1), "VALID",
                                              precision=jax.lax.Precision.HIGHEST)
    return planes.reshape(batch, channels, *planes.shape[2:]).transpose(0, 2, 3, 1)


def _luminance_and_contrast(x: jax.Array, y: jax.Array, data_range: float, window: np.ndarray
                            ) -> tuple[jax.Array, jax.Array]:
    """The maps l and cs (B, H', W', C) of the module docstring."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    s_xx = _filter(x * x, window) - mu_x**2
    s_yy = _filter(y * y, window) - mu_y**2
    s_xy = _filter(x * y, window) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    contrast = (2 * s_xy + c2) / (s_xx + s_yy + c2)
    return luminance, contrast


def _check(x: jax.Array, y: jax.Array, smallest: int) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"SSIM of shapes {x.shape} and {y.shape}: expected two image batches (B, H, W, C) of "
                         f"one shape")
    if min(x.shape[1:3]) < smallest:
        raise ValueError(f"SSIM of images {x.shape[1]}x{x.shape[2]}: the {smallest}-pixel window needs sides of at "
                         f"least {smallest}")


def ssim(x: jax.Array, y: jax.Array, *, data_range: float, window_size: int = WINDOW_SIZE,
         sigma: float = WINDOW_SIGMA) -> jax.Array:
    """(B,) SSIM of images x, y (B, H, W, C) (module docstring), averaged over pixels and channels."""
    _check(x, y, window_size)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    luminance, contrast = _luminance_and_contrast(x, y, data_range, gaussian_window(window_size, sigma))
    return jnp.mean(luminance * contrast, axis=(1, 2, 3))


def num_scales(side: int, window_size: int = WINDOW_SIZE, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Scales of MS-SSIM for images whose smaller side is `side`: those still at least `window_size` wide."""
    if side < window_size:
        raise ValueError(f"MS-SSIM of images with a side of {side}: the {window_size}-pixel window needs at least "
                         f"{window_size}")
    return min(max_scales, 1 + int(np.floor(np.log2(side / window_size))))


def scale_weights(scales: int) -> tuple[float, ...]:
    """The first `scales` of the paper's weights, renormalized to sum 1 (all five: the paper's, which sum to 1)."""
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], np.float64)
    return tuple(float(w) for w in weights / weights.sum())


def ms_ssim(x: jax.Array, y: jax.Array, *, data_range: float, weights: tuple[float, ...] | None = None,
            window_size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> jax.Array:
    """(B,) MS-SSIM of images x, y (B, H, W, C) (module docstring); weights per scale, finest first (default
    `scale_weights(num_scales(min(H, W)))`)."""
    weights = weights or scale_weights(num_scales(min(x.shape[1:3]), window_size))
    _check(x, y, window_size * 2 ** (len(weights) - 1))
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    window = gaussian_window(window_size, sigma)
    log_score = 0.0
    for scale, weight in enumerate(weights):
        if scale:
            x, y = _average_pool(x), _average_pool(y)
        luminance, contrast = _luminance_and_contrast(x, y, data_range, window)
        last = scale == len(weights) - 1
        per_channel = jnp.mean(luminance * contrast if last else contrast, axis=(1, 2))  # (B, C)
        log_score = log_score + weight * jnp.log(jnp.maximum(per_channel, POWER_FLOOR))
    return jnp.mean(jnp.exp(log_score), axis=-1)


def _average_pool(images: jax.Array) -> jax.Array:
    """2x2 mean pooling with stride 2, odd last rows / columns dropped: (B, H, W, C) -> (B, H // 2, W // 2, C)."""
    batch, height, width, channels = images.shape
    images = images[:, :height // 2 * 2, :width // 2 * 2]
    return images.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))
