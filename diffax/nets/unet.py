"""The U-Net score network: DDPM, ADM and DDPM++ (EDM's SongUNet) as configurations of one module.

Layout (Ronneberger et al. 2015, as DDPM, Ho et al. 2020):

    stem     Conv3x3 -> `channels`
    encoder  per level l: [down, l > 0] then num_res_blocks x (ResBlock(channels * mult[l]) [+ attention])
    middle   ResBlock, attention, ResBlock
    decoder  per level l, deepest first: [up, l < last] then (num_res_blocks + 1) x
             (concat the matching encoder activation, ResBlock [+ attention])
    head     GroupNorm, SiLU, Conv3x3 (zero-initialized)

The variants differ in a few switches (see `diffax.nets.registry` for the presets):

    DDPM (Ho et al. 2020)          additive conditioning, conv up/down, one attention head, skip_scale 1
    ADM (Dhariwal & Nichol 2021)   scale_shift, resample='resblock' (BigGAN), head_channels=64, labels
    DDPM++ (Song et al. 2021;      resample='resblock' with skip_projection, skip_scale 1/sqrt(2),
      EDM's SongUNet, Karras 2022)   decoder_attention='last'

Attention is placed by level index (`attention_levels`, 0 = full resolution), not by pixel size, so a network's
parameters do not depend on the image size it is called on. Images whose height or width is not a multiple of
2^(levels - 1) are zero-padded at the bottom/right and the output is cropped back: output shape == input shape.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.nets.attention import AttentionImplementation, SpatialAttention
from diffax.nets.conv_forms import MatmulConv3x3
from diffax.nets.embeddings import ConditioningEmbedding, EmbeddingType, LabelConditioning, labels_and_context
from diffax.nets.layers import (
    Downsample,
    Dtype,
    ResBlock,
    Upsample,
    group_norm,
    maybe_remat,
    norm_output_dtype,
    pad_to_multiple,
    xavier_init,
    zero_init,
)


class UNet(nn.Module):
    """U-Net denoiser; defaults reproduce the DDPM CIFAR-10 network (35.7M parameters).

    Attributes:
      channels: base width; the stem outputs `channels`, level l has `channels * channel_mult[l]`.
      channel_mult: per-level width multipliers; len(channel_mult) - 1 downsamplings.
      num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
      attention_levels: levels with self-attention (the middle always has it).
      head_channels: channels per attention head; None = one head.
      dropout: dropout rate inside ResBlocks (the 'dropout' rng, train=True).
      resample: 'conv' (strided / nearest + 3x3 conv, DDPM) or 'resblock' (BigGAN up/down ResBlocks, ADM, DDPM++).
      resample_filter: FIR taps of the resblock resampling ((1, 1) box, (1, 3, 3, 1) NCSN++).
      skip_projection: 1x1 conv on the skip path of resampling ResBlocks (DDPM++).
      scale_shift: ADM's scale-shift norm conditioning.
      skip_scale: residual scaling of every block (1/sqrt(2) in DDPM++).
      decoder_attention: 'all' decoder blocks of an attention level (DDPM, ADM) or only its 'last' (DDPM++).
      emb_mult: conditioning width = emb_mult * channels.
      embedding_type, noise_scale: the noise-level embedding (see `diffax.nets.embeddings`).
      num_classes: class-conditional with a learned null class (index num_classes); None = no labels.
      label_conditioning: labels added to the noise-level embedding ('embedding', ADM) or read by every attention
        block as a one-token context ('cross_attention', LDM); see `diffax.nets.embeddings`.
      context_features: width of that label context; None = the conditioning width emb_mult * channels.
      cross_attention: attend to cond (B, L, E) in every attention block.
      out_channels: output channels; None = same as the input.
      remat: False, 'full' (or True) or '+'-joined parts to keep such as 'dots': see `maybe_remat`.
      attention_implementation: 'xla', 'cudnn' or None (cuDNN where it applies; see diffax.nets.attention).
      two_stage_bias_grads: reduce the ResBlock convolutions' bias gradients over each example's pixels, then over
        the batch, and give the GroupNorms a closed-form backward that sums the same way (a speed option for small
        feature maps; see diffax.nets.layers and diffax.nets.norm_grads).
      hashed_dropout: the ResBlocks' dropout decisions from a hash of each element's index, fused where they are
        applied (a speed option; see diffax.nets.dropout).
      compute_dtype_norms: every GroupNorm's output (and the conditioning added before a ResBlock's second norm) in
        `dtype` rather than float32, statistics still in float32 (a speed option; see diffax.nets.layers).
      stem_head_as_matmuls: the stem and head convolutions as matrix products, same parameters (a speed option for
        few image channels; see diffax.nets.conv_forms.MatmulConv3x3).
      subpixel_upsample: the decoder's nearest 2x upsampling and 3x3 convolution as one transposed convolution of
        the low-resolution input, same parameters (a speed option; see diffax.nets.conv_forms.UpsampledConv3x3).
      fold_attention_biases: attention without k's bias and with v's folded into the output projection's, the same
        function and parameters (a speed option; see diffax.nets.attention.Attention).
      dtype, param_dtype: compute and parameter dtypes.
    """

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    head_channels: int | None = None
    dropout: float = 0.1
    resample: Literal["conv", "resblock"] = "conv"
    resample_filter: tuple[int, ...] = (1, 1)
    skip_projection: bool = False
    scale_shift: bool = False
    skip_scale: float = 1.0
    decoder_attention: Literal["all", "last"] = "all"
    emb_mult: int = 4
    embedding_type: EmbeddingType = "sinusoidal"
    noise_scale: float = 1000.0
    num_classes: int | None = None
    label_conditioning: LabelConditioning = "embedding"
    context_features: int | None = None
    cross_attention: bool = False
    out_channels: int | None = None
    norm_eps: float = 1e-6
    remat: bool | str = False
    attention_implementation: AttentionImplementation = None
    two_stage_bias_grads: bool = False
    hashed_dropout: bool = False
    compute_dtype_norms: bool = False
    stem_head_as_matmuls: bool = False
    subpixel_upsample: bool = False
    fold_attention_biases: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_level: jax.Array, cond: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        """x (B, H, W, C), noise_level (B,), cond None | (B,) int | (B, L, E) -> (B, H, W, out_channels or C)."""
        if self.resample not in ("conv", "resblock"):
            raise ValueError(f"resample {self.resample!r}: expected 'conv' or 'resblock'")
        if self.decoder_attention not in ("all", "last"):
            raise ValueError(f"decoder_attention {self.decoder_attention!r}: expected 'all' or 'last'")
        width = self.emb_mult * self.channels
        labels, context = labels_and_context(cond, batch=x.shape[0], num_classes=self.num_classes,
                                             cross_attention=self.cross_attention,
                                             label_conditioning=self.label_conditioning,
                                             context_features=self.context_features or width,
                                             param_dtype=self.param_dtype)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embedded_classes = self.num_classes if self.label_conditioning == "embedding" else None
        emb = nn.silu(ConditioningEmbedding(width, self.channels, self.embedding_type, self.noise_scale,
                                            num_classes=embedded_classes, name="embedding",
                                            param_dtype=self.param_dtype)(noise_level, labels))
        res_block_cls = maybe_remat(ResBlock, self.remat, static_argnums=(3,))
        attention_cls = maybe_remat(SpatialAttention, self.remat)

        def res_block(h: jax.Array, channels: int, name: str, resample: str = "none") -> jax.Array:
            block = res_block_cls(channels, resample=resample, resample_filter=self.resample_filter,
                                  skip_projection=self.skip_projection, scale_shift=self.scale_shift,
                                  dropout=self.dropout, skip_scale=self.skip_scale, norm_eps=self.norm_eps,
                                  two_stage_bias_grads=self.two_stage_bias_grads,
                                  hashed_dropout=self.hashed_dropout, compute_dtype_norms=self.compute_dtype_norms,
                                  name=name, **precision)
            return block(h, emb, train)

        def attention(h: jax.Array, name: str) -> jax.Array:
            return attention_cls(self.head_channels, self.skip_scale, self.norm_eps, self.attention_implementation,
                                 two_stage_bias_grads=self.two_stage_bias_grads,
                                 compute_dtype_norms=self.compute_dtype_norms,
                                 fold_biases=self.fold_attention_biases, name=name, **precision)(h, context)

        def resample(h: jax.Array, direction: str, name: str) -> jax.Array:
            if self.resample == "resblock":
                return res_block(h, h.shape[-1], name, direction)
            if direction == "down":
                return Downsample(name=name, **precision)(h)
            return Upsample(subpixel=self.subpixel_upsample, name=name, **precision)(h)

        def conv3x3(features: int, kernel_init, name: str) -> nn.Module:
            if self.stem_head_as_matmuls:
                return MatmulConv3x3(features, kernel_init=kernel_init, name=name, **precision)
            return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init, name=name,
                           **precision)

        height, width = x.shape[1:3]
        h = pad_to_multiple(x.astype(self.dtype), 2 ** (len(self.channel_mult) - 1))
        h = conv3x3(self.channels, xavier_init, "stem")(h)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            if level > 0:
                h = resample(h, "down", f"enc{level}_down")
                skips.append(h)
            for index in range(self.num_res_blocks):
                h = res_block(h, self.channels * mult, f"enc{level}_block{index}")
                if level in self.attention_levels:
                    h = attention(h, f"enc{level}_attn{index}")
                skips.append(h)

        h = res_block(h, h.shape[-1], "mid_block0")
        h = res_block(attention(h, "mid_attn"), h.shape[-1], "mid_block1")

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            if level < len(self.channel_mult) - 1:
                h = resample(h, "up", f"dec{level}_up")
            for index in range(self.num_res_blocks + 1):
                h = res_block(jnp.concatenate([h, skips.pop()], axis=-1), self.channels * mult,
                              f"dec{level}_block{index}")
                last = index == self.num_res_blocks
                if level in self.attention_levels and (self.decoder_attention == "all" or last):
                    h = attention(h, f"dec{level}_attn{index}")

        h = nn.silu(group_norm(h.shape[-1], self.norm_eps, self.param_dtype, name="head_norm",
                               two_stage_bias_grads=self.two_stage_bias_grads,
                               dtype=norm_output_dtype(self.dtype, self.compute_dtype_norms))(h))
        h = conv3x3(self.out_channels or x.shape[-1], zero_init, "head")(h)
        return h[:, :height, :width].astype(x.dtype)

