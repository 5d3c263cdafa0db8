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


# The 3x3 kernel's rows (0, 1, 2) summed into each of the 4 taps of the transposed convolution: after nearest 2x
# upsampling, output row m reads low-resolution row r through kernel rows W_0 (m - 2r = 2), W_0 + W_1 (1),
# W_1 + W_2 (0) and W_2 (-1); tap t of the convolution below stands for m - 2r = 2 - t.
TRANSPOSED_TAPS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)  # (4 taps, 3 kernel rows)


class UpsampledConv3x3(nn.Module):
    """A 3x3 convolution (zero padding 1) of the nearest-neighbour 2x upsampled input, with nn.Conv's parameters
    (`kernel` (3, 3, C_in, C_out), `bias`), computed on the low-resolution grid as one transposed convolution
    (stride 2, 4x4 kernel; the sub-pixel convolution of Shi et al. 2016, Odena et al. 2016):

        y[m, n] = sum_{r, s} x[r, s] K[2 - (m - 2r), 2 - (n - 2s)]       (K zero outside 0..3)
        K[t, u] = sum_{a, b} T[t, a] T[u, b] W[a, b]                       T = TRANSPOSED_TAPS

    Per output phase (row and column parity) that is a 2x2 convolution of x: 16 taps per low-resolution pixel
    instead of 36, and no upsampled copy of the input, which XLA cannot fuse into cuDNN's convolution and so writes
    out. Written as an input-dilated convolution of the reversed kernel, which XLA's GPU backend hands to cuDNN as one
    backward-data (transposed) convolution. Four 2x2 convolutions of the padded input and an interleave, the same
    arithmetic, copied the four windows and wrote the interleaved output, and ran slower (benchmarks/NOTES.md,
    session 14).
    """

    features: int
    kernel_init: Callable[..., jax.Array] = nn.initializers.xavier_uniform()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C_in) -> (B, 2H, 2W, features)."""
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (3, 3, channels, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        # Built reversed and reversed back: XLA's GPU backend maps an input-dilated convolution with a computed
        # kernel to cuDNN's backward-data convolution only when that kernel is a spatial reverse.
        reversed_kernel = jnp.einsum("tr,us,rsio->tuio", TRANSPOSED_TAPS[::-1], TRANSPOSED_TAPS[::-1], kernel)
        x, reversed_kernel, bias = nn.dtypes.promote_dtype(x, reversed_kernel, bias, dtype=self.dtype)
        y = jax.lax.conv_general_dilated(x, jax.lax.rev(reversed_kernel, (0, 1)), (1, 1), ((2, 2), (2, 2)),
                                         lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias
