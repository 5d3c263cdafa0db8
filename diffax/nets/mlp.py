"""Residual MLP denoiser for vector data: toy 2-D distributions, tabular rows, flattened point sets.

    h     = Dense(x)                                                        (B, width)
    block h <- h + Dense(Dropout(SiLU(Dense(LN(h) * (1 + scale) + shift))))  (scale, shift) = Dense(c)
          h <- h + CrossAttn(LN(h) as one query token, context)            only with cross_attention
    out   = Dense(SiLU(LN(h)))                                              zero-initialized

with c = SiLU(ConditioningEmbedding(noise_level, label)): the adaptive-norm conditioning of DiT applied to the
residual MLPs used as toy-data denoisers (e.g. Karras et al. 2024's 2-D experiments, TabDDPM, Kotelnikov et al.
2023). The last layer of every residual branch starts at zero.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.nets.attention import Attention, AttentionImplementation
from diffax.nets.embeddings import ConditioningEmbedding, EmbeddingType, split_condition
from diffax.nets.layers import Dtype, maybe_remat, xavier_init, zero_init


class MLPBlock(nn.Module):
    """Pre-norm residual MLP block with adaptive LayerNorm; h (B, W), c (B, E) activated -> (B, W)."""

    hidden_mult: int = 2
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, c: jax.Array, train: bool) -> jax.Array:
        width = h.shape[-1]
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        modulation = nn.Dense(2 * width, kernel_init=zero_init, param_dtype=self.param_dtype)(c)  # float32
        scale, shift = jnp.split(modulation, 2, axis=-1)
        z = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32)(h) * (1 + scale) + shift
        z = nn.silu(nn.Dense(self.hidden_mult * width, kernel_init=xavier_init, **precision)(z))
        z = nn.Dropout(self.dropout, deterministic=not train)(z)
        return h + nn.Dense(width, kernel_init=zero_init, **precision)(z).astype(h.dtype)


class MLP(nn.Module):
    """Residual MLP denoiser, x (B, D) -> (B, D).

    Attributes:
      width: hidden width.
      num_blocks: residual blocks.
      hidden_mult: inner width of a block = hidden_mult * width.
      frequency_dim: width of the noise-level embedding.
      dropout: dropout rate inside blocks (the 'dropout' rng, train=True).
      embedding_type, noise_scale: the noise-level embedding (see `diffax.nets.embeddings`).
      num_classes: class-conditional with a learned null class (index num_classes); None = no labels.
      cross_attention: cross-attend to cond (B, L, E) after every block; `num_heads` heads.
      out_features: output width; None = D.
      remat: False, 'full' (or True) or '+'-joined parts to keep such as 'dots': see `maybe_remat`.
      dtype, param_dtype: compute and parameter dtypes.
    """

    width: int = 256
    num_blocks: int = 4
    hidden_mult: int = 2
    frequency_dim: int = 64
    dropout: float = 0.0
    embedding_type: EmbeddingType = "sinusoidal"
    noise_scale: float = 1000.0
    num_classes: int | None = None
    cross_attention: bool = False
    num_heads: int = 4
    out_features: int | None = None
    remat: bool | str = False
    attention_implementation: AttentionImplementation = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_level: jax.Array, cond: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        """x (B, D), noise_level (B,), cond None | (B,) int | (B, L, E) -> (B, out_features or D)."""
        if x.ndim != 2:
            raise ValueError(f"MLP expects vectors (B, D), got shape {x.shape}")
        labels, context = split_condition(cond, batch=x.shape[0], num_classes=self.num_classes,
                                          cross_attention=self.cross_attention)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype)
        c = nn.silu(ConditioningEmbedding(self.width, self.frequency_dim, self.embedding_type, self.noise_scale,
                                          num_classes=self.num_classes, name="embedding",
                                          param_dtype=self.param_dtype)(noise_level, labels))
        h = nn.Dense(self.width, kernel_init=xavier_init, name="input", **precision)(x.astype(self.dtype))
        block_cls = maybe_remat(MLPBlock, self.remat, static_argnums=(3,))
        for index in range(self.num_blocks):
            h = block_cls(self.hidden_mult, self.dropout, name=f"block{index}", **precision)(h, c, train)
            if context is not None:
                attention = Attention(self.num_heads, implementation=self.attention_implementation,
                                      name=f"cross_attn{index}", **precision)
                h = h + attention(norm()(h)[:, None, :], context)[:, 0]
        out = nn.Dense(self.out_features or x.shape[-1], kernel_init=zero_init, name="head", **precision)(
            nn.silu(norm()(h)))
        return out.astype(x.dtype)
