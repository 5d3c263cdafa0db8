"""The KL-regularized autoencoder of latent diffusion: LDM's first stage and the Stable Diffusion VAE.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.1 and Appendix G:
an encoder maps x (B, H, W, C) to a diagonal Gaussian posterior over latents z (B, H/f, W/f, latent_channels),
f = 2^(len(channel_mult) - 1), and a decoder maps z back to images. Layout (NHWC; the module names are diffusers'
`AutoencoderKL`'s, so the Stable Diffusion weights map block by block):

    encoder     conv_in      Conv3x3 -> channels * channel_mult[0]
                down_blocks_l   per level l: num_res_blocks x ResBlock(channels * channel_mult[l]) (`resnets_j`),
                                then, except at the last level, Downsample: pad (0, 1, 0, 1), Conv3x3 stride 2
                mid_block    ResBlock, single-head self-attention, ResBlock (`resnets_0`, `attentions_0`, `resnets_1`)
                conv_norm_out, SiLU, conv_out  Conv3x3 -> 2 * latent_channels (mean and log-variance: "double z")
    quant_conv       Conv1x1, 2 * latent_channels -> 2 * latent_channels
    post_quant_conv  Conv1x1, latent_channels -> latent_channels
    decoder     conv_in      Conv3x3 -> channels * channel_mult[-1]
                mid_block    as the encoder's
                up_blocks_i  deepest level first, i = 0 .. levels - 1: (num_res_blocks + 1) x ResBlock
                                (`resnets_j`), then, except at the last, Upsample: nearest 2x, Conv3x3
                conv_norm_out, SiLU, conv_out  Conv3x3 -> out_channels

ResBlock is `layers.PreActBlock` (LDM's `ResnetBlock` without time embedding): Skip(x) + Conv3x3(SiLU(GN(Conv3x3(
SiLU(GN(x)))))), Skip a 1x1 convolution where the channels change. Every GroupNorm has 32 groups and eps 1e-6;
attention is only in the middle blocks (the published configs have attn_resolutions = []). Parameter names inside a
block are Flax's: `GroupNorm_0`, `Conv_0`, `GroupNorm_1`, `Conv_1`, `Conv_2` for diffusers' norm1, conv1, norm2,
conv2, conv_shortcut; the attention's GroupNorm and `q`, `k`, `v`, `out` for group_norm, to_q, to_k, to_v, to_out.0.

The posterior (`DiagonalGaussian`): moments = quant_conv(encoder(x)) split on channels into mean and log-variance,
the log-variance clipped to [-30, 20] (LDM's `DiagonalGaussianDistribution`);
    sample   z = mean + exp(logvar / 2) * eps,  eps ~ N(0, I)
    KL       KL(q(z|x) || N(0, I)) = 0.5 * sum_(h, w, c) (mean^2 + var - 1 - logvar)    per example
    NLL      -log q(z|x) = 0.5 * sum_(h, w, c) (log(2 pi) + logvar + (z - mean)^2 / var)

Presets (`diffax.nets.registry.AUTOENCODERS`), channels 128, num_res_blocks 2, float32 parameter counts:
    autoencoder_kl_f8   channel_mult (1, 2, 4, 4), 4 latent channels: 83,653,863, the count of diffusers'
                        AutoencoderKL for the Stable Diffusion VAE (block_out_channels (128, 256, 512, 512),
                        layers_per_block 2; `sum(p.numel())` of runwayml/stable-diffusion-v1-5's vae)
    autoencoder_kl_f4   channel_mult (1, 2, 4), 3 latent channels: 55,312,063, LDM's kl-f4
                        (configs/autoencoder/autoencoder_kl_64x64x3.yaml), by the same count of diffusers' layers
                        (`diffusers_count` in tests/nets/test_autoencoder.py, which reproduces 83,653,863 for f8)

Precision as every diffax network (`layers`): `dtype` computes, `param_dtype` stores; the posterior moments and the
reconstruction are float32. Initialization is diffax's (Xavier-uniform, residual branches starting at zero), not
PyTorch's defaults; converted weights replace it.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffax.nets.attention import AttentionImplementation, SpatialAttention
from diffax.nets.layers import Downsample, Dtype, PreActBlock, Upsample, group_norm, xavier_init

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the posterior log-variance
NORM_EPS = 1e-6


@flax.struct.dataclass
class DiagonalGaussian:
    """A Gaussian with diagonal covariance over latents: mean and logvar (B, h, w, c) float32 (module docstring)."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
        """moments (..., 2c): the first c channels are the mean, the last c the log-variance, clipped to
        `LOGVAR_RANGE`."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterization, Kingma & Welling 2014); mean's shape."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def _sum_per_example(self, values: jax.Array) -> jax.Array:
        return values.sum(axis=tuple(range(1, values.ndim)))

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over all but the batch axis -> (B,)."""
        return 0.5 * self._sum_per_example(self.mean ** 2 + self.var - 1.0 - self.logvar)

    def nll(self, z: jax.Array) -> jax.Array:
        """-log q(z) = 0.5 * sum(log(2 pi) + logvar + (z - mean)^2 / var) over all but the batch axis -> (B,)."""
        return 0.5 * self._sum_per_example(np.log(2 * np.pi) + self.logvar + (z - self.mean) ** 2 / self.var)


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """What every block of the encoder and the decoder shares; makes their layers (called inside a parent's
    `nn.compact` method, which adopts them)."""

    norm_groups: int
    dropout: float
    attention_implementation: AttentionImplementation
    subpixel_upsample: bool
    dtype: Dtype
    param_dtype: Dtype

    def conv(self, features: int, kernel: int, name: str) -> nn.Conv:
        pad = kernel // 2
        return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), kernel_init=xavier_init,
                       dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def res_block(self, channels: int, name: str) -> PreActBlock:
        return PreActBlock(channels, self.dropout, NORM_EPS, self.dtype, self.param_dtype, self.norm_groups,
                           name=name)

    def norm_out(self, channels: int) -> nn.GroupNorm:
        return group_norm(channels, NORM_EPS, self.param_dtype, name="conv_norm_out", groups=self.norm_groups)


