"""Building blocks against independent references: attention (with and without folded biases), FIR resampling,
embeddings, group counts, the two-stage bias gradients, the 3x3 convolution as matrix products and the sub-pixel
upsampling convolution against Flax's own layers (the closed-form GroupNorm: test_nets_norm_grads.py)."""

import functools
import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets import attention as attention_lib
from diffax.nets.attention import Attention
from diffax.nets.embeddings import fourier_embedding, sincos_2d_positions, sinusoidal_embedding
from diffax.nets.conv_forms import MatmulConv3x3, UpsampledConv3x3
from diffax.nets.layers import Conv, add_bias, downsample_2d, num_groups, split_xavier_init, upsample_2d
from diffax.nets.unet import UNet


def reference_attention(x, context, params, num_heads):
    """softmax(q k^T / sqrt(d)) v per head, written with numpy."""
    x, context = np.asarray(x, np.float64), np.asarray(context, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    q = x @ p["q"]["kernel"] + p["q"]["bias"]
    k, v = (context @ p[name]["kernel"] + p[name]["bias"] for name in "kv")
    q, k, v = (a.reshape(*a.shape[:2], num_heads, -1).transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, N, T, d)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    return out @ p["out"]["kernel"] + p["out"]["bias"]


@pytest.mark.parametrize("implementation", [None, "xla"])
def test_cross_attention_matches_reference(implementation):
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    context = jax.random.normal(jax.random.key(1), (2, 7, 12))
    module = Attention(num_heads=4, zero_output=False, implementation=implementation)
    params = jax.jit(module.init)(jax.random.key(2), x, context)["params"]
    out = jax.jit(module.apply)({"params": params}, x, context)
    np.testing.assert_allclose(out, reference_attention(x, context, params, 4), rtol=1e-4, atol=1e-5)


def test_self_attention_matches_reference():
    x = jax.random.normal(jax.random.key(0), (2, 6, 16))
    module = Attention(num_heads=2, zero_output=False)
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]
    assert {name: params[name]["kernel"].shape for name in "qkv"} == {"q": (16, 16), "k": (16, 16), "v": (16, 16)}
    out = jax.jit(module.apply)({"params": params}, x)
    np.testing.assert_allclose(out, reference_attention(x, x, params, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
def test_folded_biases_match_reference_with_every_bias(cross):
    """fold_biases leaves k's bias out and adds v's after the output projection: the numpy reference adds all four
    where they belong. Same parameters as the plain layer; k's bias gets an exactly zero gradient."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    context = jax.random.normal(jax.random.key(1), (2, 7, 12)) if cross else None
    module = Attention(num_heads=2, zero_output=False, fold_biases=True)
    params = jax.jit(module.init)(jax.random.key(2), x, context)["params"]
    chex.assert_trees_all_equal(params, Attention(num_heads=2, zero_output=False).init(jax.random.key(2), x,
                                                                                       context)["params"])
    params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(3), p.shape), params)
    out = jax.jit(module.apply)({"params": params}, x, context)
    reference = reference_attention(x, x if context is None else context, params, 2)
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, x, context) ** 2))(params)
    assert not np.any(grads["k"]["bias"]) and np.all(np.abs(grads["v"]["bias"]) > 0)


def test_split_xavier_init_is_a_block_of_the_fused_xavier_matrix():
    kernel = split_xavier_init(3)(jax.random.key(0), (256, 64))
    fused_bound = np.sqrt(6.0 / (256 + 3 * 64))  # Xavier-uniform over the (256, 192) fused matrix.
    assert 0.99 * fused_bound < np.abs(kernel).max() <= fused_bound
    np.testing.assert_allclose(np.std(kernel), fused_bound / np.sqrt(3.0), rtol=0.03)


def test_cudnn_refusal_follows_jax_cudnn_checks():
    hopper, ampere = attention_lib.CudnnGpu((9, 0), 91900), attention_lib.CudnnGpu((8, 0), 91900)

    def refusal(head_dim=64, queries=256, keys=None, dtype=jnp.bfloat16, gpu=hopper, k_dtype=None):
        q_shape, k_shape = (2, queries, 4, head_dim), (2, queries if keys is None else keys, 4, head_dim)
        return attention_lib.cudnn_refusal(q_shape, k_shape, dtype, k_dtype or dtype, gpu)

    assert refusal() is None
    assert refusal(72) is None  # DiT-XL/2: 256 tokens, head_dim 72.
    assert refusal(dtype=jnp.float16) is None
    assert refusal(keys=78) is None  # cross-attention on 78 context tokens
    assert refusal(256) is None  # Hopper takes head_dim up to 256 ...
    assert "head_dim 256" in refusal(256, gpu=ampere)  # ... older GPUs up to 128.
    assert refusal(128, gpu=ampere) is None
    assert "head_dim 20" in refusal(20)
    assert "head_dim 264" in refusal(264)
    assert "float32" in refusal(dtype=jnp.float32)
    assert "float32" in refusal(k_dtype=jnp.float32)
    assert refusal(gpu=None) == "no CUDA GPU with cuDNN"
    # The training forward needs even lengths: mnist's 7x7 token grid raised "Unsupported sequence length Q 49, KV 49".
    assert "Q 49, KV 49" in refusal(queries=49)
    assert "Q 256, KV 77" in refusal(keys=77)
    assert "10.3" in refusal(gpu=attention_lib.CudnnGpu((10, 3), 91000))
    assert refusal(gpu=attention_lib.CudnnGpu((10, 3), 91100)) is None


def test_attention_implementation_choice(monkeypatch):
    q = jnp.zeros((1, 4, 2, 64), jnp.bfloat16)
    odd = jnp.zeros((1, 49, 2, 64), jnp.bfloat16)
    choose = attention_lib.choose_implementation
    assert choose("cudnn", odd, odd) == "cudnn"  # Explicit wins.
    assert attention_lib.local_cudnn_gpu() is None  # This machine has no GPU ...
    assert choose(None, q, q) == "xla"
    monkeypatch.setattr(attention_lib, "local_cudnn_gpu", lambda: attention_lib.CudnnGpu((9, 0), 91900))
    assert choose(None, q, q) == "cudnn"  # ... with one, the rule decides.
    assert choose(None, odd, odd) == "xla"


def test_self_attention_is_permutation_equivariant():
    x = jax.random.normal(jax.random.key(0), (1, 6, 8))
    module = Attention(num_heads=2, zero_output=False)
    variables = jax.jit(module.init)(jax.random.key(1), x)
    perm = jnp.array([3, 0, 5, 1, 4, 2])
    out = jax.jit(module.apply)(variables, jnp.stack([x[0], x[0, perm]]))
    np.testing.assert_allclose(out[1], out[0][perm], rtol=1e-5, atol=1e-6)


def test_box_filter_resampling_is_average_pooling_and_nearest():
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    pooled = x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(downsample_2d(x), pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(upsample_2d(x), jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2), rtol=1e-6)


def test_fir_resampling_preserves_constants_away_from_the_border():
    x = jnp.full((1, 8, 8, 2), 3.0)
    down, up = downsample_2d(x, (1, 3, 3, 1)), upsample_2d(x, (1, 3, 3, 1))
    assert down.shape == (1, 4, 4, 2) and up.shape == (1, 16, 16, 2)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)


def test_sinusoidal_embedding_formula():
    x = jnp.array([0.0, 1.0, 250.0])
    emb = sinusoidal_embedding(x, 8)
    freqs = 10_000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb, np.concatenate([np.cos(np.outer(x, freqs)), np.sin(np.outer(x, freqs))], 1),
                               rtol=1e-5, atol=1e-5)


def test_fourier_embedding_is_fixed_by_its_seed():
    x = jnp.linspace(-3, 3, 5)
    np.testing.assert_array_equal(fourier_embedding(x, 16), fourier_embedding(x, 16))
    assert not np.allclose(fourier_embedding(x, 16), fourier_embedding(x, 16, seed=1))
    np.testing.assert_allclose(jnp.sum(fourier_embedding(x, 16) ** 2, axis=1), 8.0, rtol=1e-5)  # cos^2 + sin^2


def test_2d_positions_are_distinct_and_bounded():
    positions = sincos_2d_positions(3, 5, 16)
    assert positions.shape == (15, 16) and np.abs(positions).max() <= 1.0
    assert len({tuple(row) for row in positions.round(6)}) == 15
    with pytest.raises(ValueError, match="not divisible by 4"):
        sincos_2d_positions(2, 2, 10)


@pytest.mark.parametrize("channels, groups", [(128, 32), (256, 32), (64, 16), (16, 4), (12, 3), (6, 1), (3, 1)])
def test_group_counts(channels, groups):
    assert num_groups(channels) == groups


def _perturbed(params, scale=0.1):
    """params + scale * N(0, 1) noise, so that biases and scales are not their zero / one initial values."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return treedef.unflatten([p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _values_and_grads(module, params, x):
    """module(x), and the gradients of sum(sin(module(x))) with respect to the parameters and x."""
    loss = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))  # noqa: E731
    return module.apply(params, x), jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)


