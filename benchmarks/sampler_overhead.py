"""Sampler overhead: a whole DDIM run against the same number of bare denoiser calls.

    python benchmarks/sampler_overhead.py [--batch 65536] [--steps 50] [--dim 2] [--modes 8] [--method ddim]

Both sides are one jitted `lax.scan` over the exact Gaussian-mixture denoiser with the same batch; the bare side
feeds each call's output into the next (so nothing is optimized away) and does no sampler arithmetic. The ratio
sampler / bare is the cost of everything the driver and solver add: schedule coefficients, the update, the scan.
Prints one JSON line per run with the device, both times (median of --repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from diffax import mixture, sampling, schedules


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--method", default="ddim")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    if args.dim == 2:
        data = mixture.toy_mixture_2d(args.modes)
    else:
        key = jax.random.key(0)
        data = mixture.GaussianMixture.from_covariances(
            jnp.full(args.modes, 1.0 / args.modes), jax.random.normal(key, (args.modes, args.dim)),
            jnp.full((args.modes, args.dim), 0.1))
    schedule = schedules.VPCosine()
    x0_fn = data.x0_fn(schedule)
    grid = schedules.time_grid(schedule, args.steps, "uniform")
    noise = jax.random.normal(jax.random.key(1), (args.batch, data.dim))

    sampler = jax.jit(lambda noise, grid: sampling.sample(x0_fn, schedule, noise, grid, args.method,
                                                          denoise_final=False))

    @jax.jit
    def bare_calls(noise, grid):
        def body(x, t):
            return x0_fn(x, jnp.full(x.shape[:1], t)), None

        return jax.lax.scan(body, noise, grid[:-1])[0]

    sampler_s = median_seconds(sampler, noise, grid, repeats=args.repeats)
    bare_s = median_seconds(bare_calls, noise, grid, repeats=args.repeats)
    print(json.dumps({"device": jax.devices()[0].device_kind, "method": args.method, "steps": args.steps,
                      "batch": args.batch, "dim": data.dim, "modes": args.modes,
                      "sampler_ms": round(1e3 * sampler_s, 3), "bare_denoiser_calls_ms": round(1e3 * bare_s, 3),
                      "ratio": round(sampler_s / bare_s, 3)}))


if __name__ == "__main__":
    main()
