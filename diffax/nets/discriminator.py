"""The PatchGAN discriminator of the LDM autoencoder (taming-transformers' `NLayerDiscriminator`).

Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis" (the discriminator and its hinge loss,
used again by Rombach et al. 2022 for the KL autoencoder); the PatchGAN of Isola et al. 2017 (pix2pix). NHWC:

    conv_in    Conv4x4 stride 2 -> features, LeakyReLU(0.2)
    layer n    n = 1 .. num_layers: Conv4x4 (stride 2, stride 1 for n = num_layers, no bias)
                 -> features * min(2^n, 8), BatchNorm, LeakyReLU(0.2)
    conv_out   Conv4x4 stride 1 -> 1 logit per patch

Every convolution pads 1 pixel on each side, so x (B, H, W, C) -> logits (B, H / 2^num_layers - 2, W / ... - 2, 1):
256x256 images give a 30x30 map of logits, each seeing a 70x70 patch for num_layers 3.

Normalization: BatchNorm, as LDM trains it (`LPIPSWithDiscriminator(use_actnorm=False)`, the default none of the
published autoencoder configs changes), rather than taming's optional ActNorm, whose data-dependent initialization
needs a first batch before `init`. BatchNorm normalizes with the statistics of the batch while training
(`train=True`, which updates `batch_stats`; call with mutable=["batch_stats"]) and with their running averages
otherwise; under `jit` on sharded arrays the batch statistics are those of the global batch. PyTorch's defaults:
momentum 0.1 (Flax's 0.9), eps 1e-5; the running variance is Flax's biased one (PyTorch keeps the unbiased), which
only evaluation mode reads (LDM's loss module trains the discriminator and queries it in training mode).
Initialization as taming's `weights_init`: convolution kernels N(0, 0.02^2), BatchNorm scales N(1, 0.02^2),
biases 0.

Parameters for 3 input channels, 64 features, 3 layers: 2,765,633 (convolutions 2,763,841 + BatchNorm scale and
bias 2 x 896). The 2,764,737 often quoted for a 70x70 PatchGAN is pix2pix's with InstanceNorm (no norm parameters,
convolutions with bias: 2,763,841 + 896).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.nets.layers import Dtype

LEAKY_SLOPE = 0.2
INIT_STD = 0.02


def _normal_around_one(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    """BatchNorm scales N(1, 0.02^2), as taming's `weights_init`."""
    return 1.0 + INIT_STD * jax.random.normal(key, shape, dtype)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (module docstring): x (B, H, W, C) -> patch logits (B, H', W', 1) float32.

    Attributes:
      features: filters of the first convolution (taming's ndf); layer n has features * min(2^n, 8).
      num_layers: normalized layers after the first convolution (taming's n_layers); H and W must be at least
        3 * 2^num_layers (24 for 3 layers) for a non-empty map of logits.
      dtype, param_dtype: compute and parameter dtypes (BatchNorm outputs float32).
    """

    features: int = 64
    num_layers: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x (B, H, W, C) -> logits (B, H / 2^num_layers - 2, W / 2^num_layers - 2, 1) float32."""
        smallest = 3 * 2 ** self.num_layers
        if x.ndim != 4 or min(x.shape[1:3]) < smallest:
            raise ValueError(f"PatchDiscriminator input of shape {x.shape}: expected images (B, H, W, C) with H and "
                             f"W >= {smallest} for num_layers {self.num_layers}")
        conv = functools.partial(nn.Conv, kernel_size=(4, 4), padding=((1, 1), (1, 1)),
                                 kernel_init=nn.initializers.normal(INIT_STD), dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        h = nn.leaky_relu(conv(self.features, strides=(2, 2), name="conv_in")(x.astype(self.dtype)), LEAKY_SLOPE)
        for layer in range(1, self.num_layers + 1):
            stride = 2 if layer < self.num_layers else 1
            h = conv(self.features * min(2 ** layer, 8), strides=(stride, stride), use_bias=False,
                     name=f"conv_{layer}")(h)
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
                             param_dtype=self.param_dtype, scale_init=_normal_around_one, name=f"norm_{layer}")(h)
            h = nn.leaky_relu(h, LEAKY_SLOPE)
        return conv(1, name="conv_out")(h).astype(jnp.float32)
