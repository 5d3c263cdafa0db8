"""Convolutional building blocks: group norm, FIR up/down sampling, residual blocks, patch embedding.

Precision (shared by every network). Layers take `dtype` (compute, e.g. bfloat16) and `param_dtype` (storage,
float32) separately. Convolutions, matmuls and the residual stream run in `dtype`; normalization outputs (and the
elementwise work after them, which XLA fuses into the next matmul's input cast) and the per-example conditioning
vectors are float32: that costs little and lowers the bf16-vs-float32 error; what remains is bf16's 8-bit mantissa.
`compute_dtype_norms` (a speed option, off unless a recipe turns it on) puts the GroupNorms' outputs and that
conditioning in `dtype` too, with the statistics still float32, as a norm with `dtype=bfloat16` in Flax does. The
forward pass costs the same either way, but in the backward pass the gradients reaching each norm are arrays of the
feature map's size that XLA writes out and reads twice (for the norm's sums and its input gradient): float32 there
doubles the bytes. The convolution's output sits behind an optimization barrier before the conditioning is added:
with both in bf16, XLA's GPU backend would fold the add into cuDNN's convolution as a side input, writing out the
conditioning's (B, H, W, C) broadcast for it (benchmarks/NOTES.md, session 12).

Images are NHWC. Initialization follows DDPM / EDM: Xavier-uniform weights, and zero for the last layer of every
residual branch, so each block starts as the identity.

Two-stage bias gradients (`two_stage_bias_grads`, off unless a recipe turns it on). The gradient of a per-channel
bias over (B, H, W, C) is one column reduction of B*H*W rows. Where B*H*W is small (2,048 at 4x4 and batch 128),
XLA's GPU backend gives it one thread block per 128 channels and fuses the input gradient into the same kernel,
which then runs on 2 of an H200's 132 SMs. `add_bias` reduces over each example's pixels first and then, behind an
optimization barrier, over the batch; `Conv` (Flax's nn.Conv otherwise, same parameters) adds its bias with it.
The option's GroupNorms are `diffax.nets.norm_grads.GroupNorm`, whose closed-form backward sums the same way
(benchmarks/NOTES.md, sessions 7 and 8).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.nets import norm_grads
from diffax.nets.conv_forms import UpsampledConv3x3
from diffax.nets.dropout import HashedDropout

Dtype = Any
Resample = Literal["none", "up", "down"]

zero_init = nn.initializers.zeros_init()
xavier_init = nn.initializers.xavier_uniform()


def split_xavier_init(num_splits: int) -> Callable[..., jax.Array]:
    """Initializer of one (fan_in, fan_out) block of a (fan_in, num_splits * fan_out) Xavier-uniform matrix:
    U(-b, b) with b = sqrt(6 / (fan_in + num_splits * fan_out)), e.g. q, k and v as one fused qkv projection."""
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        bound = np.sqrt(6.0 / (shape[0] + num_splits * shape[1]))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm groups: min(32, channels // 4) as EDM, lowered until it divides `channels` (at least 1)."""
    groups = max(1, min(max_groups, channels // min_group_size))
    while channels % groups:
        groups -= 1
    return groups


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y (B, ..., C) + bias (C,), in y's dtype; the bias gradient is summed over each example's other axes, then (after
    an optimization barrier, so that XLA keeps the stages apart) over B, in float32 (see the module docstring)."""
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return add_bias(y, bias), bias


def _add_bias_bwd(bias: jax.Array, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    per_example = grad.astype(jnp.float32).sum(axis=tuple(range(1, grad.ndim - 1)))  # (B, C)
    return grad, jax.lax.optimization_barrier(per_example).sum(axis=0).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Conv):
    """Flax's nn.Conv with its bias added by `add_bias`: parameters `kernel` and `bias` as nn.Conv's. `use_bias`
    stays False, so that nn.Conv adds no bias of its own; the bias is always there."""

    use_bias: bool = False

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """inputs (B, H, W, C_in) -> (B, H', W', features)."""
        _refuse_own_bias(self)
        y = super().__call__(inputs)
        return add_bias(y, self.param("bias", self.bias_init, (self.features,), self.param_dtype))


def _refuse_own_bias(module: nn.Module) -> None:
    if module.use_bias:
        raise ValueError(f"{type(module).__name__} adds its bias with add_bias: leave use_bias False")


def norm_output_dtype(dtype: Dtype, compute_dtype_norms: bool) -> Dtype:
    """A GroupNorm's output dtype: the compute `dtype` under `compute_dtype_norms`, else float32 (module docstring)."""
    return dtype if compute_dtype_norms else jnp.float32


def group_norm(channels: int, eps: float, param_dtype: Dtype = jnp.float32, name: str | None = None,
               groups: int | None = None, two_stage_bias_grads: bool = False,
               dtype: Dtype = jnp.float32) -> nn.Module:
    """GroupNorm (Wu & He 2018) with a `dtype` output, float32 unless a speed option asks (see the module docstring):
    `groups` groups (LDM's autoencoder fixes 32), or `num_groups(channels)` where None; `norm_grads.GroupNorm` where
    `two_stage_bias_grads`."""
    if groups is not None and channels % groups:
        raise ValueError(f"GroupNorm over {channels} channels: {groups} groups do not divide them")
    norm_cls = norm_grads.GroupNorm if two_stage_bias_grads else nn.GroupNorm
    return norm_cls(num_groups=groups or num_groups(channels), epsilon=eps, dtype=dtype,
                    param_dtype=param_dtype, name=name)


NORMALIZED = "normalized"  # checkpoint name of the normalized (and modulated) inputs of dense layers
DENSE = "dense"  # checkpoint name of dense-layer outputs, bias included
CUDNN_ATTENTION_FORWARD = "dot_product_attention_fwd_wrapper"  # the primitive of jax's cuDNN flash attention


def _cudnn_attention_saveable(prim, *_, **__) -> bool:
    """cuDNN flash attention's forward outputs: (B, T, heads, head_dim) and the (B, heads, T) softmax statistics."""
    return prim.name == CUDNN_ATTENTION_FORWARD


# What a remat policy may keep for the backward pass; `maybe_remat` joins them with "+".
SAVEABLE = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # matrix products without batch dimensions
    "dense": jax.checkpoint_policies.save_only_these_names(DENSE),  # dense outputs that modules name, bias added
    "attention": _cudnn_attention_saveable,  # otherwise the backward pass runs the attention forward kernel again
    "norms": jax.checkpoint_policies.save_only_these_names(NORMALIZED),
}


def remat_policy(remat: str):
    """The `jax.checkpoint` policy of `remat`: "full" (None: keep only the block inputs) or SAVEABLE keys joined by
    "+", e.g. "dots+attention"."""
    if remat == "full":
        return None
    parts = remat.split("+")
    unknown = [part for part in parts if part not in SAVEABLE]
    if unknown:
        raise ValueError(f"remat {remat!r}: unknown part(s) {unknown}; use 'full' or '+'-joined parts of "
                         f"{sorted(SAVEABLE)}")
    policies = [SAVEABLE[part] for part in parts]
    return lambda prim, *args, **params: any(policy(prim, *args, **params) for policy in policies)


def maybe_remat(module_cls: type[nn.Module], remat: bool | str, static_argnums: tuple[int, ...] = ()):
    """`module_cls`, or its `nn.remat` (activations recomputed in the backward pass) as `remat` says.

    remat: False or "none" keeps every activation; True or "full" keeps only each block's inputs (one more forward
    pass of compute); otherwise what to keep besides them, "+"-joined (see `remat_policy`): "dots" keeps the outputs
    of matrix products and recomputes normalizations, activations, convolutions and attention (most of full remat's
    memory saving in a transformer at a few percent of extra compute); "dense" keeps the same products' outputs with
    their bias added, where modules name them `DENSE` (transformers do), so the backward pass adds no bias again;
    "+attention" also keeps cuDNN attention's output and softmax statistics (one (B, T, D) array a block);
    "+norms" the normalized inputs of dense layers that blocks name `NORMALIZED`.
    """
    if remat in (False, "none"):
        return module_cls
    policy = remat_policy("full" if remat is True else remat)
    return nn.remat(module_cls, policy=policy, static_argnums=static_argnums)


def _fir_kernel(taps: tuple[int, ...], channels: int, gain: float, dtype: Dtype) -> jax.Array:
    """Separable 2-D filter outer(f, f) / sum(f)^2 * gain as a depthwise HWIO kernel (k, k, 1, channels)."""
    f = np.asarray(taps, np.float32)
    f2d = np.outer(f, f) / f.sum() ** 2 * gain
    return jnp.asarray(np.tile(f2d[:, :, None, None], (1, 1, 1, channels)), dtype)


def downsample_2d(x: jax.Array, taps: tuple[int, ...] = (1, 1)) -> jax.Array:
    """2x FIR downsampling (StyleGAN2's upfirdn; EDM `Conv2d(down=True)`): filter, then keep every 2nd pixel.

    taps (1, 1) is 2x2 average pooling (DDPM++, ADM); (1, 3, 3, 1) the anti-aliased filter of NCSN++.
    x (B, H, W, C) with H, W even -> (B, H/2, W/2, C).
    """
    if tuple(taps) == (1, 1):  # A reshape and a mean: XLA fuses it, where a depthwise convolution is a cuDNN call.
        batch, height, width, channels = x.shape
        return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))
    pad = (len(taps) - 1) // 2
    return jax.lax.conv_general_dilated(
        x, _fir_kernel(taps, x.shape[-1], 1.0, x.dtype), window_strides=(2, 2), padding=[(pad, pad)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def upsample_2d(x: jax.Array, taps: tuple[int, ...] = (1, 1)) -> jax.Array:
    """2x FIR upsampling: zero-insertion then the filter with gain 4 (a transposed depthwise convolution).

    taps (1, 1) is nearest-neighbour upsampling (DDPM, ADM, DDPM++).
    x (B, H, W, C) -> (B, 2H, 2W, C).
    """
    if tuple(taps) == (1, 1):  # Nearest neighbour as a broadcast, which XLA fuses into a next elementwise op.
        batch, height, width, channels = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, 2, width, 2, channels))
        return x.reshape(batch, 2 * height, 2 * width, channels)
    pad = len(taps) - 1 - (len(taps) - 1) // 2
    return jax.lax.conv_general_dilated(
        x, _fir_kernel(taps, x.shape[-1], 4.0, x.dtype), window_strides=(1, 1), padding=[(pad, pad)] * 2,
        lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def resample_2d(x: jax.Array, resample: Resample, taps: tuple[int, ...]) -> jax.Array:
    """Dispatches to `upsample_2d` / `downsample_2d`; identity for 'none'."""
    if resample == "up":
        return upsample_2d(x, taps)
    if resample == "down":
        return downsample_2d(x, taps)
    return x


class Downsample(nn.Module):
    """Plain 2x downsampling by a stride-2 3x3 convolution (DDPM, ADM without resblock_updown).

    padding: ((top, bottom), (left, right)) zeros; (1, 1) on both sides (DDPM, ADM), or ((0, 1), (0, 1)), only at the
    bottom/right, as LDM's autoencoder (Rombach et al. 2022) and diffusers' `Downsample2D(padding=0)`.
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C), H and W even -> (B, H/2, W/2, C)."""
        return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=self.padding, kernel_init=xavier_init,
                       dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
    """Plain 2x upsampling: nearest neighbour then a 3x3 convolution (DDPM, ADM without resblock_updown).

    `subpixel` (a speed option, off unless a recipe turns it on) computes the same with `UpsampledConv3x3`.
    """

    subpixel: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, H, W, C) -> (B, 2H, 2W, C)."""
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.subpixel:
            return UpsampledConv3x3(x.shape[-1], name="Conv_0", **precision)(x)
        return nn.Conv(x.shape[-1], (3, 3), padding=((1, 1), (1, 1)), kernel_init=xavier_init,
                       **precision)(upsample_2d(x))


class ResBlock(nn.Module):
    """Residual block with noise-level conditioning; the union of DDPM, ADM (BigGAN) and DDPM++ blocks.

        h = Conv3x3(Resample(SiLU(GroupNorm(x))))
        h = GroupNorm(h + Dense(emb))                          additive conditioning (DDPM, DDPM++)
          or GroupNorm(h) * (1 + scale) + shift                scale-shift norm (ADM), (scale, shift) = Dense(emb)
        h = Conv3x3(Dropout(SiLU(h)))                          zero-initialized
        out = skip_scale * (Skip(Resample(x)) + h)

    Skip is a 1x1 convolution when the channels change (or when resampling with `skip_projection`, as EDM's
    DDPM++), the identity otherwise. Resampling inside the block is BigGAN's up/down (Brock et al. 2019) as in
    ADM (Dhariwal & Nichol 2021) and NCSN++/DDPM++ (Song et al. 2021).

    Attributes:
      out_channels: output channels.
      resample: 'none', 'up' (2x) or 'down' (2x) inside the block.
      resample_filter: FIR taps for `resample` ((1, 1): nearest / average pooling).
      skip_projection: use a 1x1 conv on the skip path whenever the block resamples.
      scale_shift: ADM's scale-shift norm instead of additive conditioning.
      skip_scale: 1 (DDPM, ADM) or 1/sqrt(2) (DDPM++).
      two_stage_bias_grads: the convolutions' bias gradients in two stages and the norms' backward in closed form
        (see the module docstring).
      hashed_dropout: `diffax.nets.dropout.HashedDropout` (keep decisions from a hash of each element's index) for
        nn.Dropout.
      compute_dtype_norms: the GroupNorms' outputs, and the conditioning added before the second, in `dtype`
        rather than float32 (see the module docstring).
    """

    out_channels: int
    resample: Resample = "none"
    resample_filter: tuple[int, ...] = (1, 1)
    skip_projection: bool = False
    scale_shift: bool = False
    dropout: float = 0.0
    skip_scale: float = 1.0
    norm_eps: float = 1e-6
    two_stage_bias_grads: bool = False
    hashed_dropout: bool = False
    compute_dtype_norms: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        """x (B, H, W, Cin), emb (B, E) already activated (SiLU) -> (B, H', W', out_channels)."""
        conv = functools.partial(Conv if self.two_stage_bias_grads else nn.Conv, self.out_channels,
                                 kernel_init=xavier_init, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(group_norm, eps=self.norm_eps, param_dtype=self.param_dtype,
                                 two_stage_bias_grads=self.two_stage_bias_grads,
                                 dtype=norm_output_dtype(self.dtype, self.compute_dtype_norms))
        h = nn.silu(norm(x.shape[-1])(x))
        h = conv((3, 3), padding=((1, 1), (1, 1)))(resample_2d(h, self.resample, self.resample_filter))
        cond = nn.Dense(self.out_channels * (2 if self.scale_shift else 1), kernel_init=xavier_init,
                        param_dtype=self.param_dtype)(emb)[:, None, None, :]  # float32
        if self.compute_dtype_norms:  # h behind a barrier: see the module docstring
            h, cond = jax.lax.optimization_barrier(h), cond.astype(self.dtype)
        if self.scale_shift:
            scale, shift = jnp.split(cond, 2, axis=-1)
            h = norm(self.out_channels)(h) * (1 + scale) + shift
        else:
            h = norm(self.out_channels)(h + cond)
        dropout_cls = HashedDropout if self.hashed_dropout else nn.Dropout
        h = dropout_cls(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv((3, 3), padding=((1, 1), (1, 1)), kernel_init=zero_init)(h)
        skip = resample_2d(x, self.resample, self.resample_filter)
        if x.shape[-1] != self.out_channels or (self.resample != "none" and self.skip_projection):
            skip = conv((1, 1))(skip)
        return self.skip_scale * (skip + h)


class PreActBlock(nn.Module):
    """Residual block without conditioning (He et al. 2016, "Identity Mappings in Deep Residual Networks", with
    GroupNorm and SiLU): the classifier's block, and LDM's `ResnetBlock` without a time embedding (Rombach et al.
    2022; diffusers' `ResnetBlock2D(temb_channels=None)`).

        out = Skip(x) + Conv3x3(Dropout(SiLU(GN(Conv3x3(SiLU(GN(x)))))))

    Skip is the identity, or a 1x1 convolution where the channels change. The last convolution starts at zero, so
    the block starts as its skip path. norm_groups: GroupNorm groups, or None for `num_groups(channels)`.
    """

    out_channels: int
    dropout: float = 0.0
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    norm_groups: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """x (B, H, W, Cin) -> (B, H, W, out_channels)."""
        conv = functools.partial(nn.Conv, self.out_channels, (3, 3), padding=((1, 1), (1, 1)),
                                 kernel_init=xavier_init, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(group_norm, eps=self.norm_eps, param_dtype=self.param_dtype,
                                 groups=self.norm_groups)
        h = conv()(nn.silu(norm(x.shape[-1])(x)))
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(norm(self.out_channels)(h)))
        h = conv(kernel_init=zero_init)(h)
        skip = x
        if x.shape[-1] != self.out_channels:
            skip = nn.Conv(self.out_channels, (1, 1), kernel_init=xavier_init, dtype=self.dtype,
                           param_dtype=self.param_dtype)(x)
        return skip + h


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens by a stride-p convolution (ViT, Dosovitskiy et al. 2021; DiT).

    x (B, H, W, C), H and W divisible by patch_size -> (B, (H/p) * (W/p), features), row-major.
    """

    features: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        tokens = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", kernel_init=xavier_init,
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return tokens.reshape(x.shape[0], -1, self.features)


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
    """Zero-pads H and W of x (B, H, W, C) at the bottom/right up to multiples of `multiple`; crop back after."""
    pad_h, pad_w = (-x.shape[1]) % multiple, (-x.shape[2]) % multiple
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
