"""PNG output: image grids of samples in [-1, 1], and scatter plots of 2-D points."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
from etils import epath


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 1, scale: int = 1) -> np.ndarray:
    """Tiles images (N, H, W, C) with values in [-1, 1] into one uint8 (rows (H + p) + p, ..., C) image.

    columns defaults to ceil(sqrt(N)); each image is upsampled by `scale` (nearest) and framed by `padding` pixels.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"image_grid expects images of shape (N, H, W, C), got {images.shape}")
    images = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def scatter_image(points: np.ndarray, size: int = 256, extent: float | None = None) -> np.ndarray:
    """A uint8 (size, size, 1) image with a dark dot per 2-D point (N, 2), white background, axes centred on 0."""
    points = np.asarray(points, np.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"scatter_image expects points of shape (N, 2), got {points.shape}")
    extent = extent or float(np.percentile(np.abs(points), 99.5) * 1.1 + 1e-6)
    image = np.full((size, size), 255, np.uint8)
    pixels = np.round((points / extent * 0.5 + 0.5) * (size - 1)).astype(int)
    inside = (pixels >= 0).all(1) & (pixels < size).all(1)
    image[size - 1 - pixels[inside, 1], pixels[inside, 0]] = 0
    return image[..., None]


def save_png(image: np.ndarray, path: str) -> None:
    """Writes a uint8 (H, W, 1) or (H, W, 3) image (through etils.epath: a gs:// path writes to the bucket)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(file, format="PNG")


def samples_image(samples: np.ndarray, is_image: bool, columns: int | None = None) -> np.ndarray:
    """A uint8 grid of image samples (N, H, W, C) (upsampled to about 32 pixels a side), or a scatter plot of 2-D
    samples (N, 2)."""
    if is_image:
        return image_grid(samples, columns=columns, scale=max(1, 32 // samples.shape[1]))
    return scatter_image(samples)


def samples_png(samples: np.ndarray, path: str, is_image: bool, columns: int | None = None) -> np.ndarray:
    """Writes `samples_image` to `path`; returns the image."""
    image = samples_image(samples, is_image, columns)
    save_png(image, path)
    return image
