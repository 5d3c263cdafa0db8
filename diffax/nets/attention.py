"""Multi-head self- and cross-attention through `jax.nn.dot_product_attention`.

`implementation`: 'xla' is the portable reference; 'cudnn' the fused flash-attention kernel on NVIDIA GPUs (bf16 or
fp16 compute, head_dim <= 128 and a multiple of 8), which never stores the (T, S) attention matrix; None picks
cuDNN where it applies and XLA elsewhere (JAX's own None means XLA). Both compute the softmax in float32 for bf16
inputs, as EDM's AttentionOp does by hand.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from diffax.nets.layers import DENSE, Dtype, group_norm, xavier_init, zero_init

AttentionImplementation = Literal["xla", "cudnn"] | None


class SplitDense(nn.Module):
    """A Dense layer with num_splits * features outputs (one kernel (D, num_splits * features), Xavier-uniform over
    the whole), returned as num_splits arrays of `features`, each from its own matrix product.

    Same parameters as `nn.Dense(num_splits * features)` followed by `jnp.split`, without the split: slicing a
    product's output copies it (and its gradient is a concatenation), which cost 7% of a DiT-XL/2 train step.
    """

    features: int
    num_splits: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """x (..., D) -> num_splits arrays (..., features)."""
        width = self.num_splits * self.features
        kernel = self.param("kernel", xavier_init, (x.shape[-1], width), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (width,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        splits = [slice(i * self.features, (i + 1) * self.features) for i in range(self.num_splits)]
        return tuple(jnp.dot(x, kernel[:, part]) + bias[part] for part in splits)


def choose_implementation(implementation: AttentionImplementation, q: jax.Array) -> str:
    """`implementation`, or for None: 'cudnn' on a GPU backend for bf16/fp16 q (B, T, heads, head_dim) with
    head_dim <= 128 and a multiple of 8, else 'xla'."""
    if implementation is not None:
        return implementation
    head_dim = q.shape[-1]
    cudnn_ok = q.dtype in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0
    return "cudnn" if cudnn_ok and jax.default_backend() == "gpu" else "xla"


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
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = functools.partial(nn.Dense, kernel_init=xavier_init, **precision)
        if context is None:
            q, k, v = SplitDense(features, 3, name="qkv", **precision)(x)
        else:
            q = dense(features, name="q")(x)
            k, v = SplitDense(features, 2, name="kv", **precision)(context.astype(self.dtype))
        # (B, T, heads, head_dim), named for remat's "dense" policy
        q, k, v = (checkpoint_name(a, DENSE).reshape(*a.shape[:2], self.num_heads, -1) for a in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, implementation=choose_implementation(self.implementation, q))
        out_init = zero_init if self.zero_output else xavier_init
        return checkpoint_name(dense(features, kernel_init=out_init, name="out")(out.reshape(batch, length, features)),
                               DENSE)


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
