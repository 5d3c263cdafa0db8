"""Samplers with the exact mixture denoiser: the distribution they reach, their order of convergence against a
tight adaptive ODE solution, determinism, and compilation (one scan, traced once)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import mixture as M
from diffax import sampling
from diffax import schedules as S
from diffax.objectives import probability_flow_velocity

NUM_SAMPLES = 10_000
# method -> (steps, grid kind, options): enough steps that the bias is well under the sampling error at n = 10^4.
SAMPLERS = {
    "ddpm": (1000, "karras", {}),
    "ddim": (250, "karras", {}),
    "ddim_eta": (250, "karras", {"eta": 0.5}),
    "euler": (250, "karras", {}),
    "heun": (40, "karras", {}),
    # Churn's own bias at 40 steps (7% too much variance) shows on the 16-D Gaussian once Heun runs in sigma~.
    "heun_churn": (80, "karras", {"churn": 20.0, "churn_min": 0.05, "churn_max": 50.0}),
    "euler_maruyama": (500, "uniform", {}),
    "pc": (250, "uniform", {"snr": 0.16}),
    "dpmpp_2m": (50, "karras", {}),
    "dpmpp_3m": (50, "karras", {}),
    "dpmpp_2s": (30, "karras", {}),
}


def _method(name):
    return {"ddim_eta": "ddim", "heun_churn": "heun"}.get(name, name)


def _moment_z_scores(samples, mean, covariance):
    """|sample moment - true moment| / standard error, for every mean entry and covariance entry."""
    n = samples.shape[0]
    centered = samples - samples.mean(0)
    products = centered[:, :, None] * centered[:, None, :]
    mean_z = jnp.abs(samples.mean(0) - mean) / (samples.std(0) / np.sqrt(n))
    cov_z = jnp.abs(products.mean(0) - covariance) / (products.std(0) / np.sqrt(n))
    return float(mean_z.max()), float(cov_z.max())


def _draw(data, schedule, name, key=jax.random.key(0)):
    steps, kind, options = SAMPLERS[name]
    # The reverse SDE's drift f = alpha'/alpha is infinite where alpha = 0 (a flow at t = 1): start just below.
    t_start = 0.999 if name in ("euler_maruyama", "pc") and float(schedule.alpha(1.0)) == 0 else 1.0
    grid = S.time_grid(schedule, steps, kind, t_start=t_start)
    noise_key, sample_key = jax.random.split(key)
    noise = jax.random.normal(noise_key, (NUM_SAMPLES, data.dim))
    run = jax.jit(lambda noise, grid, key: sampling.sample(data.x0_fn(schedule), schedule, noise, grid,
                                                           _method(name), key, **options))
    return run(noise, grid, sample_key)


@pytest.mark.parametrize("schedule", [S.VPLinear(), S.EDM(), S.RectifiedFlow()], ids=repr)
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samples_match_2d_mixture(name, schedule):
    data = M.toy_mixture_2d()
    samples = _draw(data, schedule, name)
    mean_z, cov_z = _moment_z_scores(samples, data.mean(), data.covariance())
    assert mean_z < 5 and cov_z < 5, (mean_z, cov_z)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samples_match_16d_gaussian(name):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 16))
    data = M.gaussian(rng.normal(size=16) * 0.5, a @ a.T / 16 + 0.2 * np.eye(16))
    samples = _draw(data, S.VPCosine(), name)
    mean_z, cov_z = _moment_z_scores(samples, data.mean(), data.covariance())
    assert mean_z < 5 and cov_z < 5.5, (mean_z, cov_z)  # max over 152 moments


# Stochastic solvers of issue 16, on DDPM's discrete schedule with the trailing grid: (steps, options).
STOCHASTIC_ON_DISCRETE = {
    "euler_ancestral": (200, {}),
    "dpmpp_2m_sde": (100, {}),
    "dpmpp_3m_sde": (100, {}),
    "dpmpp_2s_ancestral": (100, {}),
}


@pytest.mark.parametrize("method", sorted(STOCHASTIC_ON_DISCRETE))
def test_stochastic_samplers_match_the_mixture_on_the_discrete_schedule(method):
    data = M.toy_mixture_2d()
    schedule = S.VPDiscrete()
    steps, options = STOCHASTIC_ON_DISCRETE[method]
    noise = jax.random.normal(jax.random.key(11), (NUM_SAMPLES, data.dim))
    run = jax.jit(lambda noise, key: sampling.sample(data.x0_fn(schedule), schedule, noise,
                                                     S.time_grid(schedule, steps, "trailing"), method, key, **options))
    samples = run(noise, jax.random.key(12))
    mean_z, cov_z = _moment_z_scores(samples, data.mean(), data.covariance())
    assert mean_z < 5 and cov_z < 5, (mean_z, cov_z)


def test_pc_with_per_example_keys_matches_the_mixture():
    """With per-example keys the Langevin corrector takes its batch-independent step 2 (snr sigma)^2."""
    data = M.toy_mixture_2d()
    schedule = S.VPLinear()
    steps, kind, options = SAMPLERS["pc"]
    noise = jax.random.normal(jax.random.key(15), (NUM_SAMPLES, data.dim))
    keys = jax.random.split(jax.random.key(16), NUM_SAMPLES)
    samples = jax.jit(lambda noise, keys: sampling.sample(data.x0_fn(schedule), schedule, noise,
                                                          S.time_grid(schedule, steps, kind), "pc", keys,
                                                          **options))(noise, keys)
    mean_z, cov_z = _moment_z_scores(samples, data.mean(), data.covariance())
    assert mean_z < 5 and cov_z < 5, (mean_z, cov_z)


def _reference_solution(x0_fn, schedule, x_start, t_end):
    """The probability-flow ODE solved by an 8th-order adaptive Runge-Kutta method at tolerance 1e-8."""

    def velocity(t, x, args):
        t_batch = jnp.full(x.shape[:1], t)
        return probability_flow_velocity(x0_fn(x, t_batch), x, t_batch, schedule)

    solution = diffrax.diffeqsolve(diffrax.ODETerm(velocity), diffrax.Dopri8(), 1.0, t_end, None, x_start,
                                   stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
                                   max_steps=100_000)
    return solution.ys[-1]


def _gaussian_flow_to_data(mean, covariance, schedule, x_start, t_start=1.0):
    """The probability-flow ODE's exact solution at t = 0 from x_start at t_start for Gaussian data N(m, C):
    x_t = alpha m + A_t z with A_t = (alpha^2 C + sigma^2 I)^(1/2) and z constant along the path, so
    x_0 = m + C^(1/2) A_start^(-1) (x_start - alpha_start m) (C, A_t share C's eigenvectors)."""
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(covariance, np.float64))
    alpha, sigma = (float(c) for c in schedule.alpha_sigma(t_start))
    gain = eigenvectors @ np.diag(np.sqrt(eigenvalues / (alpha**2 * eigenvalues + sigma**2))) @ eigenvectors.T
    return mean + (np.asarray(x_start, np.float64) - alpha * mean) @ gain.T


