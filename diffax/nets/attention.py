"""Multi-head self- and cross-attention through `jax.nn.dot_product_attention`.

`implementation`: 'xla' is the portable reference; 'cudnn' the fused flash-attention kernel on NVIDIA GPUs, which
never stores the (T, S) attention matrix; None picks cuDNN where it applies (`choose_implementation`) and XLA
elsewhere (JAX's own None means XLA). Both compute the softmax in float32 for bf16 inputs, as EDM's AttentionOp
does by hand.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from diffax.nets.layers import DENSE, Dtype, group_norm, split_xavier_init, xavier_init, zero_init

AttentionImplementation = Literal["xla", "cudnn"] | None


def choose_implementation(implementation: AttentionImplementation, q: jax.Array, k: jax.Array) -> str:
    """`implementation`, or for None: 'cudnn' where JAX's cuDNN flash attention takes q (B, T, heads, head_dim) and
    k (B, S, heads, head_dim) forward and backward, else 'xla'.

    cuDNN applies on a GPU backend to bf16/fp16 inputs with head_dim <= 128 and a multiple of 8, and T and S even:
    JAX's cuDNN backward refuses odd lengths ("Unsupported sequence length Q 49, KV 49" for a 7x7 token grid), and
    whether the call will be differentiated is not known here.
    """
    if implementation is not None:
        return implementation
    head_dim, queries, keys = q.shape[-1], q.shape[1], k.shape[1]
    cudnn_ok = (q.dtype in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0
                and queries % 2 == 0 and keys % 2 == 0)
    return "cudnn" if cudnn_ok and jax.default_backend() == "gpu" else "xla"


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), 1/sqrt(head_dim) scaling.

    Self-attention when `context` is None; cross-attention of the tokens on `context` otherwise (q from x, k and v
    from context; Rombach et al. 2022). q, k and v are three Dense layers initialized as blocks of one fused
    Xavier-uniform qkv (or kv) projection, as DDPM, ADM and DiT fuse them. Separate layers rather than slices of one
    fused product: a slice copies the output, and each separate bias can be fused into its matrix product's
    epilogue, which a slice of a fused bias cannot.

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
        dense = functools.partial(nn.Dense, features, **precision)
        if context is None:
            fused = functools.partial(dense, kernel_init=split_xavier_init(3))
            q, k, v = (fused(name=name)(x) for name in "qkv")
        else:
            q = dense(kernel_init=xavier_init, name="q")(x)
            fused = functools.partial(dense, kernel_init=split_xavier_init(2))
            k, v = (fused(name=name)(context) for name in "kv")
        # (B, T, heads, head_dim), named for remat's "dense" policy
        q, k, v = (checkpoint_name(a, DENSE).reshape(*a.shape[:2], self.num_heads, -1) for a in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, implementation=choose_implementation(self.implementation, q, k))
        out_init = zero_init if self.zero_output else xavier_init
        return checkpoint_name(dense(kernel_init=out_init, name="out")(out.reshape(batch, length, features)), DENSE)


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
