"""The forward (noising) process: `x_t = alpha(t) * x0 + sigma(t) * eps`, continuous time t in [0, 1].

Every schedule is a small frozen dataclass (hashable, so it can be closed over or passed as a static argument to
`jit`) with pure array methods:

    alpha(t), sigma(t)         signal and noise scales, any array shape of t
    log_snr(t)                 lambda(t) = log(alpha^2 / sigma^2), strictly decreasing in t
    t_from_log_snr(lambda)     the inverse of log_snr (every family here has one in closed form)
    derivatives(t)             (alpha, sigma, d alpha/dt, d sigma/dt), by forward-mode autodiff of alpha_sigma

The variance-preserving (VP) families are all written through q(t) = -log alpha(t)^2, which is what their papers
define in closed form (a sum of betas, a log cosine, a log sigmoid); alpha = exp(-q/2) and sigma = sqrt(-expm1(-q))
keep full float32 precision near t = 0, where 1 - alpha^2 would cancel.

Wrappers compose with any family: `Shifted` moves log-SNR by a constant (the resolution shift of Hoogeboom et al.
2023, which for rectified flow is exactly SD3's time shift), `ZeroTerminalSNR` rescales a VP schedule so that
alpha(1) = 0 (Lin et al. 2023). They re-parameterize time through the inverse log-SNR instead of recomputing alpha
and sigma from lambda, so a shifted rectified flow stays a flow (alpha + sigma = 1) and a shifted VP stays VP.
"""

