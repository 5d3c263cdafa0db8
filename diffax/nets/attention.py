"""Multi-head self- and cross-attention through `jax.nn.dot_product_attention`.

`implementation` is passed straight through: None lets JAX choose, 'xla' is the portable reference, 'cudnn' is the
fused flash-attention kernel on NVIDIA GPUs (needs bf16/fp16 compute and head_dim <= 128, a multiple of 8).
The attention weights are computed in float32 by JAX even for bf16 inputs, as EDM's AttentionOp does by hand.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.nets.layers import Dtype, group_norm, xavier_init, zero_init

AttentionImplementation = Literal["xla", "cudnn"] | None


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), 1/sqrt(head_dim) scaling.

    Self-attention when `context` is None (one fused qkv projection, as DDPM, ADM, DiT); cross-attention of the
    tokens on `context` otherwise (q from x, k and v from context; Rombach et al. 2022).

    Attributes:
      num_heads: heads; the width of x must be divisible by it.
      zero_output: zero-initialize the output projection (residual branches start as the identity).
    """

    num_heads: int = 1
    zero_output: bool = True
    implementation: AttentionImplementation = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x (B, T, D), context (B, S, E) or None -> (B, T, D)."""
        batch, length, features = x.shape
        if features % self.num_heads:
            raise ValueError(f"width {features} is not divisible by num_heads {self.num_heads}")
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=xavier_init)
        if context is None:
            q, k, v = jnp.split(dense(3 * features, name="qkv")(x), 3, axis=-1)
        else:
            q = dense(features, name="q")(x)
            k, v = jnp.split(dense(2 * features, name="kv")(context.astype(self.dtype)), 2, axis=-1)
        q, k, v = (a.reshape(*a.shape[:2], self.num_heads, -1) for a in (q, k, v))  # (B, T, heads, head_dim)
        out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        out_init = zero_init if self.zero_output else xavier_init
        return dense(features, kernel_init=out_init, name="out")(out.reshape(batch, length, features))


class SpatialAttention(nn.Module):
    """Attention over the pixels of a feature map, as a residual block (DDPM / ADM / NCSN++ AttnBlock).

        x <- skip_scale * (x + Attn(GroupNorm(x)))                     self-attention
        x <- skip_scale * (x + Attn(GroupNorm(x), context))            cross-attention, when context is given

    Attributes:
      head_channels: channels per head (ADM uses 64); None means a single head (DDPM, DDPM++).
      skip_scale: 1 (DDPM, ADM) or 1/sqrt(2) (DDPM++ / NCSN++).
    """

    head_channels: int | None = None
    skip_scale: float = 1.0
    norm_eps: float = 1e-6
    implementation: AttentionImplementation = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x (B, H, W, C), context (B, L, E) or None -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        num_heads = 1 if self.head_channels is None else channels // self.head_channels

        def attend(x: jax.Array, context: jax.Array | None) -> jax.Array:
            tokens = group_norm(channels, self.norm_eps, self.param_dtype)(x).reshape(batch, height * width, channels)
            attention = Attention(num_heads, implementation=self.implementation, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
            return self.skip_scale * (x + attention(tokens, context).reshape(x.shape))

        x = attend(x, None)
        return x if context is None else attend(x, context)
