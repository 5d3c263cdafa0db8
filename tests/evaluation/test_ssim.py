"""SSIM against scikit-image (a fixture it made: fixtures/make_ssim_fixture.py), MS-SSIM against a numpy / scipy
implementation of Wang et al. 2003 written here, and the perceptual-loss registry (LPIPS itself is tested in
test_lpips.py)."""

import os

import numpy as np
import pytest
from scipy import ndimage

from diffax.evaluation import perceptual, ssim

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "ssim_fixture.npz")


@pytest.mark.parametrize("kind", ["gray", "rgb"])
def test_ssim_matches_scikit_image(kind):
    fixture = np.load(FIXTURE)
    x, y = fixture[f"x_{kind}"].astype(np.float32), fixture[f"y_{kind}"].astype(np.float32)
    np.testing.assert_allclose(ssim.ssim(x, y, data_range=255.0), fixture[f"ssim_{kind}"], atol=2e-5)


def _reference_ms_ssim(x: np.ndarray, y: np.ndarray, weights, data_range: float) -> np.ndarray:
    """Wang et al. 2003 in float64: scipy's Gaussian filter (sigma 1.5, truncate 3.5: 11 taps) with its border
    cropped, 2x2 mean pooling between scales, the per-channel product of powers, then the channel mean."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(images):
        blurred = ndimage.gaussian_filter(images, sigma=(0, 1.5, 1.5, 0), truncate=3.5)
        return blurred[:, 5:-5, 5:-5]

    x, y = x.astype(np.float64), y.astype(np.float64)
    score = np.ones((x.shape[0], x.shape[-1]))
    for scale, weight in enumerate(weights):
        if scale:
            x, y = (ndimage.uniform_filter(a, size=(1, 2, 2, 1), origin=(0, -1, -1, 0))[:, ::2, ::2] for a in (x, y))
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        contrast = (2 * cov + c2) / (var_x + var_y + c2)
        if scale == len(weights) - 1:
            contrast = contrast * (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
        score *= contrast.mean(axis=(1, 2)) ** weight
    return score.mean(axis=-1)


def test_ms_ssim_matches_the_reference_at_four_scales():
    rng = np.random.default_rng(1)
    x = ndimage.gaussian_filter(rng.normal(size=(2, 96, 96, 2)), sigma=(0, 3, 3, 0))
    x = (x - x.min()) / (x.max() - x.min()) * 2 - 1
    y = x + np.array([0.05, 0.3])[:, None, None, None] * rng.normal(size=x.shape)
    weights = ssim.scale_weights(ssim.num_scales(96))
    assert len(weights) == 4 and np.isclose(sum(weights), 1.0)
    np.testing.assert_allclose(ssim.ms_ssim(x, y, data_range=2.0), _reference_ms_ssim(x, y, weights, 2.0),
                               rtol=1e-4)


def test_ms_ssim_of_one_scale_is_ssim_and_of_identical_images_is_one():
    fixture = np.load(FIXTURE)
    x, y = fixture["x_gray"].astype(np.float32), fixture["y_gray"].astype(np.float32)
    np.testing.assert_allclose(ssim.ms_ssim(x, y, data_range=255.0, weights=(1.0,)), fixture["ssim_gray"], atol=2e-5)
    np.testing.assert_allclose(ssim.ms_ssim(x, x, data_range=255.0), 1.0, atol=1e-6)


def test_scales_follow_the_image_size():
    assert [ssim.num_scales(side) for side in (11, 21, 22, 32, 175, 176, 256)] == [1, 1, 2, 2, 4, 5, 5]
    assert ssim.scale_weights(5) == pytest.approx(ssim.MS_SSIM_WEIGHTS, rel=1e-3)  # The paper's sum to 1.0001.
    with pytest.raises(ValueError, match="window needs at least 11"):
        ssim.num_scales(8)
    with pytest.raises(ValueError, match="expected two image batches"):
        ssim.ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 15, 1)), data_range=1.0)


def test_perceptual_registry():
    distance = perceptual.perceptual_distance("ms_ssim")
    x = np.linspace(-1, 1, 2 * 32 * 32).reshape(2, 32, 32, 1).astype(np.float32)
    np.testing.assert_allclose(distance(x, x), 0.0, atol=1e-6)
    assert perceptual.perceptual_distance("none") is None
    with pytest.raises(FileNotFoundError, match=r"LPIPS weights '/nowhere/lpips.npz' do not exist: convert"):
        perceptual.perceptual_distance("lpips", "/nowhere/lpips.npz")
    with pytest.raises(ValueError, match=r"'lpips' needs its weights: set config.autoencoder.lpips_weights"):
        perceptual.perceptual_distance("lpips", "")
    with pytest.raises(ValueError, match="unknown perceptual loss 'vgg'"):
        perceptual.perceptual_distance("vgg")


def test_lpips_loss_is_lpips_with_gray_repeated_to_rgb(tmp_path):
    import jax

    from diffax.evaluation import lpips

    rng = np.random.default_rng(0)
    flat = {name: rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in lpips.variable_shapes().items()}
    flat = {name: np.abs(value) if "lin_" in name else value for name, value in flat.items()}  # Weights w_l >= 0.
    np.savez(tmp_path / "lpips.npz", **flat)
    distance = perceptual.perceptual_distance("lpips", str(tmp_path / "lpips.npz"))
    x, y = rng.uniform(-1, 1, (2, 2, 16, 16, 1)).astype(np.float32)
    expected = lpips.lpips_distance(lpips.load_variables(str(tmp_path / "lpips.npz")), np.repeat(x, 3, -1),
                                    np.repeat(y, 3, -1))
    np.testing.assert_allclose(jax.jit(distance)(x, y), expected, rtol=1e-5)
    assert float(expected.min()) > 0.0
