"""The Gaussian (Tweedie moment-projected) posterior denoiser for known coordinates: inpainting as a denoiser wrapper.

Tweedie's formulas give the first two moments of p(x0 | x_t) from the denoiser m(x_t) = x0_fn(x_t, t):

    E[x0 | x_t] = m,    Cov[x0 | x_t] = (sigma^2 / alpha) J,    J = d m / d x_t

(J is symmetric positive semi-definite for the true denoiser). Projecting p(x0 | x_t) onto N(m, C) with these
moments (Boys et al. 2023, "Tweedie Moment Projected Diffusions for Inverse Problems"; the same linear-Gaussian
conditioning as Pi-GDM, Song et al. 2023) and conditioning on the known coordinates x0[k] = y gives

    E[x0 | x_t, y] = m + C[:, k] C[k, k]^-1 (y - m[k]) = m + J P^T w,    J[k, k] w = y - m[k],

where P selects the known coordinates; the scale sigma^2 / alpha cancels. For Gaussian data p(x0 | x_t) IS
Gaussian, so this is the exact conditional denoiser and any solver fed with it samples p(x0 | y) exactly up to its
discretization error. For other data it is the moment-matched approximation.

Cost per call: the denoiser linearized once at x_t (`jax.linearize`), then cg_steps + 1 Jacobian-vector products:
J[k, k] v is one product (v zero outside k, read on k), and one more gives J P^T w.

Solving J[k, k] w = y - m[k]: conjugate gradients (Hestenes & Stiefel 1952) from w = 0 for a fixed number of
iterations, written as a small `lax.fori_loop` rather than `jax.scipy.sparse.linalg.cg` because (1) the examples
of a batch are independent systems (J is block diagonal over the batch), so every inner product and step size is
per example, while jax's cg takes one global inner product over the whole array and so couples the examples;
(2) a fixed count gives a fixed cost and a tolerance-free result. In exact arithmetic CG solves a d_k-dimensional
positive definite system in d_k iterations. A learned denoiser's J is only approximately symmetric and positive
semi-definite (on the digits recipe w^T J u / u^T J w ranged 0.6-5.8 across t instead of 1; benchmarks/RESULTS.md,
"Inpainting"), and then J[k, k] is an ill-conditioned, not quite positive, operator: a direction of non-positive
curvature p^T J p <= 0 ends an example's iterations (truncated CG, Steihaug 1983), and stopping after a few
iterations regularizes (early-stopped CG is a Krylov-subspace regularization, Hanke 1995). There one iteration
(w along the residual, scaled by its Rayleigh quotient) improved the denoiser's repainted region at t <= 0.9 and
more diverged, so learned denoisers use cg_steps 1; exactness on Gaussian data needs cg_steps >= d_k.
Where alpha = 0 (t = 1 of rectified flow) J = 0: nothing is solved and the result is m with the known values.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffax.sampling.common import X0Fn

Array = jax.Array


def _batch_dot(a: Array, b: Array) -> Array:
    """Per-example inner products (B, 1, ..., 1) of a and b (B, *data), shaped to broadcast against them."""
    return jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def batched_conjugate_gradients(matvec: Callable[[Array], Array], rhs: Array, steps: int) -> Array:
    """`steps` iterations of conjugate gradients from 0 on the block-diagonal system A w = rhs (B, *data): each
    example b is its own system A_b w_b = rhs_b, with its own step sizes alpha_b = r_b.r_b / p_b.A p_b and
    beta_b = r_b'.r_b' / r_b.r_b. An example stops (its w kept) at zero residual or non-positive curvature."""

    def iteration(_, carry):
        w, residual, direction, residual_sq, active = carry
        product = matvec(direction)
        curvature = _batch_dot(direction, product)
        active = active & (curvature > 0)
        step = jnp.where(active, residual_sq / jnp.where(active, curvature, 1.0), 0.0)
        w = w + step * direction
        residual = residual - step * product
        new_residual_sq = _batch_dot(residual, residual)
        beta = jnp.where(active, new_residual_sq / jnp.where(active, residual_sq, 1.0), 0.0)
        return w, residual, residual + beta * direction, new_residual_sq, active

    residual_sq = _batch_dot(rhs, rhs)
    start = (jnp.zeros_like(rhs), rhs, rhs, residual_sq, residual_sq > 0)
    return jax.lax.fori_loop(0, steps, iteration, start)[0]


def posterior_denoiser(x0_fn: X0Fn, known_values: Array, mask: Array, cg_steps: int) -> X0Fn:
    """Returns x0_fn_y(x_t, t) = E[x0 | x_t, x0[k] = y] under the Gaussian projection (module docstring).

    known_values: (B, *data) y (read where mask is 0); mask: (B, *data) or broadcastable, 1 where unknown (to
    repaint), 0 where known. The result equals known_values exactly where mask is 0."""
    if cg_steps < 1:
        raise ValueError(f"cg_steps {cg_steps}: expected a positive number of conjugate-gradient iterations")
    mask = jnp.broadcast_to(jnp.asarray(mask, known_values.dtype), known_values.shape)
    known = 1.0 - mask

    def conditioned(x_t: Array, t: Array) -> Array:
        mean, jvp = jax.linearize(lambda v: x0_fn(v, t), x_t)
        w = batched_conjugate_gradients(lambda v: known * jvp(known * v), known * (known_values - mean), cg_steps)
        return mask * (mean + jvp(w)) + known * known_values

    return conditioned
