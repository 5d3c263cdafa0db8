"""Diffusion Transformer with adaLN-Zero conditioning (DiT, Peebles & Xie 2023).

    tokens = PatchEmbed_p(x) + sincos_2d positions                 (B, N, D), N = HW / p^2
    c      = SiLU(ConditioningEmbedding(noise_level, label))       (B, D)
    block  x <- x + gate_1 * Attn(LN(x) * (1 + scale_1) + shift_1)
           x <- x + CrossAttn(LN(x), context)                      only with cross_attention (PixArt-alpha style)
           x <- x + gate_2 * MLP(LN(x) * (1 + scale_2) + shift_2)
           (shift, scale, gate)_{1,2} = Dense(c), zero-initialized: every block starts as the identity
    out    Dense(LN(x) * (1 + scale) + shift) -> patches -> (B, H, W, C_out), zero-initialized

The position embedding is a compile-time constant computed for the token grid at call time, so one network runs
on any resolution; sizes not divisible by the patch size are zero-padded and cropped back.
Sizes (Table 1 of the paper): S (12 layers, 384 wide, 6 heads), B (12, 768, 12), L (24, 1024, 16),
XL (28, 1152, 16); patch size 2, 4 or 8.

The adaLN and the MLP's GELU have hand-written backward passes (`diffax.nets.lean_grads`): autodiff's write
intermediates that the backward reads back. The adaLN runs as XLA's formulas unless `norm_implementation='pallas'`
asks for the Pallas kernels (`diffax.kernels.adaln`).

The residual stream is kept in the compute dtype and each branch is rounded to it before the add:
x + (gate * h).astype(dtype). Rounding the sum instead, (x + gate * h).astype(dtype) with a float32 gate, lets
XLA (which allows excess precision) skip the round trip through bf16 and carry the float32 sum from block to
block, writing a float32 copy of the stream beside the bf16 one in every block.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from diffax.nets.attention import Attention, AttentionImplementation
from diffax.nets.embeddings import (ConditioningEmbedding, EmbeddingType, LabelConditioning, labels_and_context,
                                    sincos_2d_positions)
from diffax.nets.lean_grads import NormImplementation, gelu_tanh, modulated_layer_norm
from diffax.nets.layers import (DENSE, NORMALIZED, Dtype, PatchEmbed, maybe_remat, pad_to_multiple, xavier_init,
                                zero_init)


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block; x (B, N, D), c (B, D) activated, context (B, L, E) or None."""

    num_heads: int
    mlp_ratio: float = 4.0
    attention_implementation: AttentionImplementation = None
    norm_implementation: NormImplementation = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array, context: jax.Array | None) -> jax.Array:
        width = x.shape[-1]
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attention = functools.partial(Attention, self.num_heads, implementation=self.attention_implementation,
                                      **precision)
        dense = functools.partial(nn.Dense, kernel_init=xavier_init, **precision)
        modulation = nn.Dense(6 * width, kernel_init=zero_init, param_dtype=self.param_dtype, name="modulation")(c)
        shift_1, scale_1, gate_1, shift_2, scale_2, gate_2 = jnp.split(modulation, 6, axis=-1)

        def adaln(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
            normalized = modulated_layer_norm(x, shift, scale, 1e-6, self.dtype, self.norm_implementation)
            return checkpoint_name(normalized, NORMALIZED)

        x = x + (gate_1[:, None] * attention()(adaln(x, shift_1, scale_1))).astype(self.dtype)
        if context is not None:
            norm = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32)
            x = x + attention()(norm(x), context)
        h = dense(int(width * self.mlp_ratio), name="mlp_in")(adaln(x, shift_2, scale_2))
        h = gelu_tanh(checkpoint_name(h, DENSE))
        return x + (gate_2[:, None] * checkpoint_name(dense(width, name="mlp_out")(h), DENSE)).astype(self.dtype)


