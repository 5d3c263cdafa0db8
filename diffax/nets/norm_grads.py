"""GroupNorm with its backward pass written in closed form (a speed option, off unless a recipe asks).

Forward (Wu & He 2018), as Flax's nn.GroupNorm with its fast variance; per example b and group g, over the n pixels
and channels of the group:

    mu = mean(x),  var = max(mean(x^2) - mu^2, 0),  r = rsqrt(var + eps),  xhat = (x - mu) r
    y = xhat * scale + bias                                                   scale, bias (C,)

Backward, from the per-example channel sums s1 = sum_pixels dy and s2 = sum_pixels dy * xhat, both (B, C):

    dbias = sum_b s1,  dscale = sum_b s2                            (one reduction of the stacked (2, B, C))
    dx = r (dy scale - a / n - xhat c / n),   a = sum_{c' in g} scale s1,  c = sum_{c' in g} scale s2   (B, G)

Why not autodiff: differentiating nn.GroupNorm leaves XLA several reductions of (B, ..., C) per norm (through the
mean, through the mean of squares, the scale's and the bias's gradients), a visible part of a small UNet's step on
a GPU (benchmarks/NOTES.md, "Closed-form GroupNorm gradients and paired dropout masks"). Here one multi-output
reduction reads x and dy for s1 and s2, and dx is one elementwise pass that XLA fuses into its consumer. s1 and s2
sit behind an optimization barrier before their batch sums, for the reason of `layers.add_bias`. The max(., 0) on
the variance gets no gradient here: the closed form differentiates var = mean((x - mu)^2), which it equals.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def _grouped(v: jax.Array, groups: int) -> jax.Array:
    """(B, ..., C) -> (B, ..., G, C / G)."""
    return v.reshape(*v.shape[:-1], groups, v.shape[-1] // groups)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """(B, G) -> (B, 1, ..., 1, G, 1): broadcasts against a grouped array of `ndim` + 1 axes."""
    return v.reshape(v.shape[0], *(1,) * (ndim - 2), v.shape[1], 1)


def _statistics(x: jax.Array, groups: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Per example and group (B, G): the mean and r = rsqrt(var + eps), in float32."""
    grouped = _grouped(x.astype(jnp.float32), groups)
    axes = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
    mean = grouped.mean(axis=axes)
    var = jnp.maximum(jnp.square(grouped).mean(axis=axes) - jnp.square(mean), 0.0)
    return mean, jax.lax.rsqrt(var + eps)


def _normalized(x: jax.Array, mean: jax.Array, rstd: jax.Array, groups: int) -> jax.Array:
    """xhat = (x - mean) * rstd (B, ..., C) in float32."""
    grouped = _grouped(x.astype(jnp.float32), groups)
    return ((grouped - _per_channel(mean, x.ndim)) * _per_channel(rstd, x.ndim)).reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float,
                    dtype: Dtype) -> jax.Array:
    """x (B, ..., C), scale and bias (C,) -> (B, ..., C) in `dtype`; statistics over each example's pixels and the
    channels of each of `groups` groups."""
    return _forward(x, scale, bias, groups, eps, dtype)[0]


def _forward(x, scale, bias, groups, eps, dtype):
    mean, rstd = _statistics(x, groups, eps)
    y = _normalized(x, mean, rstd, groups) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dtype), (x, scale, bias, mean, rstd)


def _backward(groups, eps, dtype, residuals, dy):
    del eps, dtype
    x, scale, bias, mean, rstd = residuals
    dy = dy.astype(jnp.float32)
    xhat = _normalized(x, mean, rstd, groups)
    pixel_axes = tuple(range(1, x.ndim - 1))
    s1, s2 = jax.lax.optimization_barrier((dy.sum(axis=pixel_axes), (dy * xhat).sum(axis=pixel_axes)))  # (B, C)
    scale32 = scale.astype(jnp.float32)
    count = np.prod(x.shape[1:-1]) * (x.shape[-1] // groups)
    a, c = (_grouped(s * scale32, groups).sum(axis=-1) / count for s in (s1, s2))  # the docstring's a / n, c / n
    dx = _grouped(dy * scale32, groups) - _per_channel(a, x.ndim) - _grouped(xhat, groups) * _per_channel(c, x.ndim)
    dx = (dx * _per_channel(rstd, x.ndim)).reshape(x.shape)
    dbias, dscale = jnp.stack([s1, s2]).sum(axis=1)  # one reduction over the batch for both
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


group_normalize.defvjp(_forward, _backward)


class GroupNorm(nn.Module):
    """nn.GroupNorm's parameters (`scale` ones, `bias` zeros, (C,)) and outputs, with `group_normalize`'s backward."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Callable[..., jax.Array] = nn.initializers.ones
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, ..., C), C divisible by num_groups -> (B, ..., C) in `dtype`."""
        channels = x.shape[-1]
        if channels % self.num_groups:
            raise ValueError(f"GroupNorm over {channels} channels: {self.num_groups} groups do not divide them")
        scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
        return group_normalize(x, scale, bias, self.num_groups, self.epsilon, self.dtype)
