"""Per-example preprocessing (numpy, runs in grain's reader threads or worker processes).

Images arrive as uint8 (H, W, C) and leave as float32 in [-1, 1]: `x = pixel / 127.5 - 1`, the DDPM convention
(Ho et al. 2020, Sec. 3.3).
"""

import dataclasses

import grain
import numpy as np
import PIL.Image


def center_crop_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crops the largest centred window with the aspect ratio of `size`, then resizes it to `size` (bicubic).

    Args:
      image: uint8 (H, W, C).
      size: target (height, width).
    Returns:
      uint8 (height, width, C); `image` itself when it already has that size.
    """
    height, width = image.shape[:2]
    if (height, width) == tuple(size):
        return image
    crop_height = min(height, round(width * size[0] / size[1]))
    crop_width = min(width, round(height * size[1] / size[0]))
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    window = image[top : top + crop_height, left : left + crop_width]
    channels = [
        np.asarray(PIL.Image.fromarray(window[..., c]).resize(size[::-1], PIL.Image.Resampling.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def pad_to_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pads (black) a uint8 (H, W, C) image to `size` (height, width), centred (an odd excess puts the extra
    row / column at the bottom / right): 28x28 MNIST -> 32x32 with 2 pixels on every side."""
    height, width = image.shape[:2]
    if height > size[0] or width > size[1]:
        raise ValueError(f"image of size {height}x{width} does not fit pad_to {size[0]}x{size[1]}")
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return np.pad(image, ((top, size[0] - height - top), (left, size[1] - width - left), (0, 0)))


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class PreprocessImage(grain.transforms.RandomMap):
    """TFDS example -> {"image": float32 (h, w, C) in [-1, 1], "label": int32 ()[, "context": float32 (L, E)]}.

    Attributes:
      image_size: (h, w) to centre-crop and resize to, or None to keep the stored size.
      pad_to: (h, w) to zero-pad to after that (`pad_to_size`), or None.
      random_flip: flip left-right with probability 1/2.
      image_key: the image feature's name.
      label_key: the label feature's name, or None for unlabelled data (label 0).
      context_key: an embedding-sequence feature passed on as "context", or None.
    """

    image_size: tuple[int, int] | None
    random_flip: bool
    image_key: str = "image"
    label_key: str | None = "label"
    context_key: str | None = None
    pad_to: tuple[int, int] | None = None

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = element[self.image_key]
        if self.image_size is not None:
            image = center_crop_resize(image, self.image_size)
        if self.pad_to is not None:
            image = pad_to_size(image, self.pad_to)
        if self.random_flip and rng.random() < 0.5:
            image = image[:, ::-1]
        label = element[self.label_key] if self.label_key else 0
        example = {"image": to_unit_range(image), "label": np.int32(label)}
        if self.context_key:
            example["context"] = np.asarray(element[self.context_key], np.float32)
        return example
