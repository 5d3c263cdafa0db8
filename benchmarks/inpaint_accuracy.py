"""How close inpainting comes to the exact conditional distribution: the posterior denoiser and RePaint.

    python benchmarks/inpaint_accuracy.py            # a few seconds per row on a CPU
    python benchmarks/inpaint_accuracy.py WORKDIR    # a trained digits run (configs/digits.py): about 6 minutes

A 4-D Gaussian N(mu, S) with its exact denoiser (`diffax.mixture`); coordinates 0-1 kept at a fixed x_k, 2-3
repainted. Exact: x_u | x_k ~ N(mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku). Each row draws 10,000
inpaintings on the vp_cosine schedule and prints the largest error of their mean and covariance, and the denoiser
calls per sample (counted as they run) and Jacobian-vector products per sample (posterior: cg_steps + 1 per call).
Sampling error (one standard error): about 0.004 on the mean, 0.002-0.004 on the covariance entries.

With a workdir: the right half of 64 held-out digits repainted from the left half, 4 seeds, the mean PSNR of the
repainted pixels against the originals (a draw from p(x | kept) scores below the posterior mean: the mean image
of the 64 digits pasted in scores as a baseline).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax import generate, mixture, schedules
from diffax.evaluation import image_quality
from diffax.experiment import make_iterator
from diffax.run import load_run, to_masks
from diffax.sampling import editing

COV = np.array([[1.0, 0.3, 0.8, 0.2], [0.3, 1.0, 0.1, 0.7], [0.8, 0.1, 1.0, 0.2], [0.2, 0.7, 0.2, 1.0]]) * 0.5
MEAN = np.array([0.5, -0.3, 0.2, 0.1])
REPAINT = [(100, 1, 1), (250, 1, 1), (100, 5, 5), (100, 5, 10), (100, 5, 20), (100, 10, 10), (250, 10, 10),
           (250, 10, 20), (100, 1, 10)]
POSTERIOR = [("dpmpp_2m", 20, 2), ("dpmpp_2m", 50, 2), ("dpmpp_2m", 50, 1), ("ddim", 50, 2), ("heun", 25, 2),
             ("ddpm", 100, 2), ("ddpm", 250, 2), ("ddpm", 1000, 2)]


def main(n: int = 10_000) -> None:
    gaussian = mixture.gaussian(MEAN, COV)
    schedule = schedules.get_schedule("vp_cosine")
    known, unknown = [0, 1], [2, 3]
    x_known = np.array([1.2, -0.8, 0.0, 0.0], np.float32)
    cond_mean, cond_cov = mixture.gaussian_conditional(MEAN, COV, known, x_known)
    x = jnp.broadcast_to(x_known, (n, 4))
    noise = jax.random.normal(jax.random.key(4), (n, 4))
    calls = [0]

    def counted(x_t, t):  # Counts the denoiser calls as they run (once per batched call).
        jax.debug.callback(lambda: calls.__setitem__(0, calls[0] + 1))
        return gaussian.denoise(x_t, t, schedule)

    rows = [("repaint", "ddpm", steps, dict(jump_length=length, jump_n_sample=count))
            for steps, length, count in REPAINT]
    rows += [("posterior", method, steps, dict(cg_steps=cg_steps)) for method, steps, cg_steps in POSTERIOR]
    print("| algorithm | solver | steps | settings | denoiser calls | Jacobian products | mean error | "
          "covariance error | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for algorithm, method, steps, settings in rows:
        start, calls[0] = time.perf_counter(), 0
        out = np.asarray(jax.jit(lambda x, noise: editing.inpaint(
            counted, schedule, x, jnp.asarray([0.0, 0.0, 1.0, 1.0]), noise, jax.random.key(5), algorithm=algorithm,
            num_steps=steps, method=method, **settings))(x, noise))
        products = calls[0] * (settings["cg_steps"] + 1) if algorithm == "posterior" else 0
        mean_error = np.abs(out[:, unknown].mean(0) - cond_mean).max()
        cov_error = np.abs(np.cov(out[:, unknown].T) - cond_cov).max()
        described = ", ".join(f"{key} {value}" for key, value in settings.items())
        print(f"| {algorithm} | {method} | {steps} | {described} | {calls[0]} | {products} | {mean_error:.4f} | "
              f"{cov_error:.4f} | {time.perf_counter() - start:.1f} |")


DIGITS_ROWS = [dict(algorithm="repaint", method="ddpm", steps=50, jump_length=10, jump_n_sample=10),
               dict(algorithm="repaint", method="ddpm", steps=50, jump_length=1, jump_n_sample=1),
               dict(algorithm="posterior", method="ddpm", steps=50, cg_steps=1),
               dict(algorithm="posterior", method="ddpm", steps=50, cg_steps=2),
               dict(algorithm="posterior", method="dpmpp_2m", steps=50, cg_steps=1),
               dict(algorithm="posterior", method="ddpm", steps=200, cg_steps=1)]


def digits(workdir: str, num_images: int = 64, seeds: int = 4) -> None:
    run = load_run(workdir)
    iterator = make_iterator(run.config, split=run.config.data.eval_split, global_batch_size=num_images, seed=0,
                             train=False)
    images = generate.to_data_range(next(iterator)["image"], is_image=True)
    mask = np.zeros(images.shape[1:3], np.uint8)
    mask[:, images.shape[2] // 2:] = 255
    repaint = to_masks(mask, num_images, images.shape[1:]) > 0
    mean_image = np.where(repaint, images.mean(0).round().astype(np.uint8), images)
    print(f"mean image baseline: {np.mean(image_quality.psnr(mean_image, images, where=repaint)):.2f} dB\n")
    print("| algorithm | solver | steps | settings | PSNR per seed (dB) | mean PSNR (dB) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in DIGITS_ROWS:
        start = time.perf_counter()
        psnrs = [np.mean(image_quality.psnr(run.inpaint(images, mask, seed=seed, **row), images, where=repaint))
                 for seed in range(seeds)]
        described = ", ".join(f"{key} {value}" for key, value in row.items()
                              if key not in ("algorithm", "method", "steps"))
        print(f"| {row['algorithm']} | {row['method']} | {row['steps']} | {described} | "
              f"{' / '.join(f'{p:.2f}' for p in psnrs)} | {np.mean(psnrs):.2f} | {time.perf_counter() - start:.0f} |")
    run.close()


if __name__ == "__main__":
    digits(sys.argv[1]) if len(sys.argv) > 1 else main()
