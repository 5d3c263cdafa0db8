"""The closed-form GroupNorm against autodiff of Flax's nn.GroupNorm: parameters, outputs, parameter and input
gradients."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets import norm_grads


def values_and_grads(apply, params, x):
    """apply(params, x), and the gradients of sum(sin(.)) with respect to params and x."""
    loss = lambda p, x: jnp.sum(jnp.sin(apply(p, x).astype(jnp.float32)))  # noqa: E731
    return apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)


def compare(shape, dtype, variant=lambda f: f):
    x = (3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)).astype(dtype)
    ours, flax_norm = norm_grads.GroupNorm(num_groups=8), nn.GroupNorm(num_groups=8, epsilon=1e-6, dtype=jnp.float32)
    params = flax_norm.init(jax.random.key(2), x)
    chex.assert_trees_all_equal(ours.init(jax.random.key(2), x), params)  # names, shapes and initial values
    leaves, treedef = jax.tree.flatten(params)
    params = treedef.unflatten([p + 0.1 * jax.random.normal(jax.random.key(3 + i), p.shape) for i, p in
                                enumerate(leaves)])  # not their ones / zeros
    out, grads = values_and_grads(variant(ours.apply), params, x)
    expected, expected_grads = values_and_grads(flax_norm.apply, params, x)
    assert out.dtype == expected.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, expected_grads)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        # A bf16 input gradient is float32 rounded once; summing in another order may round it one ulp apart.
        ulp = 2.0 ** -7 * np.abs(want).max() if got.size == x.size and dtype == jnp.bfloat16 else 0.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(1e-4, ulp))


@pytest.mark.parametrize("shape", [(2, 6, 5, 32), (3, 7, 32)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_autodiff_of_flax_group_norm(dtype, shape):
    compare(shape, dtype)


class JitTest(chex.TestCase):
    """The same comparison with the closed-form side under jit and without."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_autodiff_of_flax_group_norm(self):
        compare((2, 4, 4, 16), jnp.float32, self.variant)


def test_refuses_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="3 groups do not divide"):
        norm_grads.GroupNorm(num_groups=3).init(jax.random.key(0), jnp.ones((1, 2, 2, 8)))
