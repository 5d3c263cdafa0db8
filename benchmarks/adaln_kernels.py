"""Times DiT's adaLN forward and backward, XLA's reference formulas against the Pallas kernels
(`diffax.kernels.adaln`), and prints how far their outputs differ.

    python benchmarks/adaln_kernels.py                          # DiT-XL/2 at batch 256: (256, 256, 1152) bf16
    python benchmarks/adaln_kernels.py --shape 64,1024,1152 --repeats 100

Each figure is the mean over `--repeats` jitted calls after a warm-up. On a CPU the Pallas kernels run interpreted,
so only a GPU gives meaningful times.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax.kernels import adaln

EPS = 1e-6


def seconds_per_call(fn, *args, repeats: int) -> float:
    """Mean wall time of `repeats` back-to-back calls after a warm-up (one sync at the end)."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="256,256,1152", help="B,N,D of the tokens")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    batch, tokens, features = (int(n) for n in args.shape.split(","))
    keys = jax.random.split(jax.random.key(0), 4)
    x = (1 + 2 * jax.random.normal(keys[0], (batch, tokens, features))).astype(jnp.bfloat16)
    shift = 0.1 * jax.random.normal(keys[1], (batch, features))
    scale = 0.1 * jax.random.normal(keys[2], (batch, features))
    dy = jax.random.normal(keys[3], x.shape).astype(jnp.bfloat16)
    print(f"{jax.devices()[0].device_kind}, x {x.shape} bfloat16")
    results = {}
    implementations = {"xla": (adaln.forward_reference, adaln.backward_reference),
                       "pallas": (adaln.forward, adaln.backward)}
    for implementation, (forward, backward) in implementations.items():
        forward = jax.jit(lambda x, s, c, f=forward: f(x, s, c, EPS, jnp.bfloat16))
        backward = jax.jit(lambda x, dy, mean, rstd, c, b=backward: b(x, dy, mean, rstd, c))
        y, mean, rstd = forward(x, shift, scale)
        results[implementation] = (y, *backward(x, dy, mean, rstd, scale))
        forward_ms = 1e3 * seconds_per_call(forward, x, shift, scale, repeats=args.repeats)
        backward_ms = 1e3 * seconds_per_call(backward, x, dy, mean, rstd, scale, repeats=args.repeats)
        print(f"{implementation:>6}: forward {forward_ms:.3f} ms, backward {backward_ms:.3f} ms", flush=True)
    for name, a, b in zip(("y", "dx", "dshift", "dscale"), results["xla"], results["pallas"], strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        print(f"{name}: largest difference {np.abs(a - b).max():.3g} (largest value {np.abs(a).max():.3g})")


if __name__ == "__main__":
    main()