class MidBlock(nn.Module):
    """ResBlock, self-attention (one head over all h * w pixels), ResBlock, at the lowest resolution; channels kept.
    x (B, h, w, C) -> (B, h, w, C)."""

    blocks: _Blocks

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b, channels = self.blocks, x.shape[-1]
        x = b.res_block(channels, "resnets_0")(x, train)
        x = SpatialAttention(None, 1.0, NORM_EPS, b.attention_implementation, b.dtype, b.param_dtype, b.norm_groups,
                             name="attentions_0")(x)
        return b.res_block(channels, "resnets_1")(x, train)


class ResampleBlock(nn.Module):
    """num_layers ResBlocks to `out_channels`, then Downsample (LDM's: pad bottom/right, stride-2 Conv3x3), Upsample
    (nearest, Conv3x3) or neither: diffusers' DownEncoderBlock2D / UpDecoderBlock2D."""

    blocks: _Blocks
    out_channels: int
    num_layers: int
    resample: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        b = self.blocks
        for index in range(self.num_layers):
            x = b.res_block(self.out_channels, f"resnets_{index}")(x, train)
        precision = dict(dtype=b.dtype, param_dtype=b.param_dtype)
        if self.resample == "down":
            x = Downsample(padding=((0, 1), (0, 1)), name="downsamplers_0", **precision)(x)
        elif self.resample == "up":
            x = Upsample(subpixel=b.subpixel_upsample, name="upsamplers_0", **precision)(x)
        return x


class _Coder(nn.Module):
    """The attributes of `Encoder` and `Decoder`; see `AutoencoderKL`."""

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    dropout: float = 0.0
    attention_implementation: AttentionImplementation = None
    subpixel_upsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def blocks(self) -> _Blocks:
        return _Blocks(self.norm_groups, self.dropout, self.attention_implementation, self.subpixel_upsample,
                       self.dtype, self.param_dtype)


