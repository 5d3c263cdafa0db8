"""AutoencoderKL, its posterior and the PatchGAN discriminator: parameter counts against the reference
implementations, shapes for f = 4 and f = 8, the KL against its closed form and a Monte Carlo estimate, sampling
statistics, precision, jit.

The full-size presets are only traced (jax.eval_shape allocates nothing); compute runs on tiny widths.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.nets import AUTOENCODERS, AutoencoderKL, DiagonalGaussian, PatchDiscriminator, build_network
from diffax.nets.layers import Downsample


def param_count(variables) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


TINY = build_network("autoencoder_kl_tiny")
X = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)


@jax.jit
def apply_tiny(variables, x, key):
    """The tiny autoencoder on x with a sampled posterior; one compilation shared by the tests."""
    return TINY.apply(variables, x, sample_posterior=True, key=key)


@functools.cache
def tiny_variables():
    return init(TINY, X)


def init(model, x, **kwargs):
    """Parameters of model for x, initialized under jit (eager Flax compiles op by op, far slower on CPU)."""
    return jax.jit(lambda key, x: model.init(key, x, **kwargs))(jax.random.key(1), x)


def shapes_of(model, image_shape):
    x = jax.ShapeDtypeStruct(image_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def diffusers_count(block_out_channels, layers_per_block, latent_channels, in_channels=3, out_channels=3) -> int:
    """Parameters of diffusers' AutoencoderKL (0.42: autoencoders/vae.py Encoder/Decoder, DownEncoderBlock2D,
    UpDecoderBlock2D, UNetMidBlock2D, ResnetBlock2D without time embedding, Attention with biases), by formula."""
    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    def resnet(cin, cout):
        skip = conv(cin, cout, 1) if cin != cout else 0
        return 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + skip

    def mid(c):
        return 2 * resnet(c, c) + 2 * c + 4 * (c * c + c)

    widths, last = list(block_out_channels), len(block_out_channels) - 1
    total = conv(in_channels, widths[0], 3) + conv(latent_channels, widths[-1], 3)  # the two conv_in
    for level, (cin, cout) in enumerate(zip([widths[0], *widths[:-1]], widths)):  # encoder
        total += resnet(cin, cout) + (layers_per_block - 1) * resnet(cout, cout) + conv(cout, cout, 3) * (level < last)
    reversed_widths = widths[::-1]
    for index, (cin, cout) in enumerate(zip([reversed_widths[0], *reversed_widths[:-1]], reversed_widths)):  # decoder
        total += resnet(cin, cout) + layers_per_block * resnet(cout, cout) + (conv(cout, cout, 3) * (index < last))
    total += 2 * mid(widths[-1])
    total += 2 * widths[-1] + conv(widths[-1], 2 * latent_channels, 3)  # encoder conv_norm_out, conv_out
    total += 2 * widths[0] + conv(widths[0], out_channels, 3)  # decoder conv_norm_out, conv_out
    return total + conv(2 * latent_channels, 2 * latent_channels, 1) + conv(latent_channels, latent_channels, 1)


def test_the_formula_gives_the_published_stable_diffusion_vae_count():
    # sum(p.numel() for p in AutoencoderKL.from_pretrained("runwayml/stable-diffusion-v1-5", subfolder="vae")
    # .parameters()) = 83,653,863, e.g. https://forums.fast.ai/t/stable-diffusion-parameter-budget-allocation/101515
    assert diffusers_count((128, 256, 512, 512), 2, 4) == 83_653_863


@pytest.mark.parametrize("name, image, latent, expected", [
    ("autoencoder_kl_f8", (1, 256, 256, 3), (1, 32, 32, 4), 83_653_863),  # the Stable Diffusion VAE
    ("autoencoder_kl_f4", (1, 256, 256, 3), (1, 64, 64, 3), 55_312_063),  # LDM kl-f4: ch_mult (1, 2, 4), z 3
    ("autoencoder_kl_tiny", (1, 32, 32, 3), (1, 16, 16, 4), 658_375),
])
def test_presets_have_the_reference_counts_and_shapes(name, image, latent, expected):
    model = build_network(name)
    widths = tuple(model.channels * mult for mult in model.channel_mult)
    assert diffusers_count(widths, model.num_res_blocks, model.latent_channels) == expected
    variables = shapes_of(model, image)
    assert param_count(variables) == expected
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    reconstruction, posterior = jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                                               jax.ShapeDtypeStruct(image, jnp.float32))
    assert reconstruction.shape == image and posterior.mean.shape == posterior.logvar.shape == latent
    decoded = jax.eval_shape(lambda v, z: model.apply(v, z, method="decode"), variables,
                             jax.ShapeDtypeStruct(latent, jnp.float32))
    assert decoded.shape == image and decoded.dtype == jnp.float32


def test_layer_names_follow_diffusers():
    params = shapes_of(build_network("autoencoder_kl_f8"), (1, 64, 64, 3))["params"]
    assert set(params) == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    assert set(params["encoder"]) == {"conv_in", *(f"down_blocks_{i}" for i in range(4)), "mid_block",
                                      "conv_norm_out", "conv_out"}
    assert set(params["decoder"]) == {"conv_in", "mid_block", *(f"up_blocks_{i}" for i in range(4)),
                                      "conv_norm_out", "conv_out"}
    assert set(params["encoder"]["mid_block"]) == {"resnets_0", "attentions_0", "resnets_1"}
    assert set(params["encoder"]["down_blocks_0"]) == {"resnets_0", "resnets_1", "downsamplers_0"}
    assert "downsamplers_0" not in params["encoder"]["down_blocks_3"]
    assert set(params["decoder"]["up_blocks_0"]) == {"resnets_0", "resnets_1", "resnets_2", "upsamplers_0"}
    assert "upsamplers_0" not in params["decoder"]["up_blocks_3"]
    # Deepest level first in the decoder; the 1x1 skip where the width changes (512 -> 256 in up_blocks_2).
    assert params["decoder"]["up_blocks_2"]["resnets_0"]["Conv_2"]["kernel"].shape == (1, 1, 512, 256)
    assert params["encoder"]["conv_out"]["kernel"].shape == (3, 3, 512, 8)


def test_ldm_downsampling_pads_bottom_right_then_strides():
    # LDM / diffusers Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)) then a VALID 3x3 convolution with stride 2.
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 2))
    layer = Downsample(padding=((0, 1), (0, 1)))
    variables = init(layer, x)
    out = layer.apply(variables, x)
    kernel, bias = variables["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["bias"]
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    reference = jax.lax.conv_general_dilated(padded, kernel, (2, 2), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    assert out.shape == (1, 3, 3, 2)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_tiny_encode_decode_shapes_for_f4_and_f8():
    f8 = build_network("autoencoder_kl_tiny", channel_mult=(1, 1, 1, 1), latent_channels=3)
    posterior = jax.eval_shape(lambda x: f8.init_with_output(jax.random.key(0), x, method="encode")[0], X)
    assert f8.downsampling_factor == 8 and posterior.mean.shape == (2, 2, 2, 3)
    f4 = build_network("autoencoder_kl_tiny", channel_mult=(1, 1, 1), latent_channels=3)
    x = X[:, :, :12]  # H and W need only be multiples of f
    reconstruction, posterior = jax.jit(lambda v, x: f4.apply(v, x, sample_posterior=True,
                                                              key=jax.random.key(2)))(init(f4, x), x)
    assert f4.downsampling_factor == 4 and posterior.mean.shape == (2, 4, 3, 3)
    assert reconstruction.shape == x.shape and reconstruction.dtype == jnp.float32
    assert bool(jnp.isfinite(reconstruction).all())


def random_posterior(shape=(3, 2, 2, 4), seed=0) -> DiagonalGaussian:
    mean_key, logvar_key = jax.random.split(jax.random.key(seed))
    return DiagonalGaussian(jax.random.normal(mean_key, shape), jax.random.uniform(logvar_key, shape, minval=-2,
                                                                                   maxval=1))


def test_kl_equals_the_closed_form():
    # KL(N(mu, s^2) || N(0, 1)) = log(1 / s) + (s^2 + mu^2) / 2 - 1/2 per dimension (Kingma & Welling 2014, App. B),
    # in float64 numpy, summed over everything but the batch axis.
    posterior = random_posterior()
    mu, s = np.asarray(posterior.mean, np.float64), np.exp(0.5 * np.asarray(posterior.logvar, np.float64))
    expected = (np.log(1 / s) + (s ** 2 + mu ** 2) / 2 - 0.5).sum(axis=(1, 2, 3))
    assert posterior.kl().shape == (3,)
    np.testing.assert_allclose(posterior.kl(), expected, rtol=1e-5)
    standard = DiagonalGaussian(jnp.zeros((2, 2, 2, 4)), jnp.zeros((2, 2, 2, 4)))
    np.testing.assert_allclose(standard.kl(), 0.0, atol=1e-7)


def test_kl_and_nll_match_a_monte_carlo_estimate():
    # KL = E_q[log q(z) - log p(z)], log q(z) = -nll(z), log p(z) = -0.5 * sum(z^2 + log 2 pi).
    posterior = random_posterior(shape=(2, 2, 2, 2), seed=1)
    samples = jax.vmap(posterior.sample)(jax.random.split(jax.random.key(3), 100_000))  # (N, B, h, w, c)
    log_q = -jax.vmap(posterior.nll)(samples)
    log_p = -0.5 * (samples ** 2 + np.log(2 * np.pi)).sum(axis=(2, 3, 4))
    estimate = log_q - log_p  # (N, B)
    standard_error = estimate.std(axis=0) / np.sqrt(estimate.shape[0])
    assert np.all(np.abs(estimate.mean(axis=0) - posterior.kl()) < 4 * standard_error)


def test_samples_have_the_posterior_mean_and_std_and_mode_is_the_mean():
    posterior = random_posterior(shape=(1, 2, 2, 3), seed=2)
    samples = jax.vmap(posterior.sample)(jax.random.split(jax.random.key(4), 40_000))
    count = samples.shape[0]
    assert np.all(np.abs(samples.mean(axis=0) - posterior.mean) < 5 * posterior.std / np.sqrt(count))
    np.testing.assert_allclose(samples.std(axis=0), posterior.std, rtol=0.03)
    np.testing.assert_array_equal(posterior.mode(), posterior.mean)
    np.testing.assert_allclose(posterior.var, posterior.std ** 2, rtol=1e-6)


def test_moments_split_mean_first_and_clip_the_log_variance():
    moments = jnp.concatenate([jnp.full((1, 1, 1, 2), 0.5), jnp.array([[[[-40.0, 25.0]]]])], axis=-1)
    posterior = DiagonalGaussian.from_moments(moments)
    np.testing.assert_array_equal(posterior.mean, [[[[0.5, 0.5]]]])
    np.testing.assert_array_equal(posterior.logvar, [[[[-30.0, 20.0]]]])


def test_bfloat16_compute_keeps_float32_params_and_outputs(randomized_like):
    half = build_network("autoencoder_kl_tiny", dtype=jnp.bfloat16)
    variables = randomized_like(shapes_of(TINY, X.shape))
    assert {p.dtype for p in jax.tree.leaves(jax.eval_shape(lambda: half.init(jax.random.key(0), X)))} == {
        jnp.dtype(jnp.float32)}
    key = jax.random.key(2)
    reference, reference_posterior = apply_tiny(variables, X, key)
    out, posterior = jax.jit(lambda v, x: half.apply(v, x, sample_posterior=True, key=key))(variables, X)
    assert out.dtype == posterior.mean.dtype == posterior.logvar.dtype == jnp.float32
    relative = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
    assert 1e-4 < relative < 5e-2  # bf16's 8-bit mantissa: different from float32, but close
    assert float(jnp.abs(posterior.mean - reference_posterior.mean).max()) < 0.1 * float(
        jnp.abs(reference_posterior.mean).max())


def test_subpixel_upsampling_keeps_parameters_and_outputs(randomized_like):
    """The decoder's upsampling convolutions on the low-resolution grid: the same parameters and reconstruction."""
    fast = build_network("autoencoder_kl_tiny", subpixel_upsample=True)
    chex.assert_trees_all_equal(init(fast, X), tiny_variables())
    variables, key = randomized_like(shapes_of(TINY, X.shape)), jax.random.key(2)
    out, _ = jax.jit(lambda v, x: fast.apply(v, x, sample_posterior=True, key=key))(variables, X)
    np.testing.assert_allclose(out, apply_tiny(variables, X, key)[0], rtol=1e-4, atol=1e-5)