class DiT(nn.Module):
    """Diffusion Transformer; defaults are DiT-XL/2.

    Attributes:
      patch_size: p; the token grid is (H/p, W/p).
      hidden_size, depth, num_heads, mlp_ratio: transformer size.
      frequency_dim: width of the sinusoidal noise-level embedding (256 in DiT).
      embedding_type, noise_scale: the noise-level embedding (see `diffax.nets.embeddings`).
      num_classes: class-conditional with a learned null class (index num_classes); None = no labels.
      label_conditioning: labels in the adaLN conditioning ('embedding', DiT) or cross-attended as a one-token
        context ('cross_attention', LDM); see `diffax.nets.embeddings`.
      context_features: width of that label context; None = hidden_size.
      cross_attention: cross-attend to cond (B, L, E) in every block.
      out_channels: output channels; None = same as the input (DiT's learn_sigma uses 2 * C).
      remat: False, 'full' (or True), or what to keep, e.g. 'dots' or 'dense+attention+norms' (see
        `maybe_remat`; the named outputs are the dense layers' (bias added) and the adaLN outputs).
      attention_implementation: 'xla', 'cudnn' or None (cuDNN where it applies; see diffax.nets.attention).
      norm_implementation: adaLN as 'xla' (XLA's fusions of the formulas) or 'pallas' (one Pallas kernel each way,
        `diffax.kernels.adaln`; a recipe opts in where it measures faster).
      dtype, param_dtype: compute and parameter dtypes.
    """

    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    frequency_dim: int = 256
    embedding_type: EmbeddingType = "sinusoidal"
    noise_scale: float = 1000.0
    num_classes: int | None = None
    label_conditioning: LabelConditioning = "embedding"
    context_features: int | None = None
    cross_attention: bool = False
    out_channels: int | None = None
    remat: bool | str = False
    attention_implementation: AttentionImplementation = None
    norm_implementation: NormImplementation = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @staticmethod
    def computes_in_dtype(path: tuple[str, ...]) -> bool:
        """Whether the parameter at `path` is only ever used cast to `dtype`: all but the float32 conditioning (the
        noise-level and label embedding, and the adaLN modulations). `diffax.train.runner` may keep such
        parameters in `dtype` (train.cast_params)."""
        return not any(name in ("embedding", "modulation", "head_modulation") for name in path)

    @nn.compact
    def __call__(self, x: jax.Array, noise_level: jax.Array, cond: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        """x (B, H, W, C), noise_level (B,), cond None | (B,) int | (B, L, E) -> (B, H, W, out_channels or C).

        `train` is accepted for the common contract; DiT has no dropout.
        """
        del train
        labels, context = labels_and_context(cond, batch=x.shape[0], num_classes=self.num_classes,
                                             cross_attention=self.cross_attention,
                                             label_conditioning=self.label_conditioning,
                                             context_features=self.context_features or self.hidden_size,
                                             param_dtype=self.param_dtype)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, channels = x.shape
        p, out_channels = self.patch_size, self.out_channels or channels
        h = pad_to_multiple(x.astype(self.dtype), p)
        grid_h, grid_w = h.shape[1] // p, h.shape[2] // p

        tokens = PatchEmbed(self.hidden_size, p, name="patch_embed", **precision)(h)
        tokens = tokens + sincos_2d_positions(grid_h, grid_w, self.hidden_size).astype(self.dtype)
        c = nn.silu(ConditioningEmbedding(self.hidden_size, self.frequency_dim, self.embedding_type,
                                          self.noise_scale, name="embedding",
                                          num_classes=self.num_classes if self.label_conditioning == "embedding"
                                          else None,
                                          param_dtype=self.param_dtype)(noise_level, labels))

        block_cls = maybe_remat(DiTBlock, self.remat)
        for index in range(self.depth):
            tokens = block_cls(self.num_heads, self.mlp_ratio, self.attention_implementation,
                               self.norm_implementation, name=f"block{index}", **precision)(tokens, c, context)

        modulation = nn.Dense(2 * self.hidden_size, kernel_init=zero_init, param_dtype=self.param_dtype,
                              name="head_modulation")(c)
        shift, scale = jnp.split(modulation, 2, axis=-1)
        tokens = modulated_layer_norm(tokens, shift, scale, 1e-6, self.dtype, self.norm_implementation)
        patches = nn.Dense(p * p * out_channels, kernel_init=zero_init, name="head", **precision)(tokens)
        out = patches.reshape(batch, grid_h, grid_w, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
        out = out.reshape(batch, grid_h * p, grid_w * p, out_channels)
        return out[:, :height, :width].astype(x.dtype)
