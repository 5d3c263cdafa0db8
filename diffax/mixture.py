"""Gaussian-mixture data with exact diffusion quantities: the ground truth for samplers, losses and likelihoods.

For p(x0) = sum_k w_k N(mu_k, Sigma_k) on R^D and x_t = alpha x0 + sigma eps, the marginal is the mixture
p_t(x) = sum_k w_k N(x; alpha mu_k, C_k) with C_k = alpha^2 Sigma_k + sigma^2 I, and Tweedie's posterior mean is

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)),   r_k ∝ w_k N(x_t; alpha mu_k, C_k).

Each Sigma_k = U_k diag(d_k) U_k^T is diagonalized once, so every quantity at any (alpha, sigma) costs two matrix
products per component and stays exact at sigma = 0 and at alpha = 0.
Data of any shape (B, *event) is flattened to (B, D) with D = prod(event).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffax.schedules import Schedule, broadcast_to_data

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """weights (K,), means (K, D), eigenvalues (K, D) and eigenvectors (K, D, D) of the covariances."""

    weights: Array
    means: Array
    eigenvalues: Array
    eigenvectors: Array

    @classmethod
    def from_covariances(cls, weights, means, covariances) -> "GaussianMixture":
        """Builds the mixture from weights (K,), means (K, D) and covariances (K, D, D) (or (K, D) diagonals)."""
        weights = np.asarray(weights, np.float64)
        means = np.asarray(means, np.float64)
        covariances = np.asarray(covariances, np.float64)
        if covariances.ndim == 2:
            covariances = np.stack([np.diag(c) for c in covariances])
        if not (weights.ndim == 1 and means.shape[0] == weights.shape[0] == covariances.shape[0]
                and covariances.shape[1:] == (means.shape[1],) * 2):
            raise ValueError(f"inconsistent mixture shapes: weights {weights.shape}, means {means.shape}, "
                             f"covariances {covariances.shape}; expected (K,), (K, D), (K, D, D)")
        if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
            raise ValueError(f"mixture weights must be non-negative and sum to 1, got {weights}")
        eigenvalues, eigenvectors = np.linalg.eigh(covariances)
        if np.any(eigenvalues <= 0):
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {eigenvalues.min()}")
        return cls(*(jnp.asarray(a, jnp.float32) for a in (weights, means, eigenvalues, eigenvectors)))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Array:
        """(D,) mean of the data."""
        return self.weights @ self.means

    def covariance(self) -> Array:
        """(D, D) covariance of the data: sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T."""
        covs = jnp.einsum("kij,kj,klj->kil", self.eigenvectors, self.eigenvalues, self.eigenvectors)
        second = jnp.einsum("k,kij->ij", self.weights, covs + self.means[:, :, None] * self.means[:, None, :])
        mean = self.mean()
        return second - jnp.outer(mean, mean)

    def sample(self, key: Array, num: int) -> Array:
        """(num, D) exact samples of the data distribution."""
        component_key, noise_key = jax.random.split(key)
        k = jax.random.choice(component_key, self.weights.shape[0], (num,), p=self.weights)
        z = jax.random.normal(noise_key, (num, self.dim))
        scaled = jnp.einsum("nij,nj->ni", self.eigenvectors[k], jnp.sqrt(self.eigenvalues[k]) * z)
        return self.means[k] + scaled

    def _posterior(self, x: Array, alpha: Array, sigma: Array):
        """Per-component terms at x (B, D), alpha and sigma (B,): log r_k unnormalized (B, K), coordinates of
        x - alpha mu_k in each eigenbasis (B, K, D) and the marginal variances along them (B, K, D)."""
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        centered = x[:, None, :] - alpha * self.means[None]
        coords = jnp.einsum("kji,bkj->bki", self.eigenvectors, centered)
        variances = alpha**2 * self.eigenvalues[None] + sigma**2
        log_density = -0.5 * jnp.sum(coords**2 / variances + jnp.log(2 * math.pi * variances), axis=-1)
        return jnp.log(self.weights)[None] + log_density, coords, variances

    def _flat(self, x: Array, t: Array, schedule: Schedule):
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"data of shape {x.shape} has {flat.shape[1]} dims; the mixture has {self.dim}")
        alpha, sigma = schedule.alpha_sigma(jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1]))
        return flat, alpha, sigma

    def log_prob(self, x: Array, t: Array = 0.0, schedule: Schedule | None = None) -> Array:
        """(B,) log p_t(x) of the noised marginal (of the data itself when schedule is None)."""
        if schedule is None:
            flat = x.reshape(x.shape[0], -1)
            alpha, sigma = jnp.ones(x.shape[:1]), jnp.zeros(x.shape[:1])
        else:
            flat, alpha, sigma = self._flat(x, t, schedule)
        log_joint, _, _ = self._posterior(flat, alpha, sigma)
        return jax.nn.logsumexp(log_joint, axis=-1)

    def denoise(self, x: Array, t: Array, schedule: Schedule) -> Array:
        """E[x0 | x_t = x], shape of x; t is a scalar or (B,). This is the exact x0_fn for the samplers."""
        flat, alpha, sigma = self._flat(x, t, schedule)
        log_joint, coords, variances = self._posterior(flat, alpha, sigma)
        responsibilities = jax.nn.softmax(log_joint, axis=-1)
        gain = alpha[:, None, None] * self.eigenvalues[None] / variances
        x0_per_component = self.means[None] + jnp.einsum("kij,bkj->bki", self.eigenvectors, gain * coords)
        return jnp.einsum("bk,bki->bi", responsibilities, x0_per_component).reshape(x.shape)

    def score(self, x: Array, t: Array, schedule: Schedule) -> Array:
        """grad_x log p_t(x) = (alpha E[x0 | x] - x) / sigma^2, shape of x."""
        _, alpha, sigma = self._flat(x, t, schedule)
        return (broadcast_to_data(alpha, x) * self.denoise(x, t, schedule) - x) / broadcast_to_data(sigma, x) ** 2

    def x0_fn(self, schedule: Schedule):
        """The exact denoiser as a sampler's x0_fn(x_t, t)."""
        return lambda x, t, cond=None: self.denoise(x, t, schedule)


def gaussian(mean, covariance) -> GaussianMixture:
    """A single Gaussian N(mean, covariance) as a one-component mixture."""
    mean = np.asarray(mean, np.float64)
    return GaussianMixture.from_covariances([1.0], mean[None], np.asarray(covariance, np.float64)[None])


def gaussian_conditional(mean, covariance, known, values) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of the other coordinates of N(mean, S) given x[known] = values[known]:

        x_u | x_k ~ N(mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku)

    known: indices of the given coordinates; values: (D,) (only values[known] is read)."""
    mean, covariance = np.asarray(mean, np.float64), np.asarray(covariance, np.float64)
    known = np.asarray(known)
    unknown = np.setdiff1d(np.arange(len(mean)), known)
    gain = covariance[np.ix_(unknown, known)] @ np.linalg.inv(covariance[np.ix_(known, known)])
    conditional_mean = mean[unknown] + gain @ (np.asarray(values, np.float64)[known] - mean[known])
    return conditional_mean, covariance[np.ix_(unknown, unknown)] - gain @ covariance[np.ix_(known, unknown)]


def toy_mixture_2d(num_modes: int = 8, radius: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """num_modes equal-weight isotropic Gaussians evenly spaced on a circle: the classic 2-D toy data set."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture.from_covariances(np.full(num_modes, 1.0 / num_modes), means,
                                            np.full((num_modes, 2), std**2))
