"""Transformer pieces whose backward pass is written by hand to move fewer bytes than autodiff's.

In a DiT train step on a GPU the matrix products run near peak; what is left is memory traffic of elementwise work
over (B, N, D) and (B, N, 4D) activations. Autodiff of the two pieces below makes XLA write intermediates it then
reads back (the tanh of the GELU as its own (B, N, 4D) array; the layer norm's backward spread over several
kernels). Written by hand, each backward is a few fused passes over its inputs; the formulas are the textbook
derivatives, checked against autodiff in tests/nets/test_lean_grads.py.

    gelu_tanh(x)            = x/2 (1 + tanh(u)),  u = c (x + 0.044715 x^3),  c = sqrt(2/pi)
      backward              dx = dy ((1 + t)/2 + x/2 (1 - t^2) c (1 + 3 * 0.044715 x^2)),  t = tanh(u)
    modulated_layer_norm    y = xhat (1 + scale) + shift,  xhat = (x - mean) r,  r = 1 / sqrt(var + eps)
      backward              g = dy (1 + scale);  dx = r (g - mean_D(g) - xhat mean_D(g xhat))
                            dshift = sum_N dy;  dscale = sum_N dy xhat

Both compute in float32 whatever the input dtype and return the input's dtype (the layer norm: `dtype`).
The layer norm's formulas and their Pallas kernels live in `diffax.kernels.adaln`: implementation 'xla' (the
default) runs the formulas, 'pallas' the kernels (interpreted off GPUs), except on arrays of 2**31 elements or more
(as traced, i.e. the global batch under jit over a Mesh), which the kernels' int32 offsets cannot address.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from diffax.kernels import adaln
from diffax.nets.layers import NORMALIZED, Dtype

NormImplementation = Literal["xla", "pallas"]
NORM_IMPLEMENTATIONS = ("xla", "pallas")

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU with the tanh approximation (Hendrycks & Gimpel 2016), as `jax.nn.gelu(x, approximate=True)`."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu_tanh(x), x


def _gelu_tanh_bwd(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    xf = x.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (xf + _GELU_A * xf**3))
    slope = 0.5 * (1 + t) + 0.5 * xf * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * xf * xf)
    return ((dy.astype(jnp.float32) * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def modulated_layer_norm(x: jax.Array, shift: jax.Array, scale: jax.Array, eps: float, dtype: Dtype,
                         implementation: str = "xla") -> jax.Array:
    """adaLN: LayerNorm(x) (no affine) * (1 + scale) + shift, in float32, returned as `dtype`.

    x (B, N, D), shift and scale (B, D) -> (B, N, D). Matches flax's LayerNorm(use_bias=False, use_scale=False)
    followed by DiT's modulate. `implementation`: 'xla' or 'pallas' (see the module docstring). The mean and
    1/std are named `NORMALIZED`, so remat's "norms" keeps them.
    """
    return _modulated_layer_norm_fwd(x, shift, scale, eps, dtype, implementation)[0]


def _uses_kernels(implementation: str, x: jax.Array) -> bool:
    if implementation not in NORM_IMPLEMENTATIONS:
        raise ValueError(f"norm_implementation {implementation!r}: use 'xla' (the default) or 'pallas'")
    return implementation == "pallas" and adaln.supports(x)


def _modulated_layer_norm_fwd(x, shift, scale, eps, dtype, implementation):
    forward = adaln.forward if _uses_kernels(implementation, x) else adaln.forward_reference
    y, mean, rstd = forward(x, shift, scale, eps, dtype)
    mean, rstd = checkpoint_name(mean, NORMALIZED), checkpoint_name(rstd, NORMALIZED)
    return y, (x, mean, rstd, shift, scale)


def _modulated_layer_norm_bwd(eps, dtype, implementation, residuals, dy):
    del eps, dtype
    x, mean, rstd, shift, scale = residuals
    backward = adaln.backward if _uses_kernels(implementation, x) else adaln.backward_reference
    dx, dshift, dscale = backward(x, dy, mean, rstd, scale)
    return dx, dshift.astype(shift.dtype), dscale.astype(scale.dtype)


modulated_layer_norm.defvjp(_modulated_layer_norm_fwd, _modulated_layer_norm_bwd)
