"""Image-to-image quality: PSNR, and the Gaussian-blur baseline a denoiser should beat.

    PSNR(x, y) = 10 log10(255^2 / mean((x - y)^2))   per image, uint8 images (N, H, W, C) in 0..255
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageFilter


def psnr(images: np.ndarray, references: np.ndarray, where: np.ndarray | bool = True) -> np.ndarray:
    """(N,) PSNR in dB of uint8 images against references of the same shape (inf where identical), over the
    pixels where `where` (bool, their shape) is True (e.g. the repainted region of an inpainting; default all)."""
    error = np.mean((np.asarray(images, np.float64) - np.asarray(references, np.float64)) ** 2,
                    axis=tuple(range(1, np.ndim(images))), where=where)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / error)


def gaussian_blur(images: np.ndarray, radius: float) -> np.ndarray:
    """uint8 images (N, H, W, C) blurred by a Gaussian of standard deviation `radius` pixels (PIL's filter)."""
    def blur(image: np.ndarray) -> np.ndarray:
        squeezed = image[..., 0] if image.shape[-1] == 1 else image
        blurred = np.asarray(PIL.Image.fromarray(squeezed).filter(PIL.ImageFilter.GaussianBlur(radius)))
        return blurred.reshape(image.shape)

    return np.stack([blur(image) for image in np.asarray(images, np.uint8)])


def best_blur(noisy: np.ndarray, clean: np.ndarray,
              radii: Sequence[float] = (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)) -> tuple[float, float]:
    """(radius, mean PSNR) of the Gaussian blur of `noisy` that scores best against `clean`: the classical
    baseline, chosen with the clean images in hand (so it is optimistic)."""
    scores = {radius: float(np.mean(psnr(gaussian_blur(noisy, radius), clean))) for radius in radii}
    radius = max(scores, key=scores.get)
    return radius, scores[radius]