from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Schedule(abc.ABC):
    """Base class: subclasses define `alpha_sigma`, `log_snr` and `t_from_log_snr`."""

    variance_preserving: bool = False

    @abc.abstractmethod
    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        ...

    @abc.abstractmethod
    def log_snr(self, t: Array) -> Array:
        ...

    @abc.abstractmethod
    def t_from_log_snr(self, log_snr: Array) -> Array:
        ...

    def alpha(self, t: Array) -> Array:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: Array) -> Array:
        return self.alpha_sigma(t)[1]

    @property
    def reaches_pure_noise(self) -> bool:
        """Whether alpha(1) = 0 in exact arithmetic, so that sigma~ = sigma / alpha is unbounded at t = 1: infinite
        here (rectified flow, zero terminal SNR), or the value of the log-SNR floor that keeps it finite in float
        (VPCosine, VPSigmoid), which is then an artifact of the floor rather than a noise level of the schedule."""
        with jax.ensure_compile_time_eval():
            return float(self.alpha(1.0)) == 0.0

    def derivatives(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """Returns (alpha, sigma, d alpha/dt, d sigma/dt) at t, each of t's shape."""
        t = jnp.asarray(t, jnp.float32)
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(self.alpha_sigma, (t,), (jnp.ones_like(t),))
        return alpha, sigma, dalpha, dsigma

    def marginal(self, x0: Array, t: Array, noise: Array) -> Array:
        """x_t = alpha(t) x0 + sigma(t) noise, with t of shape (batch,) broadcast over x0's trailing dims."""
        alpha, sigma = self.alpha_sigma(t)
        return broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * noise


def broadcast_to_data(per_example: Array, x: Array) -> Array:
    """Reshapes a (batch,) or scalar coefficient to broadcast against x of shape (batch, *data_shape)."""
    per_example = jnp.asarray(per_example)
    return per_example.reshape(per_example.shape + (1,) * (x.ndim - per_example.ndim))


def _log_snr_from_q(q: Array) -> Array:
    """log(alpha^2 / sigma^2) with alpha^2 = exp(-q): -q - log(1 - exp(-q))."""
    return -q - jnp.log(-jnp.expm1(-q))


class _VariancePreserving(Schedule):
    """VP schedule given q(t) = -log alpha(t)^2 and its inverse; alpha^2 + sigma^2 = 1."""

    variance_preserving = True

    @abc.abstractmethod
    def q(self, t: Array) -> Array:
        ...

    @abc.abstractmethod
    def t_from_q(self, q: Array) -> Array:
        ...

    def alpha_sigma(self, t):
        q = self.q(jnp.asarray(t, jnp.float32))
        return jnp.exp(-0.5 * q), jnp.sqrt(-jnp.expm1(-q))

    def log_snr(self, t):
        return _log_snr_from_q(self.q(jnp.asarray(t, jnp.float32)))

    def t_from_log_snr(self, log_snr):
        return self.t_from_q(jax.nn.softplus(-jnp.asarray(log_snr, jnp.float32)))


@dataclasses.dataclass(frozen=True)
class VPLinear(_VariancePreserving):
    """Continuous DDPM (Song et al. 2021, VP SDE): beta(t) = beta_min + t (beta_max - beta_min),
    q(t) = beta_min t + (beta_max - beta_min) t^2 / 2. Defaults are the T -> infinity limit of DDPM's
    beta 1e-4..0.02 over T = 1000 steps (beta_min = 1e-4 T, beta_max = 0.02 T)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def q(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_q(self, q):
        slope = self.beta_max - self.beta_min
        # Root of slope/2 t^2 + beta_min t - q = 0, in the form without cancellation.
        return 2.0 * q / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * q))


@dataclasses.dataclass(frozen=True)
class VPDiscrete(_VariancePreserving):
    """Discrete DDPM (Ho et al. 2020): alpha_bar_i = prod_{j<=i} (1 - beta_j), betas linear from beta_start to
    beta_end over num_steps steps. Step i is time t = i / num_steps, where q = -log alpha_bar is exact.

    Between the steps q(t) is the cubic Hermite interpolant of the table whose slope at a step is the mean of the
    two neighbouring secants (one-sided at t = 0 and t = 1). A linear interpolant puts a kink at every training
    step, and every point of a trailing or leading grid sits on one: its one-sided derivative there (the secant
    above) is not the derivative of the path between the grid points, so Heun, Euler, the reverse SDE and the
    likelihood ODE, which integrate dq/dt, lose their order (Heun's error stopped falling past 50 steps). The cubic
    is C^1 with the centred difference as its derivative at the steps, and the solvers converge at their order.
    The inverse solves the segment's cubic by Newton's method from the linear guess.
    """

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def _q_table64(self) -> np.ndarray:
        betas = np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)
        return np.concatenate([[0.0], np.cumsum(-np.log1p(-betas))])

    def alpha_bar(self) -> np.ndarray:
        """(num_steps + 1,) cumulative products alpha_bar_0 = 1, ..., alpha_bar_T."""
        return np.exp(-self._q_table64())

    def _segments(self):
        """Per segment i, float32 from float64: q_i, the increment d_i = q_{i+1} - q_i, and the cubic's shape
        coefficients c0_i = m_i / num_steps - d_i and c1_i = m_{i+1} / num_steps - d_i (m: knot slopes in q per t)."""
        q = self._q_table64()
        increments = np.diff(q)
        knot_slopes = np.concatenate([increments[:1], 0.5 * (increments[:-1] + increments[1:]), increments[-1:]])
        tables = (q[:-1], increments, knot_slopes[:-1] - increments, knot_slopes[1:] - increments)
        return tuple(jnp.asarray(table, jnp.float32) for table in tables)

    def q(self, t):
        position = _clamp(jnp.asarray(t, jnp.float32), 0.0, 1.0) * self.num_steps
        index = jnp.clip(jnp.floor(position), 0, self.num_steps - 1).astype(jnp.int32)
        start, increment, shape0, shape1 = (table[index] for table in self._segments())
        return start + _hermite(position - index, increment, shape0, shape1)

    def t_from_q(self, q):
        q = jnp.asarray(q, jnp.float32)
        starts = self._segments()[0]
        index = jnp.clip(jnp.searchsorted(starts, q, side="right", method="compare_all") - 1, 0, self.num_steps - 1)
        start, increment, shape0, shape1 = (table[index] for table in self._segments())
        target = _clamp(q, 0.0, float(self._q_table64()[-1])) - start
        w = target / increment
        for _ in range(3):  # the cubic part is ~1e-4 of the linear one: Newton converges in two steps
            slope = increment + (1.0 - 4.0 * w + 3.0 * w**2) * shape0 - (2.0 * w - 3.0 * w**2) * shape1
            w = w - (_hermite(w, increment, shape0, shape1) - target) / slope
        return (index + w) / self.num_steps


def _hermite(w, increment, shape0, shape1):
    """Cubic on w in [0, 1] from 0 to increment with end slopes increment + shape0 and increment + shape1."""
    return w * increment + w * (1.0 - w) * ((1.0 - w) * shape0 - w * shape1)


def _clamp(x, low, high):
    """x limited to [low, high] with derivative 1 at the bounds (jnp.clip's is 1/2 there)."""
    return jnp.where(x < low, low, jnp.where(x > high, high, x))


@dataclasses.dataclass(frozen=True)
class VPCosine(_VariancePreserving):
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = cos^2(u) / cos^2(u0) with
    u = pi/2 (t + s) / (1 + s). alpha_bar(1) = 0 exactly, so log-SNR is floored at log_snr_min (the continuous
    form of the paper's beta <= 0.999 clipping); it only changes the last 0.04% of t at the default -15."""

    s: float = 0.008
    log_snr_min: float = -15.0

    reaches_pure_noise = True  # alpha_bar(1) = 0 before the floor

    def _u(self, t):
        return 0.5 * math.pi * (t + self.s) / (1.0 + self.s)

    def q(self, t):
        cos_u0, cos_u = jnp.cos(self._u(jnp.zeros_like(t))), jnp.cos(self._u(t))
        q = 2.0 * (jnp.log(cos_u0) - jnp.log(jnp.maximum(cos_u, 1e-30)))
        return jnp.minimum(q, math.log1p(math.exp(-self.log_snr_min)))

    def t_from_q(self, q):
        u = jnp.arccos(jnp.exp(-0.5 * q) * jnp.cos(self._u(jnp.zeros_like(q))))
        return u * 2.0 / math.pi * (1.0 + self.s) - self.s


@dataclasses.dataclass(frozen=True)
class VPSigmoid(_VariancePreserving):
    """Sigmoid schedule (Chen 2023, "On the importance of noise scheduling"):
    alpha_bar(t) = (v_end - sigmoid((t (end - start) + start) / tau)) / (v_end - v_start), v = sigmoid(. / tau);
    floored at log_snr_min as the paper's code clips alpha_bar at 1e-9."""

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    log_snr_min: float = -20.7

    reaches_pure_noise = True  # alpha_bar(1) = 0 before the floor

    def _v(self, x):
        return jax.nn.sigmoid(x / self.tau)

    def q(self, t):
        v_start, v_end = self._v(self.start), self._v(self.end)
        alpha_bar = (v_end - self._v(t * (self.end - self.start) + self.start)) / (v_end - v_start)
        q = -jnp.log(jnp.maximum(alpha_bar, 1e-30))  # not 0: log's infinite slope there would make d/dt NaN
        return jnp.minimum(q, math.log1p(math.exp(-self.log_snr_min)))

    def t_from_q(self, q):
        v_start, v_end = self._v(self.start), self._v(self.end)
        v = v_end - jnp.exp(-q) * (v_end - v_start)
        return (self.tau * jax.scipy.special.logit(v) - self.start) / (self.end - self.start)


@dataclasses.dataclass(frozen=True)
class VE(Schedule):
    """Variance exploding (Song & Ermon 2019; Song et al. 2021): alpha = 1,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def alpha_sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        return jnp.ones_like(t), self.sigma_min * jnp.exp(t * log_ratio)

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        return (-0.5 * jnp.asarray(log_snr, jnp.float32) - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class EDM(Schedule):
    """EDM (Karras et al. 2022): alpha = 1 and sigma linear in t from sigma_min to sigma_max, so that Euler and Heun
    in t are the paper's solvers in sigma (its sigma(t) = t, up to an affine change of variable) and the Karras time
    grid gives the paper's sigma steps."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def alpha_sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.ones_like(t), self.sigma_min + t * (self.sigma_max - self.sigma_min)

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_from_log_snr(self, log_snr):
        sigma = jnp.exp(-0.5 * jnp.asarray(log_snr, jnp.float32))
        return (sigma - self.sigma_min) / (self.sigma_max - self.sigma_min)


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(Schedule):
    """Rectified flow / flow matching with the linear path (Liu et al. 2023; Lipman et al. 2023):
    alpha = 1 - t, sigma = t; log_snr = 2 log((1 - t) / t)."""

    def alpha_sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        return 1.0 - t, t

    def log_snr(self, t):
        t = jnp.asarray(t, jnp.float32)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, log_snr):
        return jax.nn.sigmoid(-0.5 * jnp.asarray(log_snr, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Shifted(Schedule):
    """log_snr(t) = base.log_snr(t) + shift, realized as a change of time t -> tau(t) within the base family.

    Use `resolution_shift(base_resolution, resolution)` for shift = 2 log(base / resolution) (Hoogeboom et al. 2023);
    for `RectifiedFlow`, shift = -2 log(s) is SD3's t -> s t / (1 + (s - 1) t)."""

    base: Schedule
    shift: float

    @property
    def variance_preserving(self) -> bool:
        return self.base.variance_preserving

    @property
    def reaches_pure_noise(self) -> bool:
        return self.base.reaches_pure_noise  # a finite shift of log-SNR = -inf leaves it -inf

    def _tau(self, t):
        return self.base.t_from_log_snr(self.base.log_snr(t) + self.shift)

    def alpha_sigma(self, t):
        return self.base.alpha_sigma(self._tau(jnp.asarray(t, jnp.float32)))

    def log_snr(self, t):
        return self.base.log_snr(t) + self.shift

    def t_from_log_snr(self, log_snr):
        return self.base.t_from_log_snr(jnp.asarray(log_snr, jnp.float32) - self.shift)


def resolution_shift(base_resolution: int, resolution: int) -> float:
    """Log-SNR shift 2 log(base_resolution / resolution) that keeps a schedule tuned at base_resolution as noisy at
    resolution (Hoogeboom et al. 2023, "simple diffusion")."""
    return 2.0 * math.log(base_resolution / resolution)


@dataclasses.dataclass(frozen=True)
class ZeroTerminalSNR(Schedule):
    """Rescales a VP schedule so that alpha(1) = 0 and alpha(0) is unchanged (Lin et al. 2023, Algorithm 1):
    alpha'(t) = (alpha(t) - alpha(1)) alpha(0) / (alpha(0) - alpha(1)), sigma' = sqrt(1 - alpha'^2).
    Pure noise at t = 1 makes eps-prediction undefined there: train with v or x0 prediction."""

    base: Schedule

    variance_preserving = True

    def __post_init__(self):
        if not self.base.variance_preserving:
            raise ValueError(f"ZeroTerminalSNR needs a variance-preserving schedule, got {self.base!r}")

    def _ends(self):
        return self.base.alpha(0.0), self.base.alpha(1.0)

    def alpha_sigma(self, t):
        alpha0, alpha1 = self._ends()
        alpha = (self.base.alpha(t) - alpha1) * alpha0 / (alpha0 - alpha1)
        return alpha, jnp.sqrt((1.0 - alpha) * (1.0 + alpha))

    def log_snr(self, t):
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def t_from_log_snr(self, log_snr):
        alpha0, alpha1 = self._ends()
        alpha = jnp.sqrt(jax.nn.sigmoid(jnp.asarray(log_snr, jnp.float32)))
        base_alpha = alpha * (alpha0 - alpha1) / alpha0 + alpha1
        return self.base.t_from_log_snr(2.0 * jnp.log(base_alpha) - jnp.log1p(-base_alpha**2))


SCHEDULES = {
    "vp_linear": VPLinear,
    "vp_discrete": VPDiscrete,
    "vp_cosine": VPCosine,
    "vp_sigmoid": VPSigmoid,
    "ve": VE,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
}


def get_schedule(name: str, *, shift: float = 0.0, zero_terminal_snr: bool = False, **kwargs) -> Schedule:
    """Builds a schedule by registry name, then applies the optional zero-terminal-SNR rescaling and log-SNR shift."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    schedule = SCHEDULES[name](**kwargs)
    if zero_terminal_snr:
        schedule = ZeroTerminalSNR(schedule)
    if shift:
        schedule = Shifted(schedule, float(shift))
    return schedule


TIME_GRIDS = ("uniform", "quadratic", "karras", "log_snr", "trailing")


def time_grid(schedule: Schedule, num_steps: int, kind: str = "uniform", *, t_start: float = 1.0,
              t_end: float = 0.0, rho: float = 7.0, num_train_steps: int = 1000,
              karras_sigma_range: tuple[float, float] = (0.002, 80.0)) -> Array:
    """Sampling times t_0 = t_start > t_1 > ... > t_N = t_end, shape (num_steps + 1,), float32.

    kinds:
      uniform     equal steps in t
      quadratic   t_end + (t_start - t_end) (1 - i/N)^2 (Song et al. 2021, DDIM), denser near the data
      karras      equal steps in sigma~^(1/rho) with sigma~ = sigma / alpha = exp(-log_snr / 2) (Karras et al. 2022,
                  eq. 5); with the EDM schedule these are exactly the paper's sigmas. Where sigma~(t_end) or
                  sigma~(t_start) lies outside karras_sigma_range, the steps run to the range's end and one step
                  more reaches t_end (t_start), as EDM appends sigma = 0
      log_snr     equal steps in log-SNR (Lu et al. 2022, DPM-Solver); needs a finite log-SNR at t_end
      trailing    uniform steps snapped to the num_train_steps training grid, starting from t = 1
                  (Lin et al. 2023, Table 2), for models trained on a discrete grid
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    fraction = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=jnp.float32)
    if kind == "uniform":
        grid = t_start + (t_end - t_start) * fraction
    elif kind == "quadratic":
        grid = t_end + (t_start - t_end) * (1.0 - fraction) ** 2
    elif kind == "karras":
        grid = _karras_grid(schedule, num_steps, t_start, t_end, rho, karras_sigma_range)
    elif kind == "log_snr":
        with jax.ensure_compile_time_eval():
            lam_hi, lam_lo = float(schedule.log_snr(t_start)), float(schedule.log_snr(t_end))
        if not (np.isfinite(lam_hi) and np.isfinite(lam_lo)):
            raise ValueError(f"log_snr grid needs finite log-SNR at both ends; got {lam_hi} at "
                             f"t_start={t_start} and {lam_lo} at t_end={t_end}: pass t_end > 0")
        grid = schedule.t_from_log_snr(lam_hi + fraction * (lam_lo - lam_hi))
    elif kind == "trailing":
        grid = jnp.round(num_train_steps * (t_start + (t_end - t_start) * fraction)) / num_train_steps
    else:
        raise ValueError(f"unknown time grid kind {kind!r}; expected one of {TIME_GRIDS}")
    # Pin the ends exactly: the inverse log-SNR round trip is only float-accurate.
    return grid.at[0].set(t_start).at[-1].set(t_end).astype(jnp.float32)


def _karras_grid(schedule: Schedule, num_steps: int, t_start: float, t_end: float, rho: float,
                 sigma_range: tuple[float, float]) -> Array:
    """Karras et al. 2022 eq. 5 between sigma~(t_start) and sigma~(t_end), clipped to sigma_range: an end outside it
    (sigma~ = 0 at the data, sigma~ = inf for flows, 1.5e2 for VP-linear's t = 1) is replaced by the range's end,
    and t_start / t_end is then added as one more point."""
    with jax.ensure_compile_time_eval():  # python-float ends: usable inside jit too
        sigma_hi, sigma_lo = (float(jnp.exp(-0.5 * schedule.log_snr(t))) for t in (t_start, t_end))
    slack = 1.0 + 1e-5  # float32 rounding of the schedule's own ends
    extend_hi, extend_lo = not sigma_hi <= sigma_range[1] * slack, sigma_lo * slack < sigma_range[0]
    num_points = num_steps + 1 - extend_hi - extend_lo
    if num_points < 2:
        raise ValueError(f"a karras grid from t={t_start} to t={t_end} needs num_steps >= {3 - num_points}")
    sigma_hi = sigma_range[1] if extend_hi else sigma_hi
    sigma_lo = sigma_range[0] if extend_lo else sigma_lo
    fraction = jnp.linspace(0.0, 1.0, num_points, dtype=jnp.float32)
    root = sigma_hi ** (1 / rho) + fraction * (sigma_lo ** (1 / rho) - sigma_hi ** (1 / rho))
    grid = schedule.t_from_log_snr(-2.0 * rho * jnp.log(root))
    return jnp.concatenate([jnp.array([t_start] * extend_hi), grid, jnp.array([t_end] * extend_lo)])
