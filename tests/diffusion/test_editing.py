"""Editing (diffax.sampling.editing) against closed forms on Gaussian data with its exact denoiser:

    y = x0 + s eps, x0 ~ N(mu, S):  E[x0 | y] = mu + S (S + s^2 I)^-1 (y - mu),  Cov[x0 | y] = S - S (S + s^2 I)^-1 S
    x = (x_k, x_u):                 x_u | x_k ~ N(mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku)
                                    (`mixture.gaussian_conditional`, itself checked in 2-D in test_mixture.py)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import mixture, schedules
from diffax.sampling import editing, sample

COV = np.array([[1.0, 0.3, 0.8, 0.2], [0.3, 1.0, 0.1, 0.7], [0.8, 0.1, 1.0, 0.2], [0.2, 0.7, 0.2, 1.0]]) * 0.5
MEAN = np.array([0.5, -0.3, 0.2, 0.1])
GAUSSIAN = mixture.gaussian(MEAN, COV)
N = 10_000


def _standard_errors(cov: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard errors of a sample mean and of each sample covariance entry, (C_ii C_jj + C_ij^2) / n."""
    diag = np.diag(cov)
    return np.sqrt(diag / n), np.sqrt((np.outer(diag, diag) + cov**2) / n)


@pytest.mark.parametrize("name", ["vp_cosine", "vp_linear", "rectified_flow"])
@pytest.mark.parametrize("noise_std", [0.1, 0.5])
def test_one_step_denoise_is_the_posterior_mean(name, noise_std):
    schedule = schedules.get_schedule(name)
    y = np.random.default_rng(0).normal(size=(5, 4)) + MEAN
    expected = MEAN + (y - MEAN) @ np.linalg.solve(COV + noise_std**2 * np.eye(4), COV).T
    got = editing.denoise(GAUSSIAN.x0_fn(schedule), schedule, jnp.asarray(y, jnp.float32), noise_std)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    t_star = editing.noise_std_time(schedule, noise_std)
    np.testing.assert_allclose(schedule.sigma(t_star) / schedule.alpha(t_star), noise_std, rtol=1e-5)


def test_a_reverse_run_from_the_noise_level_draws_the_posterior():
    schedule, noise_std = schedules.get_schedule("vp_cosine"), 0.5
    y = np.array([0.9, -1.0, 0.4, 0.0])
    post_mean = MEAN + COV @ np.linalg.solve(COV + noise_std**2 * np.eye(4), y - MEAN)
    post_cov = COV - COV @ np.linalg.solve(COV + noise_std**2 * np.eye(4), COV)
    ys = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (N, 4))
    run = jax.jit(lambda v: editing.denoise(GAUSSIAN.x0_fn(schedule), schedule, v, noise_std, num_steps=200,
                                            method="ddpm", key=jax.random.key(0)))
    draws = np.asarray(run(ys), np.float64)
    mean_se, cov_se = _standard_errors(post_cov, N)
    assert np.all(np.abs(draws.mean(0) - post_mean) < 4 * mean_se)
    assert np.all(np.abs(np.cov(draws.T) - post_cov) < 6 * cov_se)  # DDPM's O(1/steps) bias included.
    assert np.abs(np.cov(draws.T) - post_cov).max() < 0.1 * np.abs(post_cov).max()


def test_img2img_strength_zero_returns_the_input_and_one_is_sampling():
    schedule = schedules.get_schedule("rectified_flow")  # alpha(1) = 0: strength 1 starts from noise alone.
    x0_fn = GAUSSIAN.x0_fn(schedule)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
    noise = jax.random.normal(jax.random.key(2), (6, 4))
    key = jax.random.key(3)
    assert editing.img2img(x0_fn, schedule, x, 0.0, noise, num_steps=10) is x
    for method in ("dpmpp_2m", "ddpm"):
        edited = editing.img2img(x0_fn, schedule, x, 1.0, noise, num_steps=10, method=method, key=key)
        sampled = sample(x0_fn, schedule, noise, schedules.time_grid(schedule, 10), method, key)
        np.testing.assert_allclose(edited, sampled, atol=1e-6)
    assert editing.img2img_grid(schedule, 10, 0.3).shape == (4,)  # 3 of 10 steps run, as diffusers counts.
    with pytest.raises(ValueError, match="strength 1.5"):
        editing.img2img_grid(schedule, 10, 1.5)


def test_repaint_path_goes_back_up_jump_length_steps_jump_n_sample_minus_one_times():
    assert editing.repaint_positions(5, 10, 1).tolist() == [0, 1, 2, 3, 4, 5]
    path = editing.repaint_positions(10, 3, 2).tolist()
    assert path == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8, 9, 10]