@pytest.mark.parametrize("schedule", [S.VPCosine(), S.VPSigmoid()], ids=repr)
def test_heun_at_few_uniform_steps_is_as_close_as_euler_and_ddim(schedule):
    """The digits study's Heun failure (FCD 21.9 at 3 steps on vp_cosine): on a grid uniform in t from t = 1, Heun
    in sigma~ takes its first step from sigma~(1), set by VPCosine's and VPSigmoid's log-SNR floor (1,808 and 31,257),
    and its correction scales the denoiser's change over the step by (sigma~(1) / sigma~(t_1) - 1) / 2: 142 RMS off
    the exact solution at 3 steps on VPCosine. With the exact denoiser of a 16-D Gaussian, Heun must be at least as
    close to the ODE's closed-form solution as Euler and DDIM at the same steps. (Not so on VPLinear, whose
    sigma~(1) = 152 is a noise level of the schedule and where Heun keeps sigma~, as diffusers does: 0.39 at 3 steps,
    between Euler's 0.13 and DDIM's 0.50.)"""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(16, 16))
    mean, covariance = rng.normal(size=16) * 0.5, a @ a.T / 16 + 0.2 * np.eye(16)
    data = M.gaussian(mean, covariance)
    noise = jax.random.normal(jax.random.key(17), (256, 16))
    exact = _gaussian_flow_to_data(mean, covariance, schedule, schedule.sigma(1.0) * noise)
    run = jax.jit(lambda grid, method: sampling.sample(data.x0_fn(schedule), schedule, noise, grid, method),
                  static_argnums=1)
    for steps in (3, 10):
        grid = S.time_grid(schedule, steps, "uniform")
        errors = {method: float(np.sqrt(np.mean((np.asarray(run(grid, method)) - exact) ** 2)))
                  for method in ("heun", "euler", "ddim")}
        assert errors["heun"] <= min(errors["euler"], errors["ddim"]), (steps, errors)


