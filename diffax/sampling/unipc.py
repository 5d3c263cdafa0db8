"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and corrector (UniC) in data-prediction form.

With half log-SNR l, a step from l_s to l_t = l_s + h, the newest output m0 = x0_hat(l_s) and earlier outputs m_k at
l_k, r_k = (l_k - l_s) / h and D_k = (m_k - m0) / r_k, the update of order p is
    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m0 - alpha_t B(h) sum_k rho_k D_k,
B(h) = -h ("bh1") or e^{-h} - 1 ("bh2"), and rho solves the order conditions sum_k rho_k r_k^(i-1) = b_i,
b_i = i! (-h) phi_{i+1}(-h) / B(h), i = 1..p-1 (phi_k(z) = sum_j z^j / (j + k)!; Zhao et al., Theorem 3.1).
The predictor of order p uses m0 and p - 1 earlier outputs (rho = 1/2 at p = 2, the paper's choice). After the
denoiser call at the predicted state, the corrector redoes the previous step with the new output as one more point
(r = 1, D = m_new - m0), raising its order by one at no extra call; the corrected state starts the next step and the
new output (taken at the predicted state) enters the history. No correction follows the last step.

Orders warm up and, with lower_order_final (default, as in the reference), fall to N - i on step i of N
(`common.multistep_order`); the step onto sigma = 0 is first order: the denoised last state.
Options: order in {1, 2, 3}, variant "bh1" / "bh2", corrector on or off (UniP alone).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from diffax.sampling.common import (Solver, StepContext, denoise, history_init, history_push, multistep_order,
                                    num_earlier)
from diffax.sampling.dpm_solver import half_log_snr

_SERIES_BELOW = 0.5
_SERIES_TERMS = 10


def _phi(k: int, z):
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k, by its series where the closed form would cancel."""
    series = sum(z**j / float(math.factorial(j + k)) for j in range(_SERIES_TERMS))
    safe_z = jnp.where(jnp.abs(z) < _SERIES_BELOW, 1.0, z)
    closed = (jnp.exp(safe_z) - sum(safe_z**j / float(math.factorial(j)) for j in range(k))) / safe_z**k
    return jnp.where(jnp.abs(z) < _SERIES_BELOW, series, closed)


def _b_coefficients(h, count: int, variant: str):
    """(b_1, ..., b_count) and B(h)."""
    if variant == "bh1":
        b_of_h = -h
    elif variant == "bh2":
        b_of_h = jnp.expm1(-h)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r}; expected 'bh1' or 'bh2'")
    b = [float(math.factorial(i)) * (-h) * _phi(i + 1, -h) / b_of_h for i in range(1, count + 1)]
    return b, b_of_h


def _rhos(ratios: list, b: list):
    """Solves sum_k rho_k r_k^(i-1) = b_i for i = 1..len(ratios)."""
    if not ratios:
        return []
    matrix = jnp.stack([jnp.stack([r**i for r in ratios]) for i in range(len(ratios))])
    return list(jnp.linalg.solve(matrix, jnp.stack(b[: len(ratios)])))


def _update(x, m0, earlier, earlier_l, l_s, h, sigma_ratio, alpha_t, order: int, variant: str, new=None):
    """The order-`order` predictor (new=None) or corrector (new = the output at l_s + h) from x at l_s."""
    count = order - 1
    ratios = [(earlier_l[k] - l_s) / h for k in range(count)]
    diffs = [(earlier[k] - m0) / ratios[k] for k in range(count)]
    b, b_of_h = _b_coefficients(h, order, variant)
    if new is None:
        rhos = [0.5] if order == 2 else _rhos(ratios, b)
    else:
        ratios, diffs = ratios + [1.0], diffs + [new - m0]
        rhos = [0.5] if order == 1 else _rhos(ratios, b)
    x_next = sigma_ratio * x - alpha_t * jnp.expm1(-h) * m0
    if diffs:  # (not at order 1 without a new point, which is also the step onto sigma = 0, where B(h) is infinite)
        x_next = x_next - alpha_t * b_of_h * sum(rho * d for rho, d in zip(rhos, diffs))
    return x_next


def _select(order_now, candidates):
    """candidates[p - 1] where order_now == p."""
    out = candidates[0]
    for p, candidate in enumerate(candidates[1:], start=2):
        out = jnp.where(order_now == p, candidate, out)
    return out


def unipc_init(x, *, order: int = 2, **options):
    return history_init(x, order) + (jnp.zeros_like(x), jnp.zeros((), jnp.int32))


def unipc_step(ctx: StepContext, x, state, t, t_next, *, order: int = 2, variant: str = "bh2",
               corrector: bool = True, lower_order_final: bool = True):
    """UniPC with predictor order `order` in {1, 2, 3}. State: earlier x0_hat (order, *x.shape), their half log-SNRs
    (order,), the state the last predictor started from, the last predictor's order (0 before the first step)."""
    history, l_history, last_x, last_order = state
    schedule = ctx.schedule
    x0_hat = denoise(ctx, x, t)
    alpha, sigma = schedule.alpha_sigma(t)
    l_now = half_log_snr(schedule, t)
    if corrector:
        l_last = l_history[0]
        sigma_last = schedule.sigma(schedule.t_from_log_snr(2.0 * l_last))
        h_last = l_now - l_last
        corrected = [_update(last_x, history[0], history[1:], l_history[1:], l_last, h_last, sigma / sigma_last,
                             alpha, p, variant, new=x0_hat) for p in range(1, order + 1)]
        x = jnp.where(last_order > 0, _select(last_order, corrected), x)
    alpha_next, sigma_next = schedule.alpha_sigma(t_next)
    h = half_log_snr(schedule, t_next) - l_now
    order_now = multistep_order(ctx, order, num_earlier(l_history), h, sigma_next, lower_order_final)
    predicted = [_update(x, x0_hat, history, l_history, l_now, h, sigma_next / sigma, alpha_next, p, variant)
                 for p in range(1, order + 1)]
    x_next = _select(order_now, predicted)
    return x_next, history_push(history, l_history, x0_hat, l_now) + (x, order_now.astype(jnp.int32))


SOLVERS = {
    "unipc": Solver(unipc_step, init=unipc_init),
}
