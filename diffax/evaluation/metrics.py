"""Sample-quality metrics as pure functions of feature arrays (N, D): Fréchet distance, KID, precision/recall,
density/coverage; and feature statistics accumulated in float64 over batches.

    Fréchet distance (Heusel et al. 2017, FID with Inception features):
        FD = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),
        with Tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(S_1^(1/2) S_2 S_1^(1/2))), a symmetric PSD matrix, so the
        square root comes from an eigendecomposition (no complex parts to drop, unlike scipy's sqrtm).
    KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic kernel k(x, y) = (x . y / D + 1)^3, averaged
        over `num_subsets` random subsets of `subset_size` from each set.
    Precision / recall (Kynkaanniemi et al. 2019): the share of generated samples inside the real k-NN manifold
        (balls of each real point's k-th neighbour distance), and of real samples inside the generated one.
    Density / coverage (Naeem et al. 2020): density = sum over generated points of the number of real k-NN balls
        holding it, / (k M); coverage = the share of real balls that hold at least one generated point.
    Energy distance (Szekely & Rizzo 2013) for low-dimensional data scored without features (2-D mixtures).
Distance matrices are formed in blocks of rows, so 50,000 x 50,000 comparisons need no 20 GB matrix.
"""

from __future__ import annotations

import numpy as np


class FeatureStatistics:
    """Mean and covariance of features fed in batches, summed in float64 (features (B, D) of any float dtype)."""

    def __init__(self, dim: int):
        self.count = 0
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(self._sum):
            raise ValueError(f"features of shape {features.shape}: expected (B, {len(self._sum)})")
        self.count += len(features)
        self._sum += features.sum(0)
        self._outer += features.T @ features

    def mean(self) -> np.ndarray:
        return self._sum / self.count

    def covariance(self) -> np.ndarray:
        """The unbiased sample covariance (as numpy's np.cov)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 features, got {self.count}")
        mean = self.mean()
        return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_1: np.ndarray, cov_1: np.ndarray, mean_2: np.ndarray, cov_2: np.ndarray) -> float:
    """The Fréchet distance between N(mean_1, cov_1) and N(mean_2, cov_2) (module docstring), in float64."""
    mean_1, mean_2 = np.asarray(mean_1, np.float64), np.asarray(mean_2, np.float64)
    cov_1, cov_2 = np.asarray(cov_1, np.float64), np.asarray(cov_2, np.float64)
    root_1 = _psd_sqrt(cov_1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_1 @ cov_2 @ root_1), 0.0, None)).sum()
    return float(np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1) + np.trace(cov_2) - 2.0 * cross)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, standard deviation) over subsets of the unbiased MMD^2 with the cubic polynomial kernel."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {size}")
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    estimates = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = fake[rng.choice(len(fake), size, replace=False)]
        k_xx, k_yy, k_xy = ((a @ b.T / dim + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        estimates.append(off_diagonal - 2.0 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


_BLOCK = 1024  # Rows of a distance matrix formed at once: memory O(_BLOCK * N), not O(N^2).


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances."""
    squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def _row_blocks(a: np.ndarray, b: np.ndarray):
    """(start, distances of a[start:start + _BLOCK] to all of b) for consecutive blocks of a's rows."""
    for start in range(0, len(a), _BLOCK):
        yield start, _distances(a[start:start + _BLOCK], b)


def _knn_radii(points: np.ndarray, k: int) -> np.ndarray:
    """Each point's distance to its k-th nearest other point."""
    if len(points) <= k:
        raise ValueError(f"k-NN radii with k = {k} need more than {k} points, got {len(points)}")
    # Column k of the partitioned row: the point itself (distance 0) comes first.
    return np.concatenate([np.partition(block, k, axis=1)[:, k] for _, block in _row_blocks(points, points)])


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(len(points),) bool: whether each point lies in a ball (centre, radius) of any centre."""
    return np.concatenate([(block <= radii[None, :]).any(1) for _, block in _row_blocks(points, centres)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (module docstring) of `fake` against `real` features."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = _share_inside(fake, real, _knn_radii(real, k)).mean()
    recall = _share_inside(real, fake, _knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density and coverage (module docstring) of `fake` against `real` features."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    radii = _knn_radii(real, k)
    balls_holding, covered = 0, np.zeros(len(real), bool)
    for _, block in _row_blocks(fake, real):
        inside = block <= radii[None, :]  # (fake block, N real)
        balls_holding += int(inside.sum())
        covered |= inside.any(0)
    return float(balls_holding / (k * len(fake))), float(covered.mean())


def _mean_distance(a: np.ndarray, b: np.ndarray, *, same: bool) -> float:
    """Mean |a_i - b_j| over all pairs; over pairs i != j when a and b are the same set (U-statistic)."""
    total = sum(float(block.sum()) for _, block in _row_blocks(a, b))
    pairs = len(a) * (len(b) - 1) if same else len(a) * len(b)
    return total / pairs


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The energy distance (Szekely & Rizzo 2013) between samples x (N, D) and y (M, D):
        E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,
    each within-set mean over distinct pairs (unbiased); E = 0 iff the distributions are equal (in expectation)."""
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1)
    if min(len(x), len(y)) < 2:
        raise ValueError(f"energy distance needs at least 2 samples per set, got {len(x)} and {len(y)}")
    return (2.0 * _mean_distance(x, y, same=False) - _mean_distance(x, x, same=True)
            - _mean_distance(y, y, same=True))
