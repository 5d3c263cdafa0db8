"""Hand-written backward passes (diffax.nets.lean_grads) against autodiff of the same formulas and flax's layers.

The Pallas kernels against their reference formulas: tests/kernels/test_adaln.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets import DiT
from diffax.nets.lean_grads import gelu_tanh, modulated_layer_norm


def reference_adaln(x, shift, scale, eps):
    """flax's LayerNorm without affine parameters, then DiT's modulation (autodiff differentiates this)."""
    norm = nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False)
    return norm.apply({}, x) * (1 + scale[:, None]) + shift[:, None]


def test_gelu_tanh_value_and_gradient_match_autodiff():
    x = jnp.linspace(-6.0, 6.0, 1001)
    reference = lambda x: jax.nn.gelu(x, approximate=True)  # noqa: E731
    np.testing.assert_array_equal(gelu_tanh(x), reference(x))
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_tanh))(x), jax.vmap(jax.grad(reference))(x), rtol=1e-5,
                               atol=1e-6)


def test_gelu_tanh_bfloat16_gradient_is_float32_math_rounded_once():
    x = jnp.linspace(-4.0, 4.0, 257).astype(jnp.bfloat16)
    (dx,) = jax.vjp(gelu_tanh, x)[1](jnp.ones_like(x))
    exact = jax.vmap(jax.grad(lambda x: jax.nn.gelu(x, approximate=True)))(x.astype(jnp.float32))
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_allclose(dx.astype(jnp.float32), exact, rtol=2**-8, atol=1e-6)


# A large mean tests the one-pass variance of 'xla'. The Pallas kernels run interpreted here.
@pytest.mark.parametrize("implementation, offset, shape", [
    ("xla", 0.0, (2, 5, 16)), ("xla", 30.0, (2, 5, 16)), ("pallas", 30.0, (2, 5, 16))])
def test_modulated_layer_norm_matches_flax_value_and_gradients(implementation, offset, shape):
    kx, ks, kc, kg = jax.random.split(jax.random.key(0), 4)
    x = offset + 3 * jax.random.normal(kx, shape)
    shift, scale = jax.random.normal(ks, (shape[0], shape[2])), jax.random.normal(kc, (shape[0], shape[2]))
    cotangent = jax.random.normal(kg, shape)
    ours = lambda *a: modulated_layer_norm(*a, 1e-6, jnp.float32, implementation)  # noqa: E731
    reference = lambda *a: reference_adaln(*a, 1e-6)  # noqa: E731
    out, vjp = jax.vjp(ours, x, shift, scale)
    ref_out, ref_vjp = jax.vjp(reference, x, shift, scale)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)
    for grad, ref_grad in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref_grad))))


def test_modulated_layer_norm_gradient_sums_to_zero_along_features():
    # LayerNorm is invariant to adding a constant to a row, so every row of dx sums to zero.
    x = jax.random.normal(jax.random.key(1), (3, 4, 32))
    shift = scale = jnp.zeros((3, 32))
    dy = jax.random.normal(jax.random.key(2), x.shape)
    _, vjp = jax.vjp(lambda x: modulated_layer_norm(x, shift, scale, 1e-6, jnp.float32), x)
    (dx,) = vjp(dy)
    np.testing.assert_allclose(jnp.sum(dx, axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_modulated_layer_norm_keeps_input_dtype_in_gradient_and_returns_dtype(implementation):
    x = jax.random.normal(jax.random.key(3), (2, 4, 8)).astype(jnp.bfloat16)
    shift = scale = jnp.zeros((2, 8))
    out, vjp = jax.vjp(lambda x, s, c: modulated_layer_norm(x, s, c, 1e-6, jnp.bfloat16, implementation), x, shift,
                       scale)
    dx, dshift, dscale = vjp(jnp.ones_like(out))
    assert (out.dtype, dx.dtype, dshift.dtype, dscale.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32, jnp.float32)


@pytest.mark.parametrize("shape, kernels", [((2, 8, 16), True), ((2**16, 2**8, 2**7), False)])  # 2**31 elements
def test_pallas_layer_norm_uses_xla_formulas_beyond_int32_offsets(shape, kernels):
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    shift = jax.ShapeDtypeStruct((shape[0], shape[2]), jnp.float32)
    grad = jax.grad(lambda x, s: modulated_layer_norm(x, s, s, 1e-6, jnp.float32, "pallas").sum())
    jaxpr = str(jax.make_jaxpr(grad)(x, shift))
    assert ("custom_partitioning" in jaxpr) == kernels


@pytest.mark.parametrize("implementation", ["triton", None])
def test_norm_implementation_defaults_to_xla_and_rejects_other_values(implementation):
    assert DiT().norm_implementation == "xla"  # the Pallas kernels only where a recipe asks for them
    shift = jnp.zeros((1, 8))
    with pytest.raises(ValueError, match=f"norm_implementation {implementation!r}"):
        modulated_layer_norm(jnp.zeros((1, 2, 8)), shift, shift, 1e-6, jnp.float32, implementation)