CONVERGENCE = [  # (method, options, schedule, grid kind, t_end, expected order): the ends of the grids
    ("heun", {}, S.EDM(), "karras", 0.0, 2),
    ("dpmpp_2m", {}, S.EDM(), "karras", 0.0, 2),
    ("dpmpp_3m", {"second_difference": "exact"}, S.EDM(), "karras", 0.0, 3),
    ("euler", {}, S.RectifiedFlow(), "uniform", 0.02, 1),
    ("heun", {}, S.RectifiedFlow(), "uniform", 0.02, 2),
]


@pytest.mark.parametrize("method,options,schedule,kind,t_end,order", CONVERGENCE,
                         ids=[f"{c[0]}-{type(c[2]).__name__}" for c in CONVERGENCE])
def test_deterministic_solvers_converge_at_their_order(method, options, schedule, kind, t_end, order):
    data = M.toy_mixture_2d()
    x0_fn = data.x0_fn(schedule)
    x_start = schedule.sigma(1.0) * jax.random.normal(jax.random.key(2), (256, 2))
    reference = _reference_solution(x0_fn, schedule, x_start, t_end)
    steps = np.array([16, 32, 64]) if order < 3 else np.array([32, 64, 128])
    run = jax.jit(lambda noise, grid: sampling.sample(x0_fn, schedule, noise, grid, method, denoise_final=False,
                                                      **options))
    errors = [float(jnp.sqrt(jnp.mean((run(jax.random.normal(jax.random.key(2), (256, 2)),
                                           S.time_grid(schedule, int(n), kind, t_end=t_end)) - reference) ** 2)))
              for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.35, (errors, slope)


# name -> (method, options, expected order). Multistep solvers without lower_order_final, which would make the last
# step first order. 3M's default D2 coefficient (diffusers', k-diffusion's) is half the exact one: second order.
# UniPC's corrector raises its predictor's order by one; UniPC-3's fourth order reaches the float32 floor before its
# slope settles, so order 3 is measured on the predictor alone and the corrector's order by
# test_unipc_corrector_is_exact_for_polynomial_data_predictions.
ORDERS = {
    "ddim": ("ddim", {}, 1),
    "euler": ("euler", {}, 1),
    "heun": ("heun", {}, 2),
    "heun_t": ("heun", {"ode_time": "t"}, 2),
    "dpmpp_2s": ("dpmpp_2s", {}, 2),
    "dpmpp_2m": ("dpmpp_2m", {"lower_order_final": False}, 2),
    "dpmpp_3m": ("dpmpp_3m", {"lower_order_final": False, "second_difference": "exact"}, 3),
    "dpmpp_3m_reference": ("dpmpp_3m", {"lower_order_final": False}, 2),
    "unipc_1_bh1": ("unipc", {"order": 1, "variant": "bh1"}, 2),
    "unipc_2": ("unipc", {"order": 2, "lower_order_final": False}, 3),
    "unip_3": ("unipc", {"order": 3, "corrector": False, "lower_order_final": False}, 3),
}


@pytest.mark.parametrize("schedule,kind", [(S.VPDiscrete(), "trailing"), (S.VPLinear(), "uniform")], ids=repr)
def test_solvers_reach_their_order_stopping_at_t01(schedule, kind):
    """Issue 16: the log-log slope of the error between 45 and 90 steps, on DDPM's discrete schedule with a trailing
    grid (every point on a training step) and on the continuous one, stopping at t = 0.1 so that the last step onto
    sigma = 0 does not mask the order. Before the discrete schedule was C^1, Heun measured first order there.
    A correlated 2-D Gaussian: the mixture's errors change sign along the path and bend the high orders' slopes."""
    data = M.gaussian([0.5, -0.3], [[1.0, 0.6], [0.6, 0.8]])
    x0_fn = data.x0_fn(schedule)
    noise = jax.random.normal(jax.random.key(2), (64, 2))
    reference = _reference_solution(x0_fn, schedule, schedule.sigma(1.0) * noise, 0.1)
    grids = [S.time_grid(schedule, n, kind, t_end=0.1) for n in (45, 90)]
    slopes = {}
    for name, (method, options, order) in ORDERS.items():
        run = jax.jit(lambda noise, grid: sampling.sample(x0_fn, schedule, noise, grid, method, denoise_final=False,
                                                          **options))
        coarse, fine = (float(jnp.sqrt(jnp.mean((run(noise, grid) - reference) ** 2))) for grid in grids)
        slopes[name] = np.log2(coarse / fine)
    wrong = {name: round(slope, 2) for name, slope in slopes.items() if abs(slope - ORDERS[name][2]) >= 0.3}
    assert not wrong, (wrong, slopes)


def test_same_key_same_samples_and_any_data_shape():
    data = M.gaussian(np.zeros(12), np.eye(12))
    schedule = S.VPLinear()
    noise = jax.random.normal(jax.random.key(3), (4, 2, 3, 2))
    grid = S.time_grid(schedule, 20)
    x0_fn = data.x0_fn(schedule)
    first = sampling.sample(x0_fn, schedule, noise, grid, "ddpm", jax.random.key(4))
    again = sampling.sample(x0_fn, schedule, noise, grid, "ddpm", jax.random.key(4))
    other = sampling.sample(x0_fn, schedule, noise, grid, "ddpm", jax.random.key(5))
    assert first.shape == noise.shape
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    with pytest.raises(ValueError, match="stochastic: pass a PRNG key"):
        sampling.sample(x0_fn, schedule, noise, grid, "ddpm")
    with pytest.raises(ValueError, match="unknown sampling method 'dpm'"):
        sampling.sample(x0_fn, schedule, noise, grid, "dpm")


def test_one_scan_traced_once_compiled_once_and_vmappable():
    data = M.toy_mixture_2d()
    schedule = S.EDM()
    traces = []

    def counting_x0_fn(x, t):
        traces.append(1)
        return data.denoise(x, t, schedule)

    sampler = sampling.make_sampler(counting_x0_fn, schedule, "dpmpp_2m")
    noise = jax.random.normal(jax.random.key(6), (8, 2))
    sampler(noise, S.time_grid(schedule, 50, "karras"))
    calls_for_50_steps = len(traces)
    sampler(noise, S.time_grid(schedule, 50, "uniform"))  # new grid values, same shapes: no retrace
    assert len(traces) == calls_for_50_steps
    sampler(noise, S.time_grid(schedule, 5, "karras"))  # new length: one retrace with the same number of calls
    assert len(traces) == 2 * calls_for_50_steps <= 4
    grid = S.time_grid(schedule, 50, "karras")
    jaxpr = jax.make_jaxpr(lambda n: sampling.sample(data.x0_fn(schedule), schedule, n, grid, "heun"))(noise)
    assert "scan" in str(jaxpr)
    grid = S.time_grid(schedule, 10, "karras")
    batched = jax.vmap(lambda key: sampling.sample(data.x0_fn(schedule), schedule, noise, grid, "euler_maruyama",
                                                   key))
    out = batched(jax.random.split(jax.random.key(7), 3))
    assert out.shape == (3, 8, 2) and not np.allclose(out[0], out[1])


def test_trajectory_output():
    data = M.toy_mixture_2d()
    schedule = S.VE()
    noise = jax.random.normal(jax.random.key(8), (5, 2))
    grid = S.time_grid(schedule, 12, "karras")
    final, trajectory = sampling.sample(data.x0_fn(schedule), schedule, noise, grid, "heun",
                                        return_trajectory=True)
    assert trajectory.shape == (13, 5, 2)
    np.testing.assert_allclose(trajectory[0], schedule.sigma(1.0) * noise)
    # VE ends at sigma_min > 0: the final output is the denoised last state.
    np.testing.assert_allclose(final, data.denoise(trajectory[-1], grid[-1], schedule), rtol=1e-6)


_STEP_TIMES = (0.5, 0.4, [0.6, 0.72])  # t, t_next and the times of the two earlier outputs, on VPLinear


def _one_multistep_step(x0_of_l, x, order, **options):
    """One DPM-Solver++(kM) step from x at t to t_next with earlier outputs x0_of_l(l) at the times of _STEP_TIMES
    (l: half log-SNR), on a (1, 1) example."""
    from diffax.sampling import dpm_solver
    from diffax.sampling.common import StepContext

    schedule = S.VPLinear()
    t, t_next, earlier = _STEP_TIMES
    earlier_l = [0.5 * float(schedule.log_snr(s)) for s in earlier]
    history = jnp.array([[[x0_of_l(l)]] for l in earlier_l])
    state = (history[: order - 1], jnp.array(earlier_l)[: order - 1])
    x0_fn = lambda x, t: jnp.full_like(x, x0_of_l(0.5 * schedule.log_snr(t[0])))  # noqa: E731
    ctx = StepContext(x0_fn, schedule, jnp.array(5), 10, jax.random.key(0))
    x_next, _ = dpm_solver.multistep_step(ctx, jnp.array([[x]]), state, jnp.float32(t), jnp.float32(t_next),
                                          order=order, **options)
    return float(x_next[0, 0])


@pytest.mark.parametrize("order,second_difference", [(1, "exact"), (3, "exact")])
def test_multistep_update_is_exact_for_polynomial_data_predictions(order, second_difference):
    """If x0_hat(l) is a polynomial of degree order - 1 in l = log(alpha/sigma), DPM-Solver++(1M) and (3M) with the
    exact D2 coefficient integrate x_next = (sigma_next / sigma) x + alpha_next int e^{-(l_next - l)} x0_hat(l) dl
    exactly (Lu et al. 2022). (2M keeps the paper's midpoint coefficient and 3M's default the reference's halved D2
    coefficient: second order, not exact; see test_3m_default_is_the_reference_update.)"""
    from scipy import integrate

    schedule = S.VPLinear()
    coefficients = [0.7, -0.4, 0.15][:order]
    x0_of_l = lambda l: sum(c * l**k for k, c in enumerate(coefficients))  # noqa: E731
    t, t_next, _ = _STEP_TIMES
    l_now, l_next = (0.5 * float(schedule.log_snr(s)) for s in (t, t_next))
    integral, _ = integrate.quad(lambda l: np.exp(-(l_next - l)) * x0_of_l(l), l_now, l_next)
    alpha_next, sigma_next = (float(c) for c in schedule.alpha_sigma(t_next))
    expected = sigma_next / float(schedule.sigma(t)) * 0.3 + alpha_next * integral
    x_next = _one_multistep_step(x0_of_l, 0.3, order, second_difference=second_difference)
    assert x_next == pytest.approx(expected, rel=1e-5)


def test_3m_default_is_the_reference_update():
    """3M's default is diffusers' DPMSolverMultistepScheduler.multistep_dpm_solver_third_order_update with
    algorithm_type="dpmsolver++", written here in float64 as it is there: phi_3 = phi_2 / h - 0.5 times D2.
    An unknown second_difference is an error naming it."""
    schedule = S.VPLinear()
    x0_of_l = lambda l: np.sin(3.0 * l)  # noqa: E731 (not a polynomial: every term of the update matters)
    t, t_next, earlier = _STEP_TIMES
    alphas, sigmas = zip(*[(float(a), float(s)) for a, s in (schedule.alpha_sigma(s) for s in [t_next, t, *earlier])])
    lambda_t, lambda_s0, lambda_s1, lambda_s2 = (np.log(a) - np.log(s) for a, s in zip(alphas, sigmas))
    m0, m1, m2 = (x0_of_l(0.5 * float(schedule.log_snr(s))) for s in [t, *earlier])
    h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    alpha_t, sigma_t, sigma_s0 = alphas[0], sigmas[0], sigmas[1]
    expected = ((sigma_t / sigma_s0) * 0.3 - alpha_t * (np.exp(-h) - 1.0) * m0
                + alpha_t * ((np.exp(-h) - 1.0) / h + 1.0) * d1 - alpha_t * ((np.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2)
    assert _one_multistep_step(x0_of_l, 0.3, 3) == pytest.approx(expected, rel=1e-5)
    assert _one_multistep_step(x0_of_l, 0.3, 3, second_difference="exact") != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="unknown second_difference 'half'; expected one of"):
        _one_multistep_step(x0_of_l, 0.3, 3, second_difference="half")


@pytest.mark.parametrize("method", ["ddpm", "pc"])
def test_per_example_keys_make_samples_independent_of_the_batch(method):
    """Sample b drawn with per-example keys depends on key b only: the first 4 of a batch of 16 equal a batch of 4."""
    data = M.toy_mixture_2d()
    schedule = S.VPLinear()
    _, kind, options = SAMPLERS[method]
    grid = S.time_grid(schedule, 12, kind)
    noise = jax.random.normal(jax.random.key(9), (16, 3, 2))
    x0_fn = lambda x, t: data.denoise(x.reshape(-1, 2), jnp.repeat(t, 3), schedule).reshape(x.shape)  # noqa: E731
    run = jax.jit(lambda noise, key: sampling.sample(x0_fn, schedule, noise, grid, _method(method), key, **options))
    typed = jax.random.split(jax.random.key(10), 16)
    full = run(noise, typed)
    np.testing.assert_allclose(run(noise[:4], typed[:4]), full[:4], rtol=1e-5, atol=1e-5)
    raw = jax.random.key_data(typed)
    np.testing.assert_array_equal(run(noise, raw), full)  # raw uint32 (B, 2) keys are the same keys
    assert not np.allclose(full[0], run(noise, typed[::-1])[0])  # and the draws do depend on the key
    with pytest.raises(ValueError, match="do not match the batch of 16"):
        run(noise, typed[:4])


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_corrector_is_exact_for_polynomial_data_predictions(order, variant):
    """UniC of order p solves the order conditions with p - 1 earlier outputs and the new one: if x0_hat(l) is a
    polynomial of degree p in l, the corrected state is the exact solution (Zhao et al. 2023, Theorem 3.1).
    (Order 1 keeps the reference's rho = 1/2: second order, like 2M, but not exact for linear x0_hat.)"""
    from scipy import integrate

    from diffax.sampling import unipc

    schedule = S.VPLinear()
    coefficients = [0.7, -0.4, 0.15, 0.05][: order + 1]
    x0_of_l = lambda l: sum(c * l**k for k, c in enumerate(coefficients))  # noqa: E731
    half_log_snr = lambda t: 0.5 * float(schedule.log_snr(t))  # noqa: E731
    t_last, t, earlier = 0.5, 0.4, [0.6, 0.72]
    l_last, l_now = half_log_snr(t_last), half_log_snr(t)
    earlier_l = jnp.array([half_log_snr(s) for s in earlier])
    earlier_x0 = jnp.array([[[x0_of_l(float(l))]] for l in earlier_l])
    x_last = jnp.array([[0.3]])
    alpha, sigma = (float(c) for c in schedule.alpha_sigma(t))
    sigma_last = float(schedule.sigma(t_last))
    corrected = unipc._update(x_last, jnp.full((1, 1), x0_of_l(l_last)), earlier_x0, earlier_l, jnp.float32(l_last),
                              jnp.float32(l_now - l_last), sigma / sigma_last, alpha, order, variant,
                              new=jnp.full((1, 1), x0_of_l(l_now)))
    integral, _ = integrate.quad(lambda l: np.exp(-(l_now - l)) * x0_of_l(l), l_last, l_now)
    expected = sigma / sigma_last * 0.3 + alpha * integral
    assert float(corrected[0, 0]) == pytest.approx(expected, rel=1e-5)


def test_denoiser_calls_per_run_and_lower_order_final():
    """Multistep solvers make one call per step, the first included (no extra warm-up call); two-stage solvers two,
    but one onto sigma = 0. lower_order_final makes step i of N at most order N - i: two steps of 3M are DDIM's.
    DPM-Solver++ lowers only on grids of fewer than 15 steps, as diffusers does (`len(timesteps) < 15`)."""
    data = M.toy_mixture_2d()
    schedule = S.VPLinear()
    calls = []

    def counting_x0_fn(x, t):
        jax.debug.callback(lambda: calls.append(1))  # runs once per call made, not per trace
        return data.denoise(x, t, schedule)

    noise = jax.random.normal(jax.random.key(13), (4, 2))
    grid = S.time_grid(schedule, 3)
    expected = {"dpmpp_3m": ({}, 3), "unipc": ({"order": 3}, 3), "heun": ({}, 5)}
    for method, (options, count) in expected.items():
        calls.clear()
        jax.block_until_ready(sampling.sample(counting_x0_fn, schedule, noise, grid, method, jax.random.key(0),
                                              **options))
        jax.effects_barrier()
        assert len(calls) == count, (method, len(calls))
    schedule = S.VPDiscrete()
    two_steps = S.time_grid(schedule, 2, "trailing", t_end=0.5)
    x0_fn = data.x0_fn(schedule)
    ddim = sampling.sample(x0_fn, schedule, noise, two_steps, "ddim", denoise_final=False)
    for method, options in [("dpmpp_3m", {}), ("unipc", {"order": 3, "corrector": False})]:
        lowered = sampling.sample(x0_fn, schedule, noise, two_steps, method, denoise_final=False, **options)
        np.testing.assert_allclose(lowered, ddim, rtol=1e-5, atol=1e-6)
        full = sampling.sample(x0_fn, schedule, noise, two_steps, method, denoise_final=False,
                               lower_order_final=False, **options)
        assert not np.allclose(full, ddim, rtol=1e-3)
    for steps, lowered in [(14, True), (15, False)]:
        grid = S.time_grid(schedule, steps, "trailing", t_end=0.5)
        runs = [sampling.sample(x0_fn, schedule, noise, grid, "dpmpp_3m", denoise_final=False, lower_order_final=flag)
                for flag in (True, False)]
        assert np.allclose(*runs, rtol=1e-6) != lowered, steps


def test_unipc_predictor_is_dpm_solver_multistep():
    """Two derivations, one update: UniP with B(h) = e^{-h} - 1 is DPM-Solver++(2M) at order 2 and, with the
    exact D2 coefficient, (3M) at order 3 (Zhao et al. 2023, section 3.3)."""
    data = M.toy_mixture_2d()
    schedule = S.VPLinear()
    noise = jax.random.normal(jax.random.key(14), (64, 2))
    grid = S.time_grid(schedule, 12, "log_snr", t_end=0.05)
    for order in (2, 3):
        dpm = sampling.sample(data.x0_fn(schedule), schedule, noise, grid, f"dpmpp_{order}m",
                              second_difference="exact")
        unip = sampling.sample(data.x0_fn(schedule), schedule, noise, grid, "unipc", order=order, corrector=False)
        np.testing.assert_allclose(unip, dpm, rtol=1e-4, atol=1e-5)