def test_add_bias_gradient_is_the_sum_over_all_but_the_channel_axis():
    y = jax.random.normal(jax.random.key(0), (3, 4, 5, 6))
    bias = jax.random.normal(jax.random.key(1), (6,))
    weights = jax.random.normal(jax.random.key(2), y.shape)
    grad_y, grad_bias = jax.grad(lambda y, b: jnp.sum(add_bias(y, b) * weights), argnums=(0, 1))(y, bias)
    np.testing.assert_allclose(add_bias(y, bias), y + bias)
    np.testing.assert_allclose(grad_y, weights)
    np.testing.assert_allclose(grad_bias, weights.sum(axis=(0, 1, 2)), rtol=1e-5)


def test_conv_matches_flax():
    """Same parameters (kernel, bias), outputs and gradients as nn.Conv."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 5))
    ours, flax_conv = Conv(7, (3, 3), padding=((1, 1), (1, 1))), nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)))
    params = ours.init(jax.random.key(1), x)
    expected_params = flax_conv.init(jax.random.key(1), x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, expected_params))
    params = _perturbed(params)
    (out, grads), (expected, expected_grads) = (_values_and_grads(m, params, x) for m in (ours, flax_conv))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_stage_conv_refuses_a_second_bias():
    with pytest.raises(ValueError, match="use_bias"):
        Conv(3, (1, 1), use_bias=True).init(jax.random.key(0), jnp.ones((1, 2, 2, 4)))


@pytest.fixture(scope="module")
def plain_unet():
    """A small UNet with every speed option off: its initial parameters, perturbed ones (a zero-initialized head
    would make every other gradient zero), and the loss sum(net(x)^2) and its float32 gradient at them."""
    kwargs = dict(channels=16, channel_mult=(1, 2), attention_levels=(1,), dropout=0.0)
    x, noise_level = jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), jnp.array([0.2, 0.7])
    loss = lambda net, p: jnp.sum(net.apply(p, x, noise_level, train=False) ** 2)  # noqa: E731
    params = UNet(**kwargs).init(jax.random.key(1), x, noise_level, train=False)
    perturbed = _perturbed(params, 0.05)
    value, grads = jax.jit(jax.value_and_grad(functools.partial(loss, UNet(**kwargs))))(perturbed)
    return types.SimpleNamespace(kwargs=kwargs, x=x, noise_level=noise_level, loss=loss, params=params,
                                 perturbed=perturbed, value=value, grads=grads)


def same_unet_as_plain(plain_unet, option: str, value_rtol: float):
    """UNet(option=True) has the plain UNet's parameter tree and initial values (checkpoints load either way), its
    loss, and its gradients. A bias right before a GroupNorm has a zero gradient, where both give rounding noise:
    hence the atol relative to the largest gradient."""
    net = UNet(**plain_unet.kwargs, **{option: True})
    chex.assert_trees_all_equal(net.init(jax.random.key(1), plain_unet.x, plain_unet.noise_level, train=False),
                                plain_unet.params)
    value, grads = jax.jit(jax.value_and_grad(functools.partial(plain_unet.loss, net)))(plain_unet.perturbed)
    np.testing.assert_allclose(value, plain_unet.value, rtol=value_rtol)
    largest = max(float(jnp.abs(want).max()) for want in jax.tree.leaves(plain_unet.grads))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_unet.grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * largest)


def test_unet_two_stage_bias_grads_keeps_parameters_and_gradients(plain_unet):
    """The option changes how gradients are computed (bias sums in two stages, GroupNorm's backward in closed form),
    nothing else."""
    same_unet_as_plain(plain_unet, "two_stage_bias_grads", value_rtol=1e-6)


def conv_form_matches_flax_conv(ours, flax_input, in_channels, features, variant):
    """`ours` (a conv_forms module) on x against nn.Conv's 3x3 'same' convolution (Xavier-uniform kernel) of
    flax_input(x): the same parameter tree and initial values, outputs and gradients (parameters and input), on a
    non-square input."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, in_channels))
    flax_conv = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=nn.initializers.xavier_uniform())
    params = ours.init(jax.random.key(1), x)
    chex.assert_trees_all_equal(params, flax_conv.init(jax.random.key(1), flax_input(x)))
    params = _perturbed(params)
    loss = lambda module, form, p, x: jnp.sum(jnp.sin(module.apply(p, form(x))))  # noqa: E731
    got = variant(jax.value_and_grad(functools.partial(loss, ours, lambda x: x), argnums=(0, 1)))(params, x)
    expected = jax.jit(jax.value_and_grad(functools.partial(loss, flax_conv, flax_input), argnums=(0, 1)))(params, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)