class JitTest(chex.TestCase):
    """The tiny autoencoder gives the same outputs with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_same_outputs(self):
        key = jax.random.key(2)
        apply = self.variant(lambda v, x, key: TINY.apply(v, x, sample_posterior=True, key=key))
        reconstruction, posterior = apply(tiny_variables(), X, key)
        expected, expected_posterior = apply_tiny(tiny_variables(), X, key)
        np.testing.assert_allclose(reconstruction, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(posterior.mean, expected_posterior.mean, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named():
    variables = tiny_variables()
    with pytest.raises(ValueError, match=r"shape \(1, 7, 8, 3\).*multiples of the downsampling factor 2"):
        jax.eval_shape(TINY.apply, variables, jnp.zeros((1, 7, 8, 3)))
    with pytest.raises(ValueError, match="sample_posterior=True.*needs a PRNG key"):
        jax.eval_shape(functools.partial(TINY.apply, sample_posterior=True), variables, X)
    with pytest.raises(ValueError, match=r"latents of shape \(1, 4, 4, 3\): expected \(B, h, w, 4\)"):
        jax.eval_shape(functools.partial(TINY.apply, method="decode"), variables, jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="GroupNorm over 48 channels: 32 groups do not divide them"):
        shapes_of(AutoencoderKL(channels=48, channel_mult=(1,)), (1, 8, 8, 3))


def test_autoencoders_are_registered():
    assert {"autoencoder_kl_f8", "autoencoder_kl_f4", "autoencoder_kl_tiny"} <= set(AUTOENCODERS)
    assert build_network("autoencoder_kl_f4").downsampling_factor == 4


def discriminator_count(in_channels=3, features=64, num_layers=3) -> int:
    """taming's NLayerDiscriminator with BatchNorm: convolutions after the first have no bias; BatchNorm has a
    weight and a bias per channel."""
    total, width = in_channels * 16 * features + features, features
    for layer in range(1, num_layers + 1):
        out = features * min(2 ** layer, 8)
        total, width = total + width * 16 * out + 2 * out, out
    return total + width * 16 + 1


def test_discriminator_count_and_patch_map():
    assert discriminator_count() == 2_765_633
    # pix2pix's 70x70 PatchGAN with InstanceNorm (no norm parameters, biased convolutions): the 2,764,737 often
    # quoted; taming / LDM use BatchNorm instead.
    assert discriminator_count() - 2 * (128 + 256 + 512) + (128 + 256 + 512) == 2_764_737
    model = PatchDiscriminator()
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert param_count(variables) == 2_765_633
    assert {name: stats["mean"].shape for name, stats in variables["batch_stats"].items()} == {
        "norm_1": (128,), "norm_2": (256,), "norm_3": (512,)}
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0], variables, x)
    assert logits.shape == (2, 30, 30, 1) and logits.dtype == jnp.float32  # 70x70 receptive fields


def test_discriminator_trains_with_batch_statistics():
    model = PatchDiscriminator(features=8)
    x = jax.random.normal(jax.random.key(0), (4, 24, 24, 3)) * 3 + 2
    variables = init(model, x, train=False)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = train(variables, x)
    assert logits.shape == (4, 1, 1, 1)
    # The running mean moves 10% of the way to the batch mean (PyTorch's momentum 0.1): from 0 to 0.1 m, then on the
    # same batch to 0.1 m + 0.9 * 0.1 m = 0.19 m.
    _, twice = train({**variables, **updates}, x)
    once = updates["batch_stats"]["norm_1"]["mean"]
    assert float(jnp.abs(once).min()) > 0
    np.testing.assert_allclose(twice["batch_stats"]["norm_1"]["mean"], 1.9 * once, rtol=1e-4)
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16, 3\).*>= 24 for num_layers 3"):
        model.apply(variables, jnp.zeros((1, 16, 16, 3)), train=False)
