"""Multi-head self- and cross-attention through `jax.nn.dot_product_attention`.

`implementation`: 'xla' is the portable reference; 'cudnn' the fused flash-attention kernel on NVIDIA GPUs, which
never stores the (T, S) attention matrix; None picks cuDNN where it applies (`choose_implementation`) and XLA
elsewhere (JAX's own None means XLA). Both compute the softmax in float32 for bf16 inputs, as EDM's AttentionOp
does by hand.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from diffax.nets.layers import DENSE, Dtype, group_norm, norm_output_dtype, split_xavier_init, xavier_init, zero_init

AttentionImplementation = Literal["xla", "cudnn"] | None
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class CudnnGpu:
    """What JAX's cuDNN flash attention checks about the machine: the GPU's compute capability (major, minor) and
    the cuDNN version as cuDNN writes it (major * 10,000 + minor * 100 + patch: 9.19.0 -> 91900)."""

    compute_capability: tuple[int, int]
    cudnn_version: int


def local_cudnn_gpu() -> CudnnGpu | None:
    """The first local CUDA GPU and the cuDNN that JAX loaded, or None (CPU, TPU, ROCm, or no cuDNN found)."""
    if jax.default_backend() != "gpu":
        return None
    device = jax.local_devices(backend="gpu")[0]
    if "cuda" not in device.client.platform_version.lower():
        return None
    from jax._src.lib import cuda_versions  # JAX's own source of the version its cuDNN checks compare against.

    if cuda_versions is None:
        return None
    major, minor = (int(part) for part in device.compute_capability.split("."))
    return CudnnGpu((major, minor), int(cuda_versions.cudnn_get_version()))


def cudnn_refusal(q_shape: Sequence[int], k_shape: Sequence[int], q_dtype: Any, k_dtype: Any,
                  gpu: CudnnGpu | None) -> str | None:
    """Why JAX's cuDNN flash attention would refuse q (B, T, heads, head_dim) and k (B, S, heads, head_dim) on `gpu`,
    forward or backward; None where it takes them. Pure in shapes, dtypes and the machine.

    The rules are those of `jax._src.cudnn.fused_attention_stablehlo` (`check_layout`, `check_is_flash_attention`;
    jax 0.10-0.11) for bf16/fp16 inputs without bias, mask or padding, as `Attention` calls it:
      - q, k and v of one dtype, bfloat16 or float16 (float32 is refused; fp8 has rules of its own, unused here);
      - head_dim a multiple of 8, at most 256 on compute capability >= 9.0 (Hopper and later), else at most 128;
      - T and S even: the training forward (the one `jax.grad` runs) is checked as if a bias were given, because the
        bias argument is replaced by a zero-size placeholder before the check, and biased training needs even
        lengths (a 7x7 token grid: "Unsupported sequence length Q 49, KV 49"). Whether the call will be
        differentiated is not known where the choice is made, so odd lengths always take the XLA path;
      - compute capability 10.3 needs cuDNN >= 9.11.
    """
    if gpu is None:
        return "no CUDA GPU with cuDNN"
    if q_dtype != k_dtype or q_dtype not in CUDNN_DTYPES:
        return f"dtypes {jnp.dtype(q_dtype).name}, {jnp.dtype(k_dtype).name}: cuDNN takes bfloat16 or float16"
    head_dim, queries, keys = q_shape[-1], q_shape[1], k_shape[1]
    max_head_dim = 256 if gpu.compute_capability >= (9, 0) else 128
    if head_dim % 8 or head_dim > max_head_dim:
        return f"head_dim {head_dim}: cuDNN takes multiples of 8 up to {max_head_dim} on this GPU"
    if queries % 2 or keys % 2:
        return f"sequence lengths Q {queries}, KV {keys}: cuDNN's backward takes even lengths"
    if gpu.compute_capability == (10, 3) and gpu.cudnn_version < 91100:
        return f"cuDNN {gpu.cudnn_version} on compute capability 10.3: needs cuDNN >= 9.11"
    return None


def choose_implementation(implementation: AttentionImplementation, q: jax.Array, k: jax.Array) -> str:
    """`implementation`, or for None: 'cudnn' where `cudnn_refusal` finds nothing against q (B, T, heads, head_dim)
    and k (B, S, heads, head_dim) on the local GPU, else 'xla'. Called while tracing, so decided once per shape."""
    if implementation is not None:
        return implementation
    refusal = cudnn_refusal(q.shape, k.shape, q.dtype, k.dtype, local_cudnn_gpu())
    return "xla" if refusal else "cudnn"


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), 1/sqrt(head_dim) scaling.

    Self-attention when `context` is None; cross-attention of the tokens on `context` otherwise (q from x, k and v
    from context; Rombach et al. 2022). q, k and v are three Dense layers initialized as blocks of one fused
    Xavier-uniform qkv (or kv) projection, as DDPM, ADM and DiT fuse them. Separate layers rather than slices of one
    fused product: a slice copies the output, and each separate bias can be fused into its matrix product's
    epilogue, which a slice of a fused bias cannot.

    `fold_biases` (a speed option, off unless a recipe turns it on) computes the same function with two of the four
    bias additions left out, the parameters unchanged. k's bias adds q . b_k to every logit of a query, which the
    softmax cancels; since each row of attention weights sums to 1, v's bias passes through the attention unchanged
    and, through the output projection, becomes part of its bias:

        softmax(q (k + b_k)^T / sqrt(d)) (v + b_v) W_o + b_o = softmax(q k^T / sqrt(d)) v W_o + (b_v W_o + b_o)

    XLA's GPU backend does not fuse these biases into the products' epilogues in the DDPM UNet, so each one costs a
    pass over (B, T, D) (benchmarks/NOTES.md, session 13); b_k's gradient, zero in exact arithmetic, is exactly zero.

    Attributes:
      num_heads: heads; the width of x must be divisible by it.
      zero_output: zero-initialize the output projection (residual branches start as the identity).
      fold_biases: leave out k's bias and fold v's into the output projection's (see above).
    """

    num_heads: int = 1
    zero_output: bool = True
    implementation: AttentionImplementation = None
    fold_biases: bool = False
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
        out_init = zero_init if self.zero_output else xavier_init
        if context is None:
            inputs, inits = dict.fromkeys("qkv", x), dict.fromkeys("qkv", split_xavier_init(3))
        else:
            inputs = {"q": x, "k": context, "v": context}
            inits = {"q": xavier_init, "k": split_xavier_init(2), "v": split_xavier_init(2)}
        if self.fold_biases:
            stored = {name: DenseWeights(features, inits[name], self.param_dtype, name=name)(inputs[name].shape[-1])
                      for name in "qkv"}
            stored["out"] = DenseWeights(features, out_init, self.param_dtype, name="out")(features)
            weights = {name: nn.dtypes.promote_dtype(*pair, dtype=self.dtype) for name, pair in stored.items()}
            q, k, v = (inputs[name].astype(self.dtype) @ weights[name][0] for name in "qkv")
            q = q + weights["q"][1]
        else:
            q, k, v = (dense(kernel_init=inits[name], name=name)(inputs[name]) for name in "qkv")
        # (B, T, heads, head_dim), named for remat's "dense" policy
        q, k, v = (checkpoint_name(a, DENSE).reshape(*a.shape[:2], self.num_heads, -1) for a in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, implementation=choose_implementation(self.implementation, q, k))
        out = out.reshape(batch, length, features)
        if self.fold_biases:
            (_, v_bias), (out_kernel, out_bias) = stored["v"], stored["out"]
            out = out @ weights["out"][0] + (v_bias @ out_kernel + out_bias).astype(self.dtype)
        else:
            out = dense(kernel_init=out_init, name="out")(out)
        return checkpoint_name(out, DENSE)


