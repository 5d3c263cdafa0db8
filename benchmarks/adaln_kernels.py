"""Times DiT's adaLN forward and backward, XLA's reference formulas against the Pallas kernels
(`diffax.kernels.adaln`), and prints how far their outputs differ.

    python benchmarks/adaln_kernels.py                          # DiT-XL/2 at batch 256: (256, 256, 1152) bf16
    python benchmarks/adaln_kernels.py --shape 64,1024,1152 --repeats 100
    python benchmarks/adaln_kernels.py --forward_rows 1,2,4 --backward_rows 32,64,128 --warps 4,8   # block sizes

Each figure is the mean over `--repeats` jitted calls after a warm-up. On a CPU the Pallas kernels run interpreted,
so only a GPU gives meaningful times. The block-size flags sweep the kernels' module constants (the Pallas rows
print once per setting); their defaults are the constants as committed.
"""

from __future__ import annotations

import argparse
import itertools
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
    parser.add_argument("--forward_rows", default=str(adaln._FORWARD_ROWS), help="rows a forward program normalizes")
    parser.add_argument("--backward_rows", default=str(adaln._BACKWARD_ROWS), help="rows a backward program reduces")
    parser.add_argument("--warps", default=str(adaln._NUM_WARPS), help="warps a program")
    args = parser.parse_args()
    batch, tokens, features = (int(n) for n in args.shape.split(","))
    keys = jax.random.split(jax.random.key(0), 4)
    x = (1 + 2 * jax.random.normal(keys[0], (batch, tokens, features))).astype(jnp.bfloat16)
    shift = 0.1 * jax.random.normal(keys[1], (batch, features))
    scale = 0.1 * jax.random.normal(keys[2], (batch, features))
    dy = jax.random.normal(keys[3], x.shape).astype(jnp.bfloat16)
    print(f"{jax.devices()[0].device_kind}, x {x.shape} bfloat16")
    sweep = [("xla", None)] + [("pallas", setting) for setting in itertools.product(
        *(map(int, values.split(",")) for values in (args.forward_rows, args.backward_rows, args.warps)))]
    implementations = {"xla": (adaln.forward_reference, adaln.backward_reference),
                       "pallas": (adaln.forward, adaln.backward)}
    reference = None
    for implementation, setting in sweep:
        label = implementation
        if setting:
            adaln._FORWARD_ROWS, adaln._BACKWARD_ROWS, adaln._NUM_WARPS = setting
            label = f"pallas, forward rows {setting[0]}, backward rows {setting[1]}, warps {setting[2]}"
        forward, backward = implementations[implementation]
        forward = jax.jit(lambda x, s, c, f=forward: f(x, s, c, EPS, jnp.bfloat16))
        backward = jax.jit(lambda x, dy, mean, rstd, c, b=backward: b(x, dy, mean, rstd, c))
        y, mean, rstd = forward(x, shift, scale)
        outputs = (y, *backward(x, dy, mean, rstd, scale))
        forward_ms = 1e3 * seconds_per_call(forward, x, shift, scale, repeats=args.repeats)
        backward_ms = 1e3 * seconds_per_call(backward, x, dy, mean, rstd, scale, repeats=args.repeats)
        print(f"{label}: forward {forward_ms:.3f} ms, backward {backward_ms:.3f} ms", flush=True)
        if reference is None:
            reference = outputs
            continue
        for name, a, b in zip(("y", "dx", "dshift", "dscale"), reference, outputs, strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            print(f"  {name}: largest difference {np.abs(a - b).max():.3g} (largest value {np.abs(a).max():.3g})")


if __name__ == "__main__":
    main()