def _inpaint_errors(jump_length: int, jump_n_sample: int, num_steps: int = 100) -> tuple[float, float, float]:
    """(max |mean error|, max |covariance error| of the repainted coordinates, max error of the kept ones)."""
    schedule = schedules.get_schedule("vp_cosine")
    known, unknown = [0, 1], [2, 3]
    x_known = np.array([1.2, -0.8, 0.0, 0.0], np.float32)
    cond_mean, cond_cov = mixture.gaussian_conditional(MEAN, COV, known, x_known)
    mask = jnp.asarray([0.0, 0.0, 1.0, 1.0])  # 1: repaint.
    run = jax.jit(lambda x, noise: editing.inpaint(
        GAUSSIAN.x0_fn(schedule), schedule, x, mask, noise, jax.random.key(5), algorithm="repaint",
        num_steps=num_steps, jump_length=jump_length, jump_n_sample=jump_n_sample))
    out = np.asarray(run(jnp.broadcast_to(x_known, (N, 4)), jax.random.normal(jax.random.key(4), (N, 4))))
    return (np.abs(out[:, unknown].mean(0) - cond_mean).max(), np.abs(np.cov(out[:, unknown].T) - cond_cov).max(),
            np.abs(out[:, known] - x_known[known]).max())


def test_repaint_keeps_the_known_region_and_resampling_approaches_the_conditional():
    replacement = _inpaint_errors(1, 1)
    repaint = _inpaint_errors(5, 20)
    assert replacement[2] == repaint[2] == 0.0  # Kept exactly.
    # Plain replacement ignores what the kept region says about the rest: its mean is far off (0.26 measured);
    # RePaint's resampling brings it within a tenth of that (benchmarks/inpaint_accuracy.py has the table).
    assert replacement[0] > 0.2 and repaint[0] < 0.1 * replacement[0] and repaint[1] < 0.05


def test_repaint_refuses_a_solver_with_memory():
    schedule = schedules.get_schedule("vp_cosine")
    x = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="needs a solver without memory; 'dpmpp_2m'"):
        editing.inpaint(GAUSSIAN.x0_fn(schedule), schedule, x, jnp.ones(4), x, jax.random.key(0),
                        algorithm="repaint", method="dpmpp_2m")
    with pytest.raises(ValueError, match="unknown inpainting algorithm 'paint'"):
        editing.inpaint(GAUSSIAN.x0_fn(schedule), schedule, x, jnp.ones(4), x, jax.random.key(0), algorithm="paint")


def test_denoise_intermediates_end_with_the_run_and_start_near_the_noisy_input():
    schedule, noise_std = schedules.get_schedule("vp_cosine"), 0.3
    y = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)) + MEAN, jnp.float32)
    run = dict(num_steps=6, method="ddim")
    plain = editing.denoise(GAUSSIAN.x0_fn(schedule), schedule, y, noise_std, **run)
    shown = editing.denoise(GAUSSIAN.x0_fn(schedule), schedule, y, noise_std, intermediates=3, **run)
    assert shown.shape == (5, 4, 4)
    np.testing.assert_allclose(shown[:, -1], plain, atol=1e-6)
    np.testing.assert_allclose(shown[:, 0], y, atol=1e-5)  # The first state, x_t* / alpha(t*), is y itself.
    with pytest.raises(ValueError, match="intermediates 2 need a reverse run"):
        editing.denoise(GAUSSIAN.x0_fn(schedule), schedule, y, noise_std, intermediates=2)


def _conditional_denoiser(alpha: float, sigma: float, x_t: np.ndarray, known: list[int], y: np.ndarray):
    """E[x0 | x_t, x0[known] = y[known]] for x0 ~ N(MEAN, COV), x_t = alpha x0 + sigma eps: the Gaussian
    conditional of x0 on the jointly Gaussian observations (x_t, x0[known]), in float64."""
    joint_cov = np.block([[COV, alpha * COV], [alpha * COV, alpha**2 * COV + sigma**2 * np.eye(4)]])
    joint_mean = np.concatenate([MEAN, alpha * MEAN])
    observed = np.concatenate([4 + np.arange(4), known]).astype(int)
    gain = joint_cov[:4][:, observed] @ np.linalg.inv(joint_cov[np.ix_(observed, observed)])
    return MEAN + gain @ (np.concatenate([x_t, y[known]]) - joint_mean[observed])


