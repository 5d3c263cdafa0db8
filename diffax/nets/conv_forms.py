"""Convolutions with `nn.Conv`'s parameters, computed in another form than cuDNN's convolution of the input as
given (speed options, off unless a recipe turns them on; the tests check each against `nn.Conv`):

  MatmulConv3x3      a 3x3 convolution as matrix products, for a thin side (few input or output channels);
  UpsampledConv3x3   a 3x3 convolution of the nearest-neighbour 2x upsampled input, on the low-resolution grid.

Dtypes as every diffax layer (`diffax.nets.layers`): `dtype` computes, `param_dtype` stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MatmulConv3x3(nn.Module):
    """A 3x3 convolution (stride 1, zero padding 1) as nn.Conv's, parameters `kernel` (3, 3, C_in, C_out) and
    `bias` (C_out,) included, computed as matrix products. For a thin side (the UNet's stem from 3 channels, its
    head to 3), cuDNN pads the channels and picks slow kernels (benchmarks/NOTES.md, session 9); here, for
    C_in <= C_out, the 9 shifted copies of the padded input, stacked on the channel axis (B, H, W, 9 C_in), times
    the kernel as a (9 C_in, C_out) matrix; otherwise the input times the kernel as a (C_in, 9 C_out) matrix, whose
    9 slices of C_out channels, padded and shifted, add up:

        y[i, j] = sum_{a, b} (x @ kernel[a, b])_pad[i + a, j + b]       (x_pad @ W = (x @ W)_pad for zero padding)
    """

    features: int
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C_in) -> (B, H, W, features)."""
        channels, (height, width) = x.shape[-1], x.shape[1:3]
        kernel = self.param("kernel", self.kernel_init, (3, 3, channels, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        pad = ((0, 0), (1, 1), (1, 1), (0, 0))
        if channels <= self.features:
            padded = jnp.pad(x, pad)
            patches = jnp.concatenate([padded[:, a:a + height, b:b + width] for a in range(3) for b in range(3)],
                                      axis=-1)
            y = patches @ kernel.reshape(9 * channels, self.features)
        else:
            taps = jnp.pad(x @ kernel.transpose(2, 0, 1, 3).reshape(channels, 9 * self.features), pad)
            y = sum(taps[:, a:a + height, b:b + width, (3 * a + b) * self.features:(3 * a + b + 1) * self.features]
                    for a in range(3) for b in range(3))
        return y + bias


# Which low-resolution rows (offsets -1, 0, +1) the 3 kernel rows of a 3x3 convolution read after nearest 2x
# upsampling, for even (phase 0) and odd (phase 1) output rows: phase 0 reads rows (i-1, i, i), phase 1 (i, i, i+1).
SUBPIXEL_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)  # (phase, 2 taps, 3 rows)


class UpsampledConv3x3(nn.Module):
    """A 3x3 convolution (zero padding 1) of the nearest-neighbour 2x upsampled input, with nn.Conv's parameters
    (`kernel` (3, 3, C_in, C_out), `bias`), computed on the low-resolution grid as four 2x2 convolutions, one per
    output phase (a, b) = (row, column) parity (sub-pixel convolution; Shi et al. 2016, Odena et al. 2016):

        y[2i + a, 2j + b] = sum_{p, q} x_pad[i + a + p, j + b + q] K_ab[p, q]
        K_ab[p, q] = sum_{r, s} T_a[p, r] T_b[q, s] W[r, s]

    T = SUBPIXEL_TAPS, x_pad padded by 1, p and q in {0, 1}. The same function as `nn.Conv(3x3)(upsample_2d(x))`
    with 16 taps per low-resolution pixel instead of 36, and no upsampled copy of the input, which XLA cannot fuse
    into cuDNN's convolution and so writes out (benchmarks/NOTES.md, session 13).
    """

    features: int
    kernel_init: Callable[..., jax.Array] = nn.initializers.xavier_uniform()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C_in) -> (B, 2H, 2W, features)."""
        batch, height, width, channels = x.shape
        kernel = self.param("kernel", self.kernel_init, (3, 3, channels, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        phase_kernels = jnp.einsum("apr,bqs,rsio->abpqio", SUBPIXEL_TAPS, SUBPIXEL_TAPS, kernel)
        x, phase_kernels, bias = nn.dtypes.promote_dtype(x, phase_kernels, bias, dtype=self.dtype)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        phases = [[jax.lax.conv_general_dilated(padded[:, a:a + height + 1, b:b + width + 1], phase_kernels[a, b],
                                                (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                   for b in range(2)] for a in range(2)]
        y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (B, H, 2, W, 2, features)
        return y.reshape(batch, 2 * height, 2 * width, self.features) + bias
