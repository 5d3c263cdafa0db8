"""How close RePaint inpainting comes to the exact conditional distribution, by jump_length and jump_n_sample.

    python benchmarks/inpaint_accuracy.py            # a few seconds per row on a CPU

A 4-D Gaussian N(mu, S) with its exact denoiser (`diffax.mixture`); coordinates 0-1 kept at a fixed x_k, 2-3
repainted. Exact: x_u | x_k ~ N(mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku). Each row draws 10,000
inpaintings (DDPM steps on the vp_cosine schedule) and prints the largest error of their mean and covariance, and
the denoiser calls per sample. Sampling error: about 0.004 on the mean, 0.002 on the covariance.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax import mixture, schedules
from diffax.sampling import editing

COV = np.array([[1.0, 0.3, 0.8, 0.2], [0.3, 1.0, 0.1, 0.7], [0.8, 0.1, 1.0, 0.2], [0.2, 0.7, 0.2, 1.0]]) * 0.5
MEAN = np.array([0.5, -0.3, 0.2, 0.1])
ROWS = [(100, 1, 1), (250, 1, 1), (100, 5, 5), (100, 5, 10), (100, 5, 20), (100, 10, 10), (250, 10, 10),
        (250, 10, 20), (100, 1, 10)]


def main(n: int = 10_000) -> None:
    gaussian = mixture.gaussian(MEAN, COV)
    schedule = schedules.get_schedule("vp_cosine")
    known, unknown = [0, 1], [2, 3]
    x_known = np.array([1.2, -0.8, 0.0, 0.0], np.float32)
    cond_mean, cond_cov = mixture.gaussian_conditional(MEAN, COV, known, x_known)
    x = jnp.broadcast_to(x_known, (n, 4))
    noise = jax.random.normal(jax.random.key(4), (n, 4))
    print("| steps | jump_length | jump_n_sample | denoiser calls | mean error | covariance error | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for steps, jump_length, jump_n_sample in ROWS:
        start = time.perf_counter()
        out = np.asarray(jax.jit(lambda x, noise: editing.inpaint(
            gaussian.x0_fn(schedule), schedule, x, jnp.asarray([0.0, 0.0, 1.0, 1.0]), noise, jax.random.key(5),
            num_steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample))(x, noise))
        path = editing.repaint_positions(steps, jump_length, jump_n_sample)
        calls = int(np.sum(np.diff(path) > 0))
        mean_error = np.abs(out[:, unknown].mean(0) - cond_mean).max()
        cov_error = np.abs(np.cov(out[:, unknown].T) - cond_cov).max()
        print(f"| {steps} | {jump_length} | {jump_n_sample} | {calls} | {mean_error:.4f} | {cov_error:.4f} | "
              f"{time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