@pytest.mark.parametrize("name", ["vp_cosine", "rectified_flow"])
def test_posterior_denoiser_is_the_exact_conditional_denoiser_of_gaussian_data(name):
    """Per-example masks with 1, 2 and 3 known coordinates and cg_steps 3: exact only if every example runs its own
    conjugate gradients (one global CG over the batch's 6 known coordinates would need 6 iterations)."""
    schedule = schedules.get_schedule(name)
    rng = np.random.default_rng(7)
    knowns = [[1], [0, 3], [0, 2, 3]]
    masks = np.ones((3, 4), np.float32)
    for row, known in enumerate(knowns):
        masks[row, known] = 0.0
    y = (MEAN + rng.normal(size=(3, 4))).astype(np.float32)
    conditioned = editing.posterior.posterior_denoiser(GAUSSIAN.x0_fn(schedule), jnp.asarray(y), masks, 3)
    for t in (0.05, 0.3, 0.6, 0.95):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(jnp.float32(t)))
        x_t = (alpha * (MEAN + rng.normal(size=(3, 4))) + sigma * rng.normal(size=(3, 4))).astype(np.float32)
        got = np.asarray(conditioned(jnp.asarray(x_t), jnp.full((3,), t)))
        expected = np.stack([_conditional_denoiser(alpha, sigma, x_t[row], known, y[row])
                             for row, known in enumerate(knowns)])
        np.testing.assert_allclose(got, expected, atol=2e-4, err_msg=f"t = {t}")
        assert np.all(got[masks == 0] == y[masks == 0])  # Kept exactly.


def test_batched_conjugate_gradients_solves_each_example_and_stops_on_negative_curvature():
    rng = np.random.default_rng(8)
    factors = rng.normal(size=(3, 5, 5))
    matrices = factors @ factors.transpose(0, 2, 1) + np.eye(5)
    matrices[2] = -matrices[2]  # Negative definite: the first curvature is negative, so w stays 0.
    rhs = rng.normal(size=(3, 5))
    solve = editing.posterior.batched_conjugate_gradients
    got = np.asarray(solve(lambda v: jnp.einsum("bij,bj->bi", matrices, v), jnp.asarray(rhs), 5))
    np.testing.assert_allclose(got[:2], np.linalg.solve(matrices[:2], rhs[:2][..., None])[..., 0], rtol=1e-3,
                               atol=1e-4)
    assert np.all(got[2] == 0.0)
    with pytest.raises(ValueError, match="cg_steps 0"):
        editing.posterior.posterior_denoiser(GAUSSIAN.x0_fn(schedules.get_schedule("vp_cosine")),
                                             jnp.zeros((1, 4)), jnp.ones(4), 0)


@pytest.mark.parametrize("method,num_steps", [("dpmpp_2m", 50), ("ddpm", 1000)])
def test_posterior_inpainting_samples_the_exact_conditional(method, num_steps):
    """N draws for each of two masks in one batch (per-example masks): known {0, 1} and known {2, 3}. Every mean
    within 4 standard errors and every covariance entry within 4 of theirs (`_standard_errors`), on the settings
    the README recommends (the run's sampler, dpmpp_2m with 50 steps) and on DDPM with 1,000 steps (DDPM's
    O(1 / steps) variance bias is 4 standard errors at 100 steps, benchmarks/RESULTS.md)."""
    schedule = schedules.get_schedule("vp_cosine")
    values = np.array([1.2, -0.8, -0.4, 0.9], np.float32)
    masks = np.repeat(np.array([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], np.float32), N, axis=0)
    run = jax.jit(lambda x, noise: editing.inpaint(GAUSSIAN.x0_fn(schedule), schedule, x, masks, noise,
                                                   jax.random.key(5), num_steps=num_steps, method=method,
                                                   cg_steps=2))  # CG is exact after 2 iterations on 2 known.
    out = np.asarray(run(jnp.broadcast_to(values, (2 * N, 4)), jax.random.normal(jax.random.key(4), (2 * N, 4))),
                     np.float64)
    for half, known in enumerate(([0, 1], [2, 3])):
        draws = out[half * N:(half + 1) * N]
        unknown = np.setdiff1d(np.arange(4), known)
        assert np.all(draws[:, known] == values[known])  # Kept exactly.
        cond_mean, cond_cov = mixture.gaussian_conditional(MEAN, COV, known, values)
        mean_se, cov_se = _standard_errors(cond_cov, N)
        assert np.all(np.abs(draws[:, unknown].mean(0) - cond_mean) < 4 * mean_se)
        assert np.all(np.abs(np.cov(draws[:, unknown].T) - cond_cov) < 4 * cov_se)