class Encoder(_Coder):
    """x (B, H, W, C) -> posterior moments (B, H/f, W/f, 2 * latent_channels) in `dtype` (module docstring)."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b = self.blocks
        h = b.conv(self.channels * self.channel_mult[0], 3, "conv_in")(x.astype(self.dtype))
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            h = ResampleBlock(b, self.channels * mult, self.num_res_blocks, "down" if level < last else "none",
                              name=f"down_blocks_{level}")(h, train)
        h = MidBlock(b, name="mid_block")(h, train)
        h = nn.silu(b.norm_out(h.shape[-1])(h))
        return b.conv(2 * self.latent_channels, 3, "conv_out")(h)


class Decoder(_Coder):
    """out_channels: image channels. z (B, h, w, latent_channels) -> (B, f * h, f * w, out_channels) in `dtype`
    (module docstring)."""

    out_channels: int = 3

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        b = self.blocks
        h = b.conv(self.channels * self.channel_mult[-1], 3, "conv_in")(z.astype(self.dtype))
        h = MidBlock(b, name="mid_block")(h, train)
        for index, mult in enumerate(reversed(self.channel_mult)):
            resample = "up" if index < len(self.channel_mult) - 1 else "none"
            h = ResampleBlock(b, self.channels * mult, self.num_res_blocks + 1, resample,
                              name=f"up_blocks_{index}")(h, train)
        h = nn.silu(b.norm_out(h.shape[-1])(h))
        return b.conv(self.out_channels, 3, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """LDM's KL autoencoder (module docstring); defaults are the Stable Diffusion VAE (f = 8, 83,653,863 parameters).

    `model.apply(variables, x, method="encode")` gives the posterior, `method="decode"` images from latents.

    Attributes:
      channels: width of the first level (LDM's `ch`); level l has channels * channel_mult[l]
        (diffusers' `block_out_channels`).
      channel_mult: per-level multipliers; f = 2^(len - 1).
      num_res_blocks: ResBlocks per encoder level (the decoder has one more).
      latent_channels: z channels (LDM's z_channels = embed_dim; diffusers' latent_channels).
      out_channels: channels of the reconstruction.
      norm_groups: GroupNorm groups (32; must divide every width).
      dropout: inside the ResBlocks ('dropout' rng, train=True); 0 in the published configs.
      attention_implementation: 'xla', 'cudnn' or None (see diffax.nets.attention).
      subpixel_upsample: the decoder's upsampling convolutions on the low-resolution grid, same parameters (a speed
        option; see diffax.nets.conv_forms.UpsampledConv3x3).
      dtype, param_dtype: compute and parameter dtypes.
    """

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    out_channels: int = 3
    norm_groups: int = 32
    dropout: float = 0.0
    attention_implementation: AttentionImplementation = None
    subpixel_upsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def downsampling_factor(self) -> int:
        """f: the encoder halves H and W len(channel_mult) - 1 times."""
        return 2 ** (len(self.channel_mult) - 1)

    def setup(self):
        settings = dict(channels=self.channels, channel_mult=tuple(self.channel_mult),
                        num_res_blocks=self.num_res_blocks, latent_channels=self.latent_channels,
                        norm_groups=self.norm_groups, dropout=self.dropout,
                        attention_implementation=self.attention_implementation,
                        subpixel_upsample=self.subpixel_upsample, dtype=self.dtype, param_dtype=self.param_dtype)
        self.encoder = Encoder(**settings)
        self.decoder = Decoder(out_channels=self.out_channels, **settings)
        conv1x1 = functools.partial(nn.Conv, kernel_size=(1, 1), kernel_init=xavier_init, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
        self.quant_conv = conv1x1(2 * self.latent_channels)
        self.post_quant_conv = conv1x1(self.latent_channels)

    def encode(self, x: jax.Array, *, train: bool = False) -> DiagonalGaussian:
        """x (B, H, W, C), H and W multiples of f -> the posterior over z (B, H/f, W/f, latent_channels)."""
        f = self.downsampling_factor
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"AutoencoderKL input of shape {x.shape}: expected images (B, H, W, C) with H and W "
                             f"multiples of the downsampling factor {f}")
        return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x, train=train)))

    def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        """z (B, h, w, latent_channels) -> images (B, f * h, f * w, out_channels) float32."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"AutoencoderKL latents of shape {z.shape}: expected (B, h, w, {self.latent_channels})")
        return self.decoder(self.post_quant_conv(z.astype(self.dtype)), train=train).astype(jnp.float32)

    def __call__(self, x: jax.Array, *, sample_posterior: bool = False, key: jax.Array | None = None,
                 train: bool = False) -> tuple[jax.Array, DiagonalGaussian]:
        """x (B, H, W, C) -> (reconstruction (B, H, W, out_channels) float32, posterior): decodes a sample of the
        posterior (drawn with `key`) when sample_posterior, else its mode (the mean)."""
        posterior = self.encode(x, train=train)
        if sample_posterior and key is None:
            raise ValueError("AutoencoderKL(sample_posterior=True) needs a PRNG key: pass key=...")
        z = posterior.sample(key) if sample_posterior else posterior.mode()
        return self.decode(z, train=train), posterior
