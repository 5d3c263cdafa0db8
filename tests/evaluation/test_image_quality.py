"""PSNR against its definition, and the blur baseline."""

import numpy as np

from diffax.evaluation import image_quality


def test_psnr_matches_its_definition():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    noisy = np.clip(clean + rng.integers(-20, 21, clean.shape), 0, 255).astype(np.uint8)
    mse = ((noisy.astype(float) - clean) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(image_quality.psnr(noisy, clean), 10 * np.log10(255**2 / mse))
    assert np.isinf(image_quality.psnr(clean, clean)).all()
    right = np.zeros(clean.shape, bool)
    right[:, :, 4:] = True  # Over a region: the PSNR of that region alone.
    np.testing.assert_allclose(image_quality.psnr(noisy, clean, where=right),
                               image_quality.psnr(noisy[:, :, 4:], clean[:, :, 4:]))


def test_best_blur_beats_the_noisy_input_on_smooth_images():
    ramp = np.tile(np.linspace(0, 255, 16), (16, 1))[None, ..., None].repeat(2, 0)
    noisy = np.clip(ramp + np.random.default_rng(1).normal(0, 30, ramp.shape), 0, 255).astype(np.uint8)
    radius, score = image_quality.best_blur(noisy, ramp.astype(np.uint8))
    assert score > np.mean(image_quality.psnr(noisy, ramp.astype(np.uint8))) + 3 and radius >= 0.5