class DenseWeights(nn.Module):
    """nn.Dense's parameters, `kernel` (C_in, features) and `bias` (features,) initialized to zero, returned
    rather than applied, for a caller that places the bias itself (`Attention.fold_biases`)."""

    features: int
    kernel_init: Any = xavier_init
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        return (self.param("kernel", self.kernel_init, (in_features, self.features), self.param_dtype),
                self.param("bias", zero_init, (self.features,), self.param_dtype))


class SpatialAttention(nn.Module):
    """Attention over the pixels of a feature map, as a residual block (DDPM / ADM / NCSN++ AttnBlock).

        x <- skip_scale * (x + Attn(GroupNorm(x)))                     self-attention
        x <- skip_scale * (x + Attn(GroupNorm(x), context))            cross-attention, when context is given

    Attributes:
      head_channels: channels per head (ADM uses 64); None means a single head (DDPM, DDPM++).
      skip_scale: 1 (DDPM, ADM) or 1/sqrt(2) (DDPM++ / NCSN++).
      norm_groups: GroupNorm groups; None for `layers.num_groups(channels)`.
      two_stage_bias_grads: the GroupNorm's backward in closed form (see `diffax.nets.norm_grads`).
      compute_dtype_norms: the GroupNorm's output in `dtype` rather than float32 (see `diffax.nets.layers`).
      fold_biases: `Attention.fold_biases`.
    """

    head_channels: int | None = None
    skip_scale: float = 1.0
    norm_eps: float = 1e-6
    implementation: AttentionImplementation = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    norm_groups: int | None = None
    two_stage_bias_grads: bool = False
    compute_dtype_norms: bool = False
    fold_biases: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """x (B, H, W, C), context (B, L, E) or None -> (B, H, W, C)."""
        batch, height, width, channels = x.shape
        num_heads = 1 if self.head_channels is None else channels // self.head_channels

        def attend(x: jax.Array, context: jax.Array | None) -> jax.Array:
            tokens = group_norm(channels, self.norm_eps, self.param_dtype, groups=self.norm_groups,
                                two_stage_bias_grads=self.two_stage_bias_grads,
                                dtype=norm_output_dtype(self.dtype, self.compute_dtype_norms))(x)
            tokens = tokens.reshape(batch, height * width, channels)
            attention = Attention(num_heads, implementation=self.implementation, fold_biases=self.fold_biases,
                                  dtype=self.dtype, param_dtype=self.param_dtype)
            return self.skip_scale * (x + attention(tokens, context).reshape(x.shape))

        x = attend(x, None)
        return x if context is None else attend(x, context)
