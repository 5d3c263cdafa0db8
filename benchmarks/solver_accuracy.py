"""Accuracy of every deterministic solver at equal network evaluations (issue 16).

    python benchmarks/solver_accuracy.py [--num 4096] [--save DIR]

Problem: the exact denoiser of a 4-component 2-D Gaussian mixture (`mixture.toy_mixture_2d(4)`), DDPM linear betas
with T = 1000 (`schedules.VPDiscrete`), the trailing grid from t = 1 to t = 0 (diffusers' timestep_spacing="trailing"
with final sigma 0), float32. For each solver and budget of 5, 10, 20 and 50 denoiser calls, the RMS over --num
samples and both coordinates of the sampler's output minus the probability-flow ODE's solution from the same start
x_T = sigma(1) noise. (Stochastic solvers have no pathwise target: tests/diffusion/test_sampling.py checks the
distribution they reach.) The reference integrates dy/d log sigma~ = sigma~ eps_hat in y = x / alpha (no derivative of the
schedule enters) with 8th-order Runge-Kutta at tolerance 1e-8 down to sigma~ = 1e-4, then denoises: it agrees with
tolerance 1e-7 and with sigma~ = 1e-5 to ~1e-6 RMS, the float32 floor (tighter tolerances accumulate rounding).
Solvers whose steps take two calls (heun, dpmpp_2s) get (budget + 1) // 2 steps, 2 N - 1 calls.

--save DIR writes noise.npy, reference.npy and mixture.npz, the inputs of the reference-implementation comparison
recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffax import mixture, sampling, schedules

BUDGETS = (5, 10, 20, 50)
# name -> (method, options, calls per step)
SOLVERS = {
    "ddim": ("ddim", {}, 1),
    "euler": ("euler", {}, 1),
    "heun": ("heun", {}, 2),
    "heun_t": ("heun", {"ode_time": "t"}, 2),
    "dpmpp_2s": ("dpmpp_2s", {}, 2),
    "dpmpp_2m": ("dpmpp_2m", {}, 1),
    "dpmpp_3m": ("dpmpp_3m", {}, 1),
    "dpmpp_3m_exact": ("dpmpp_3m", {"second_difference": "exact"}, 1),
    "unipc_bh1_1": ("unipc", {"order": 1, "variant": "bh1"}, 1),
    "unipc_bh1_2": ("unipc", {"order": 2, "variant": "bh1"}, 1),
    "unipc_bh1_3": ("unipc", {"order": 3, "variant": "bh1"}, 1),
    "unipc_bh2_1": ("unipc", {"order": 1, "variant": "bh2"}, 1),
    "unipc_bh2_2": ("unipc", {"order": 2, "variant": "bh2"}, 1),
    "unipc_bh2_3": ("unipc", {"order": 3, "variant": "bh2"}, 1),
}


def reference_solution(data: mixture.GaussianMixture, schedule: schedules.Schedule, x_start: jax.Array,
                       sigma_tilde_min: float = 1e-4, tolerance: float = 1e-8) -> jax.Array:
    """x0 at the end of the probability-flow ODE from x_start at t = 1 (see the module docstring)."""

    def eps_hat(y, log_sigma_tilde):
        t = schedule.t_from_log_snr(-2.0 * log_sigma_tilde)
        alpha, sigma = schedule.alpha_sigma(t)
        x = alpha * y
        return (x - alpha * data.denoise(x, t, schedule)) / sigma

    def velocity(log_sigma_tilde, y, args):
        return jnp.exp(log_sigma_tilde) * eps_hat(y, log_sigma_tilde)

    alpha_start, sigma_start = schedule.alpha_sigma(1.0)
    start, end = jnp.log(sigma_start / alpha_start), float(np.log(sigma_tilde_min))
    solution = diffrax.diffeqsolve(diffrax.ODETerm(velocity), diffrax.Dopri8(), start, end, None,
                                   x_start / alpha_start,
                                   stepsize_controller=diffrax.PIDController(rtol=tolerance, atol=tolerance),
                                   max_steps=100_000)
    t_end = schedule.t_from_log_snr(-2.0 * end)
    return data.denoise(schedule.alpha(t_end) * solution.ys[-1], t_end, schedule)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=4096)
    parser.add_argument("--save", default="")
    args = parser.parse_args()
    data = mixture.toy_mixture_2d(4)
    schedule = schedules.VPDiscrete()
    noise = jax.random.normal(jax.random.key(0), (args.num, 2))
    x_start = schedule.sigma(1.0) * noise
    reference = jax.jit(lambda x: reference_solution(data, schedule, x))(x_start)
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        np.save(os.path.join(args.save, "noise.npy"), np.asarray(noise))
        np.save(os.path.join(args.save, "reference.npy"), np.asarray(reference))
        np.savez(os.path.join(args.save, "mixture.npz"), weights=data.weights, means=data.means,
                 eigenvalues=data.eigenvalues, eigenvectors=data.eigenvectors)
    x0_fn = data.x0_fn(schedule)
    print(f"RMS error against the ODE solution, {args.num} samples; columns: denoiser calls (steps)")
    print("| solver | " + " | ".join(str(b) for b in BUDGETS) + " |")
    print("|---" * (len(BUDGETS) + 1) + "|")
    for name, (method, options, calls_per_step) in SOLVERS.items():
        run = jax.jit(lambda noise, grid: sampling.sample(x0_fn, schedule, noise, grid, method, **options))
        cells = []
        for budget in BUDGETS:
            steps = (budget + 1) // 2 if calls_per_step == 2 else budget
            grid = schedules.time_grid(schedule, steps, "trailing")
            error = float(jnp.sqrt(jnp.mean((run(noise, grid) - reference) ** 2)))
            calls = calls_per_step * steps - (calls_per_step - 1)
            cells.append(f"{error:.2e}" + ("" if calls == budget else f" ({calls})"))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
