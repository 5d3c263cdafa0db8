"""Offline sample-quality metrics in the features of a classifier diffax trains on the bundled digits
(`trained_digits_classifier`): the Fréchet classifier distance (FCD) of held-out real digits against training
digits is as small as that of two draws from the training set itself, and it rises with every added level of
Gaussian noise; KID is about 0 between real sets and clearly positive for noisy ones; precision and recall are 1
for identical sets.

Every FCD is `frechet_distance` of the two feature sets' means and unbiased covariances (D = 128 features).
"""

import numpy as np
import pytest

from diffax.evaluation import metrics

NOISE_STDS = (0.1, 0.2, 0.3, 0.4)  # In [0, 1] intensity units (0.1 is 25.5 gray levels).
RESAMPLES = 20


def fcd(first: np.ndarray, second: np.ndarray) -> float:
    return metrics.frechet_distance(first.mean(0), np.cov(first, rowvar=False), second.mean(0),
                                    np.cov(second, rowvar=False))


def with_noise(images: np.ndarray, std: float, normal: np.ndarray) -> np.ndarray:
    """uint8 images plus 255 * std * normal, rounded and clipped to 0..255."""
    return np.clip(np.round(images + 255.0 * std * normal), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def digits(trained_digits_classifier):
    """The classifier run, and the images, labels and EMA features of the training and held-out splits."""
    from diffax.modes.evaluate_classifier import heldout_examples
    from diffax.run import load_run

    run = load_run(trained_digits_classifier)
    config = run.config.copy_and_resolve_references()
    splits = {}
    for split in ("train", "test"):
        config.data.eval_split = split
        images, labels = heldout_examples(config)
        splits[split] = images, labels, run.features(images)
    return run, splits


def test_the_classifier_learns_digits(digits):
    run, splits = digits
    images, labels, _ = splits["test"]
    assert len(labels) == 297 and np.mean(run.predict(images) == labels) > 0.93  # 0.956 measured.


def test_fcd_of_held_out_against_training_digits_is_within_its_spread_over_resamples(digits):
    """The null: FCD between A_r (297 random training digits, the held-out count) and B_r (the other 1,203), over
    20 random splits r. The held-out digits against the same B_r must stay below the null's mean + 3 std: a
    classifier whose features told its training images from new ones (overfitting), or a held-out split from
    another distribution, fails this."""
    _, splits = digits
    train, held_out = splits["train"][2], splits["test"][2]
    rng = np.random.default_rng(0)
    null, observed = [], []
    for _ in range(RESAMPLES):
        order = rng.permutation(len(train))
        first, rest = train[order[:len(held_out)]], train[order[len(held_out):]]
        null.append(fcd(first, rest))
        observed.append(fcd(held_out, rest))
    assert np.mean(observed) < np.mean(null) + 3 * np.std(null), (np.mean(observed), np.mean(null), np.std(null))
    total_variance = np.trace(np.cov(train, rowvar=False))
    assert np.mean(observed) < 0.03 * total_variance  # Near 0 on the features' own scale.


def test_fcd_rises_monotonically_with_gaussian_noise(digits):
    """FCD(held-out digits + noise of std s, training digits) for s = 0, 0.1, 0.2, 0.3, 0.4, one noise draw scaled
    by s: strictly increasing, and the largest level far beyond the clean value."""
    run, splits = digits
    images, train = splits["test"][0], splits["train"][2]
    normal = np.random.default_rng(1).standard_normal(images.shape)
    scores = [fcd(splits["test"][2], train)]
    scores += [fcd(run.features(with_noise(images, std, normal)), train) for std in NOISE_STDS]
    assert all(np.diff(scores) > 0), scores
    assert scores[-1] > 4 * scores[0], scores


def test_kid_is_zero_for_real_digits_and_positive_for_noisy_ones(digits):
    """KID over 50 subsets of 200: held-out against training digits within 2 standard deviations (of the subset
    estimates) of 0; noisy held-out digits (std 0.4) more than 3 standard deviations above 0."""
    run, splits = digits
    images, train = splits["test"][0], splits["train"][2]
    real_mean, real_std = metrics.kernel_inception_distance(train, splits["test"][2], num_subsets=50, subset_size=200)
    assert abs(real_mean) < 2 * real_std, (real_mean, real_std)
    noisy = run.features(with_noise(images, NOISE_STDS[-1], np.random.default_rng(1).standard_normal(images.shape)))
    noisy_mean, noisy_std = metrics.kernel_inception_distance(train, noisy, num_subsets=50, subset_size=200)
    assert noisy_mean > 3 * noisy_std, (noisy_mean, noisy_std)


def test_precision_and_recall_are_one_for_identical_sets_and_precision_falls_with_noise(digits):
    run, splits = digits
    images, _, held_out = splits["test"]
    assert metrics.precision_recall(held_out, held_out) == (1.0, 1.0)
    real_precision, _ = metrics.precision_recall(splits["train"][2], held_out)
    noisy = run.features(with_noise(images, NOISE_STDS[-1], np.random.default_rng(1).standard_normal(images.shape)))
    noisy_precision, _ = metrics.precision_recall(splits["train"][2], noisy)
    assert noisy_precision < real_precision - 0.2, (noisy_precision, real_precision)
