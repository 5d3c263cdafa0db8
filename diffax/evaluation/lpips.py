"""LPIPS, the learned perceptual image patch similarity (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric"), version 0.1 on VGG16, as the `lpips` package computes `LPIPS(net='vgg')`:

    x -> (x - shift) / scale                  per channel, shift (-0.030, -0.088, -0.188), scale (0.458, 0.448,
                                              0.450): images in [-1, 1] to ImageNet's normalization ("ScalingLayer")
    f_l(x), l = 1..5                          VGG16 (Simonyan & Zisserman 2015) activations relu1_2, relu2_2,
                                              relu3_3, relu4_3, relu5_3 (torchvision's `features[:30]`)
    n_l = f_l / (||f_l||_channels + 1e-10)    unit length over channels at every pixel
    d(x, y) = sum_l mean_(h, w) sum_c w_(l, c) (n_l(x) - n_l(y))_c^2     w_l >= 0: the learned linear layers

Weights: torchvision's `vgg16` state dict (`features.N.weight`; the classifier is not used) and the lpips package's
`weights/v0.1/vgg.pth` (`lin0.model.1.weight` ... `lin4`, (1, C, 1, 1) each); `python -m diffax.convert lpips
VGG16.pth LIN.pth OUT.npz` writes them as one flat `.npz` (`params/conv1_1/kernel`, ..., `params/lin_0/kernel`).
No weights ship with diffax: the VGG16 weights are a torchvision download.

The channel norm is sqrt(max(sum_c f^2, 1e-30)) + 1e-10: the same value as the package's (the floor is far below
the 1e-10 added), but a finite gradient where a pixel's features are all zero (ReLU), where the package's sqrt
gives NaN. Convolutions in float32 run at full precision (XLA on GPUs would otherwise round to TF32).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax import weights

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
# VGG16's convolutions by block (name, output channels); each block but the last ends in a 2x2 max pool. The taps
# are the last ReLU of every block.
VGG16_BLOCKS = (
    (("conv1_1", 64), ("conv1_2", 64)),
    (("conv2_1", 128), ("conv2_2", 128)),
    (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
    (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
    (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
# torchvision's vgg16 `features` indices of the same convolutions (ReLUs and pools sit between them).
TORCHVISION_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk: x (B, H, W, 3), ImageNet-normalized -> the 5 taps relu1_2 .. relu5_3, (B, H, W,
    64), (B, H/2, W/2, 128), (B, H/4, W/4, 256), (B, H/8, W/8, 512), (B, H/16, W/16, 512) (pools floor odd sizes)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
        taps = []
        for index, block in enumerate(VGG16_BLOCKS):
            if index:
                x = nn.max_pool(x, (2, 2), (2, 2))
            for name, features in block:
                x = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                    precision=precision, name=name)(x))
            taps.append(x)
        return taps


def _unit_channels(features: jax.Array) -> jax.Array:
    """features / (||features|| over channels + 1e-10), in float32 (module docstring for the floor)."""
    features = features.astype(jnp.float32)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(features ** 2, axis=-1, keepdims=True), 1e-30))
    return features / (norm + NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 on VGG16: images x, y (B, H, W, 3) in [-1, 1], H and W >= 16 -> distances (B,) float32 (module
    docstring). `per_layer=True` gives the 5 layers' terms (5, B) instead of their sum."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, per_layer: bool = False) -> jax.Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 16:
            raise ValueError(f"LPIPS of images of shapes {x.shape} and {y.shape}: expected two (B, H, W, 3) of one "
                             "shape, H and W at least 16")
        shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
        both = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale
        taps = VGG16Features(self.dtype, name="vgg16")(both.astype(self.dtype))
        terms = []
        for index, tap in enumerate(taps):
            tap_x, tap_y = jnp.split(_unit_channels(tap), 2)
            weighted = nn.Conv(1, (1, 1), use_bias=False, precision=jax.lax.Precision.HIGHEST,
                               name=f"lin_{index}")((tap_x - tap_y) ** 2)
            terms.append(jnp.mean(weighted, axis=(1, 2, 3)))
        terms = jnp.stack(terms)
        return terms if per_layer else terms.sum(axis=0)


@functools.cache
def variable_shapes() -> dict[str, tuple[int, ...]]:
    """The flat variable names ('params/vgg16/conv1_1/kernel', 'params/lin_0/kernel', ...) -> shapes."""
    images = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    return weights.variable_shapes(LPIPS(), images, images)


def check_variables(flat: Mapping[str, Any], source: str) -> None:
    """Raise ValueError naming `source` and every missing, unexpected or misshapen variable."""
    weights.check_variables(flat, variable_shapes(), "a set of LPIPS (VGG16, v0.1) weights", source)


def variables_from_torch(vgg16: Mapping[str, np.ndarray], linear_layers: Mapping[str, np.ndarray],
                         source: str = "the state dicts") -> dict[str, np.ndarray]:
    """torchvision's vgg16 state dict (`features.N.weight`, `.bias`; `classifier.*` dropped) and the lpips linear
    layers (`linK.model.M.weight`, (1, C, 1, 1)) -> the flat float32 variables, convolutions OIHW -> HWIO; checked."""
    names = {index: name for index, (name, _) in
             zip(TORCHVISION_INDICES, (layer for block in VGG16_BLOCKS for layer in block))}
    flat = {}
    for key, value in vgg16.items():
        match = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if key.startswith("classifier."):
            continue
        if not match or int(match.group(1)) not in names:
            raise ValueError(f"{source}: unexpected VGG16 key {key!r} (expected features.N.weight/bias with N in "
                             f"{TORCHVISION_INDICES}, or classifier.*)")
        leaf = "kernel" if match.group(2) == "weight" else "bias"
        flat[f"params/vgg16/{names[int(match.group(1))]}/{leaf}"] = np.asarray(value, np.float32)
    for key, value in linear_layers.items():
        match = re.fullmatch(r"lin(\d)\.model\.\d\.weight", key)
        if not match:
            raise ValueError(f"{source}: unexpected LPIPS key {key!r} (expected linK.model.M.weight)")
        flat[f"params/lin_{match.group(1)}/kernel"] = np.asarray(value, np.float32)
    flat = {name: value.transpose(2, 3, 1, 0) if value.ndim == 4 else value for name, value in flat.items()}
    check_variables(flat, source)
    return flat


def load_variables(path: str) -> dict[str, Any]:
    """LPIPS's variables {'params': ...} from a converted `.npz`, checked."""
    flat = weights.read_flat(path, "LPIPS weights", "convert torchvision's vgg16 and the lpips package's "
                             "weights/v0.1/vgg.pth with `python -m diffax.convert lpips VGG16.pth LIN.pth OUT.npz`")
    check_variables(flat, repr(path))
    return weights.nest(flat)


def lpips_distance(variables: Mapping[str, Any], x: jax.Array, y: jax.Array, *,
                   dtype: Any = jnp.float32) -> jax.Array:
    """LPIPS distances (B,) of images x, y (B, H, W, 3) in [-1, 1]: pure in `variables` (from `load_variables`), so a
    jitted training step can take them as an argument rather than embed 59 MB of constants."""
    return LPIPS(dtype).apply(variables, x, y)


_jitted_distance = jax.jit(lpips_distance, static_argnames="dtype")


def lpips_fn(weights_path: str, *, dtype: Any = jnp.float32) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """fn(x, y) -> LPIPS distances (B,) for images (B, H, W, 3) in [-1, 1], NHWC; jit-able and differentiable in x
    and y; called outside jit, it runs compiled (once per shape). The weights are closed over: inside a caller's
    `jax.jit` they become constants of that program (slow to compile); a step that is compiled often should take
    them as an argument and call `lpips_distance`."""
    variables = jax.device_put(load_variables(weights_path))

    def distance(x: jax.Array, y: jax.Array) -> jax.Array:
        return _jitted_distance(variables, x, y, dtype=dtype)

    return distance
