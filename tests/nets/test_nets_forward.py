"""Forward-pass contract of UNet, DiT and MLP: shapes, conditioning, precision, rematerialization, dropout.

Everything is jitted (eager Flax compiles op by op, far slower on CPU) and shapes-only checks use eval_shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals  # the function behind jax.ad_checkpoint.print_saved_residuals

from diffax.nets import drop_labels
from diffax.nets.layers import DENSE, NORMALIZED, remat_policy

KINDS = ("unet", "dit", "mlp")


def relative_error(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("kind, shape", [
    ("unet", (7, 7, 1)), ("unet", (15, 15, 3)), ("unet", (8, 8, 1)), ("unet", (28, 28, 1)), ("unet", (5, 10, 2)),
    ("dit", (7, 7, 4)), ("dit", (9, 6, 3)), ("mlp", (2,)), ("mlp", (13,)),
])
def test_output_shape_equals_input_shape(kind, shape, make_tiny):
    model, _ = make_tiny(kind, channel_mult=(1, 2, 2)) if kind == "unet" else make_tiny(kind)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.float32)
    out = jax.eval_shape(lambda x, t: model.init_with_output(jax.random.key(0), x, t, train=False)[0], x, t)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("kind", KINDS)
def test_noise_level_and_labels_change_output(kind, make_tiny, randomized):
    model, shape = make_tiny(kind, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    labels = jnp.array([3, 7])
    variables = randomized(model, x, labels)
    apply = jax.jit(lambda t, y: model.apply(variables, x, t, y, train=False))
    t = jnp.array([0.2, 0.7])
    out = apply(t, labels)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    assert relative_error(apply(t + 0.05, labels), out) > 1e-3
    assert relative_error(apply(t, jnp.array([4, 1])), out) > 1e-3
    null = apply(t, jnp.array([10, 10]))  # index num_classes is the null class
    assert relative_error(null, out) > 1e-3
    unconditional = jax.jit(lambda t: model.apply(variables, x, t, None, train=False))(t)
    np.testing.assert_allclose(unconditional, null, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_attention_reads_the_sequence(kind, make_tiny, randomized):
    model, shape = make_tiny(kind, cross_attention=True)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    context = jax.random.normal(jax.random.key(2), (2, 5, 12))
    variables = randomized(model, x, context)
    apply = jax.jit(lambda c: model.apply(variables, x, jnp.array([0.3, 0.6]), c, train=False))
    out = apply(context)
    assert out.shape == x.shape
    assert relative_error(apply(context.at[:, 2].add(1.0)), out) > 1e-3
    # Any sequence length works with the same parameters.
    assert jax.eval_shape(lambda c: model.apply(variables, x, jnp.zeros(2), c, train=False),
                          context[:, :3]).shape == x.shape


def test_bad_conditioning_is_rejected(make_tiny):
    model, shape = make_tiny("unet")
    x = jnp.zeros((2, *shape))

    def init(m, cond):
        return jax.eval_shape(lambda: m.init(jax.random.key(0), x, jnp.zeros(2), cond, train=False))

    with pytest.raises(ValueError, match="num_classes=None"):
        init(model, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="cross_attention=False"):
        init(model, jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="batch size 3"):
        init(model.clone(num_classes=10), jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"needs cond of shape \(B, L, E\)"):
        init(model.clone(cross_attention=True), None)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_compute_matches_float32(kind, make_tiny, randomized):
    """Same float32 parameters, compute in bfloat16 vs float32: relative error under 1e-2.

    Parameters and inputs are drawn exactly representable in bfloat16, so the comparison measures the compute
    precision only, not the one-off rounding of the stored parameters (about 0.2% per layer on top: the UNet
    here is at about 1.1% with arbitrary float32 parameters, DiT and MLP at about 0.6%).
    """
    def to_bf16_grid(a):
        return a.astype(jnp.bfloat16).astype(a.dtype)

    model, shape = make_tiny(kind, num_classes=10)
    x = to_bf16_grid(jax.random.normal(jax.random.key(1), (4, *shape)))
    t, labels = jnp.linspace(0.1, 0.9, 4), jnp.array([0, 3, 9, 10])
    variables = jax.tree.map(to_bf16_grid, randomized(model, x, labels))
    out32 = jax.jit(lambda v: model.apply(v, x, t, labels, train=False))(variables)
    out16 = jax.jit(lambda v: model.clone(dtype=jnp.bfloat16).apply(v, x, t, labels, train=False))(variables)
    assert out16.dtype == jnp.float32 and {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    assert relative_error(out16, out32) < 1e-2


@pytest.mark.parametrize("kind, remat",
                         [(kind, True) for kind in KINDS] + [("dit", "dots+attention+norms"), ("dit", "dense+norms")])
def test_remat_keeps_parameters_outputs_and_gradients(kind, remat, make_tiny, randomized):
    # One UNet level (ResBlocks and attention, no resampling) keeps the two gradient compilations quick.
    model, shape = make_tiny(kind, channel_mult=(1,)) if kind == "unet" else make_tiny(kind)
    remat_model = model.clone(remat=remat)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    variables = randomized(model, x)
    t = jnp.array([0.3, 0.8])
    remat_tree = jax.eval_shape(lambda: remat_model.init(jax.random.key(0), x, t, train=False))
    assert jax.tree.structure(remat_tree) == jax.tree.structure(variables)

    def value_and_grad(m):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(m.apply(v, x, t, train=True) ** 2)))(variables)

    value, grads = value_and_grad(model)
    remat_value, remat_grads = value_and_grad(remat_model)
    np.testing.assert_allclose(remat_value, value, rtol=1e-5)
    # Tolerance on the scale of the largest gradient: the key bias's exact gradient is zero (softmax is invariant
    # to a shift of all logits), so on its own scale the two would compare rounding noise.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads), strict=True):
        np.testing.assert_allclose(rg, g, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("remat, normalized, dense, dots, norm", [
    ("dots", 0, 0, 6, "xla"), ("dots+norms", 2, 0, 6, "xla"), ("dense+norms", 2, 6, 0, "xla"), ("full", 0, 0, 0, "xla"),
    ("dense+norms", 2, 6, 0, "pallas")])
def test_remat_policy_keeps_what_it_names(remat, normalized, dense, dots, norm, make_tiny):
    # A DiT block has 6 dense layers on its tokens (q, k, v, out, 2 MLP) and 2 normalized inputs of them (bf16
    # (B, N, D)); "dots" keeps the raw products, "dense" the same outputs with bias (named), "norms" the inputs.
    model, shape = make_tiny("dit")
    model = model.clone(remat=remat, dtype=jnp.bfloat16, norm_implementation=norm)
    x, t = jnp.zeros((2, *shape)), jnp.array([0.3, 0.8])
    variables = model.init(jax.random.key(0), x, t, train=False)
    residuals = saved_residuals(lambda v: model.apply(v, x, t, train=True).sum(), variables)
    tokens = [(aval, why) for aval, why in residuals if aval.ndim == 3 and aval.dtype == jnp.bfloat16]
    assert sum(f"named '{NORMALIZED}'" in why for _, why in tokens) == normalized * model.depth
    assert sum(f"named '{DENSE}'" in why for _, why in tokens) == dense * model.depth
    assert sum("output of dot_general" in why for _, why in tokens) == dots * model.depth


def test_remat_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown part"):
        remat_policy("dots+everything")


def test_dropout_draws_from_the_dropout_rng(make_tiny, randomized):
    model, shape = make_tiny("unet", channel_mult=(1,), dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (2, *shape))
    variables = randomized(model, x)
    t = jnp.array([0.3, 0.8])
    apply = jax.jit(lambda key, train: model.apply(variables, x, t, train=train, rngs={"dropout": key}),
                    static_argnums=1)
    np.testing.assert_array_equal(apply(jax.random.key(0), True), apply(jax.random.key(0), True))
    assert relative_error(apply(jax.random.key(0), True), apply(jax.random.key(1), True)) > 1e-3
    np.testing.assert_array_equal(apply(jax.random.key(0), False), apply(jax.random.key(1), False))


def test_drop_labels():
    labels = jnp.arange(1000) % 10
    np.testing.assert_array_equal(drop_labels(jax.random.key(0), labels, 0.0, 10), labels)
    np.testing.assert_array_equal(drop_labels(jax.random.key(0), labels, 1.0, 10), 10)
    dropped = drop_labels(jax.random.key(0), labels, 0.2, 10)
    is_null = dropped == 10
    assert 0.15 < float(jnp.mean(is_null)) < 0.25
    np.testing.assert_array_equal(dropped[~is_null], labels[~is_null])