class TestMatmulConv3x3(chex.TestCase):
    """Both formulations (stacked shifted inputs for C_in <= C_out, summed shifted products otherwise), under jit
    and without."""

    def check(self, in_channels, features):
        conv = MatmulConv3x3(features, kernel_init=nn.initializers.xavier_uniform())
        conv_form_matches_flax_conv(conv, lambda x: x, in_channels, features, self.variant)

    @chex.variants(with_jit=True, without_jit=True)
    def test_few_input_channels(self):
        self.check(3, 8)

    @chex.variants(with_jit=True, without_jit=True)
    def test_few_output_channels(self):
        self.check(8, 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_as_many_channels_out_as_in(self):
        self.check(4, 4)


class TestUpsampledConv3x3(chex.TestCase):
    """The sub-pixel form against the convolution of the nearest-neighbour upsampled input, with more and with
    fewer output channels than input channels, under jit and without."""

    def check(self, in_channels, features):
        conv_form_matches_flax_conv(UpsampledConv3x3(features), upsample_2d, in_channels, features, self.variant)

    @chex.variants(with_jit=True, without_jit=True)
    def test_more_output_channels(self):
        self.check(4, 6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_fewer_output_channels(self):
        self.check(6, 4)


def test_unet_subpixel_upsample_keeps_parameters_and_gradients(plain_unet):
    same_unet_as_plain(plain_unet, "subpixel_upsample", value_rtol=1e-5)


def test_unet_fold_attention_biases_keeps_parameters_and_gradients(plain_unet):
    same_unet_as_plain(plain_unet, "fold_attention_biases", value_rtol=1e-5)


def test_unet_stem_head_as_matmuls_keeps_parameters_and_gradients(plain_unet):
    """The option computes the stem and head as matrix products, nothing else."""
    same_unet_as_plain(plain_unet, "stem_head_as_matmuls", value_rtol=1e-5)


def test_unet_compute_dtype_norms_is_a_no_op_in_float32(plain_unet):
    same_unet_as_plain(plain_unet, "compute_dtype_norms", value_rtol=1e-6)


@pytest.mark.parametrize("two_stage_bias_grads", [False, True])
def test_unet_compute_dtype_norms_gives_bf16_norm_outputs_and_bf16_accuracy(plain_unet, two_stage_bias_grads):
    """In bfloat16 every GroupNorm's output is bfloat16 with the option and float32 without; the network's output
    stays as close to the float32 network's as without the option (bf16 rounding, nothing worse)."""
    kwargs = dict(plain_unet.kwargs, dtype=jnp.bfloat16, two_stage_bias_grads=two_stage_bias_grads)
    is_norm = lambda module, _: "GroupNorm" in type(module).__name__  # noqa: E731

    def run(option: bool):
        net = UNet(**kwargs, compute_dtype_norms=option)
        out, state = net.apply(plain_unet.perturbed, plain_unet.x, plain_unet.noise_level, train=False,
                               capture_intermediates=is_norm, mutable=["intermediates"])
        norm_dtypes = {leaf.dtype for leaf in jax.tree.leaves(state["intermediates"])}
        return np.asarray(out, np.float32), norm_dtypes

    reference = np.asarray(UNet(**plain_unet.kwargs).apply(plain_unet.perturbed, plain_unet.x,
                                                          plain_unet.noise_level, train=False))
    (with_option, option_dtypes), (without, plain_dtypes) = run(True), run(False)
    assert option_dtypes == {jnp.dtype(jnp.bfloat16)} and plain_dtypes == {jnp.dtype(jnp.float32)}
    error = lambda out: np.abs(out - reference).max() / np.abs(reference).max()  # noqa: E731
    assert error(with_option) < max(2 * error(without), 2**-7)
