"""Schedules against their papers' closed forms, boundary values and invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import schedules as S

ALL = [S.get_schedule(name) for name in S.SCHEDULES] + [
    S.Shifted(S.VPCosine(), S.resolution_shift(64, 256)),
    S.Shifted(S.RectifiedFlow(), -2 * math.log(3.0)),
    S.ZeroTerminalSNR(S.VPLinear()),
]
VP = [s for s in ALL if s.variance_preserving]
INTERIOR = jnp.linspace(0.01, 0.99, 197)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_log_snr_strictly_decreasing_and_consistent(schedule):
    log_snr = schedule.log_snr(INTERIOR)
    assert jnp.all(jnp.diff(log_snr) < 0)
    alpha, sigma = schedule.alpha_sigma(INTERIOR)
    np.testing.assert_allclose(log_snr, 2 * jnp.log(alpha / sigma), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_inverse_round_trips(schedule):
    np.testing.assert_allclose(schedule.t_from_log_snr(schedule.log_snr(INTERIOR)), INTERIOR, atol=2e-5)


@pytest.mark.parametrize("schedule", VP, ids=repr)
def test_variance_preserving(schedule):
    alpha, sigma = schedule.alpha_sigma(jnp.linspace(0.0, 1.0, 101))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_derivatives_match_finite_differences(schedule):
    t = jnp.linspace(0.05, 0.95, 19)
    _, _, dalpha, dsigma = schedule.derivatives(t)
    step = 1e-3
    t64 = np.asarray(t, np.float64)
    for index, derivative in ((0, dalpha), (1, dsigma)):
        upper = np.asarray(schedule.alpha_sigma(t64 + step)[index], np.float64)
        lower = np.asarray(schedule.alpha_sigma(t64 - step)[index], np.float64)
        np.testing.assert_allclose(derivative, (upper - lower) / (2 * step), rtol=2e-2, atol=2e-2)


def test_discrete_ddpm_reproduces_published_alpha_bar():
    schedule = S.VPDiscrete()
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(schedule.alpha_bar()[1:], np.cumprod(1 - betas), rtol=1e-6)
    assert schedule.alpha_bar()[-1] == pytest.approx(4.04e-5, rel=0.01)  # Ho et al. 2020: alpha_bar_T ~ 4e-5
    grid = jnp.arange(1001) / 1000
    np.testing.assert_allclose(schedule.alpha(grid) ** 2, schedule.alpha_bar(), rtol=2e-4, atol=1e-7)


def test_continuous_linear_is_ddpm_limit():
    # log alpha_bar(1) = -(beta_min + beta_max) / 2 = -10.05 for the T -> infinity limit of DDPM's betas.
    assert float(jnp.log(S.VPLinear().alpha(1.0) ** 2)) == pytest.approx(-10.05, rel=1e-5)
    t = jnp.linspace(0.1, 1.0, 10)
    np.testing.assert_allclose(jnp.log(S.VPLinear().alpha(t)), jnp.log(S.VPDiscrete().alpha(t)), rtol=1e-2)


def test_boundary_values():
    assert float(S.VPLinear().sigma(0.0)) == 0.0 and float(S.VPLinear().alpha(0.0)) == 1.0
    assert float(S.VPCosine().alpha(0.0)) == pytest.approx(1.0, abs=1e-6)
    assert float(S.VPCosine().log_snr(1.0)) == pytest.approx(-15.0)
    # improved DDPM: alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2)
    t, s = 0.5, 0.008
    expected = math.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    assert float(S.VPCosine().alpha(t) ** 2) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(S.EDM().sigma(jnp.array([0.0, 1.0])), [0.002, 80.0], rtol=1e-6)
    np.testing.assert_allclose(S.VE().sigma(jnp.array([0.0, 1.0])), [0.01, 50.0], rtol=1e-5)
    alpha, sigma = S.RectifiedFlow().alpha_sigma(jnp.array([0.0, 0.3, 1.0]))
    np.testing.assert_allclose(alpha, [1.0, 0.7, 0.0]) and np.testing.assert_allclose(sigma, [0.0, 0.3, 1.0])
    assert float(S.VPSigmoid().log_snr(0.5)) == pytest.approx(0.0, abs=1e-5)  # symmetric start/end


def test_shifts():
    # SD3's shifted flow: sigma(t) = s t / (1 + (s - 1) t), a log-SNR shift of -2 log s.
    t = jnp.linspace(0.0, 1.0, 11)
    shifted = S.Shifted(S.RectifiedFlow(), -2 * math.log(3.0))
    np.testing.assert_allclose(shifted.sigma(t), 3 * t / (1 + 2 * t), atol=1e-6)
    np.testing.assert_allclose(shifted.alpha(t) + shifted.sigma(t), 1.0, atol=1e-6)
    base = S.VPCosine()
    shift = S.resolution_shift(64, 512)
    assert shift == pytest.approx(2 * math.log(1 / 8))
    np.testing.assert_allclose(S.Shifted(base, shift).log_snr(INTERIOR), base.log_snr(INTERIOR) + shift, atol=1e-4)


def test_zero_terminal_snr():
    base = S.VPLinear()
    schedule = S.get_schedule("vp_linear", zero_terminal_snr=True)
    assert float(schedule.alpha(1.0)) == pytest.approx(0.0, abs=1e-7)
    assert float(schedule.alpha(0.0)) == pytest.approx(float(base.alpha(0.0)))
    # Lin et al. 2023: sqrt(alpha_bar) is shifted and scaled linearly.
    t = jnp.linspace(0, 1, 11)
    a0, a1 = float(base.alpha(0.0)), float(base.alpha(1.0))
    np.testing.assert_allclose(schedule.alpha(t), (base.alpha(t) - a1) * a0 / (a0 - a1), atol=1e-6)
    with pytest.raises(ValueError, match="variance-preserving"):
        S.ZeroTerminalSNR(S.EDM())


def test_reaches_pure_noise_and_the_log_snr_floor():
    """alpha(1) = 0 in exact arithmetic for the cosine and sigmoid families (alpha_bar(1) = cos^2(pi/2) / cos^2(u0),
    (v_end - v_end) / (v_end - v_start)), though their log-SNR floor keeps it positive in float; on the floor the
    schedule is constant, so its time derivatives at t = 1 are 0, not NaN (the sigmoid's were)."""
    expected = {"vp_linear": False, "vp_discrete": False, "vp_cosine": True, "vp_sigmoid": True, "ve": False,
                "edm": False, "rectified_flow": True}
    assert {name: S.get_schedule(name).reaches_pure_noise for name in S.SCHEDULES} == expected
    assert S.get_schedule("vp_linear", zero_terminal_snr=True).reaches_pure_noise
    assert S.get_schedule("vp_cosine", shift=1.0).reaches_pure_noise
    assert not S.get_schedule("vp_linear", shift=1.0).reaches_pure_noise
    for schedule in (S.VPCosine(), S.VPSigmoid()):
        assert float(schedule.log_snr(1.0)) == pytest.approx(schedule.log_snr_min, abs=1e-5)
        alpha, _, dalpha, dsigma = schedule.derivatives(jnp.float32(1.0))
        assert float(alpha) > 0 and float(dalpha) == 0 and float(dsigma) == 0


def test_karras_grid_is_edm_formula():
    n = 18
    grid = S.time_grid(S.EDM(), n - 1, "karras")
    i = np.arange(n)
    expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(S.EDM().sigma(grid), expected, rtol=1e-4)


@pytest.mark.parametrize("kind", ["uniform", "quadratic", "karras", "log_snr", "trailing"])
@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_time_grids_decrease_between_the_ends(schedule, kind):
    t_end = 1e-3 if kind == "log_snr" else 0.0
    t_start = 0.999 if kind == "log_snr" else 1.0
    grid = S.time_grid(schedule, 10, kind, t_start=t_start, t_end=t_end)
    assert grid.shape == (11,) and grid[0] == jnp.float32(t_start) and grid[-1] == jnp.float32(t_end)
    assert jnp.all(jnp.diff(grid) < 0)


def test_log_snr_grid_is_uniform_in_log_snr():
    schedule = S.VPLinear()
    grid = S.time_grid(schedule, 8, "log_snr", t_end=1e-3)
    np.testing.assert_allclose(jnp.diff(schedule.log_snr(grid)), jnp.diff(schedule.log_snr(grid))[0], rtol=1e-3)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown schedule 'vp_lin'"):
        S.get_schedule("vp_lin")
    with pytest.raises(ValueError, match="log_snr grid needs finite"):
        S.time_grid(S.VPLinear(), 8, "log_snr")
    with pytest.raises(ValueError, match="unknown time grid kind"):
        S.time_grid(S.VPLinear(), 8, "linear")
    with pytest.raises(ValueError, match="num_steps"):
        S.time_grid(S.VPLinear(), 0)


def test_schedules_work_under_jit_and_vmap():
    schedule = S.VPCosine()
    fn = jax.jit(jax.vmap(schedule.derivatives))
    assert all(v.shape == (5,) for v in fn(jnp.linspace(0.1, 0.9, 5)))


def test_discrete_ddpm_derivative_is_the_centred_difference_and_continuous():
    """dq/dt at training step i is (q_{i+1} - q_{i-1}) / (2 / T) (one-sided at t = 0 and 1, not halved by a clip),
    and the same a hair above and below the step: the interpolant is C^1, so solvers see no kinks (issue 16)."""
    schedule = S.VPDiscrete()
    betas = np.linspace(1e-4, 0.02, 1000)
    q = np.concatenate([[0.0], np.cumsum(-np.log(1.0 - betas))])
    secants = np.diff(q) * 1000
    expected = np.concatenate([secants[:1], (secants[:-1] + secants[1:]) / 2, secants[-1:]])
    slope = jax.jit(jax.vmap(jax.grad(schedule.q)))
    knots = jnp.arange(1001, dtype=jnp.float32) / 1000
    np.testing.assert_allclose(slope(knots), expected, rtol=1e-4)
    assert float(slope(jnp.ones(1))[0]) == pytest.approx(20.2027, rel=1e-4)  # beta_end T, not half of it
    inner = knots[1:-1]
    kink = np.diff(secants)  # the jump of a linear interpolant's slope at each inner step, ~0.02
    jump = np.asarray(slope(inner + 1e-6)) - np.asarray(slope(inner - 1e-6))
    assert np.all(np.abs(jump) < 0.1 * kink), np.abs(jump / kink).max()
    # Midway, the cubic Hermite value (q_i + q_{i+1}) / 2 + (m_i - m_{i+1}) dt / 8; its inverse is exact.
    mid = (knots[:-1] + knots[1:]) / 2
    cubic_mid = (q[:-1] + q[1:]) / 2 + (expected[:-1] - expected[1:]) / 1000 / 8
    np.testing.assert_allclose(schedule.q(mid), cubic_mid, rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(schedule.t_from_q(schedule.q(mid)), mid, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda t: schedule.t_from_q(schedule.q(t))))(mid), 1.0, rtol=1e-4)
