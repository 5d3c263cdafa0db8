"""Device cost of crossing a jitted call with the train state packed (`diffax.train.packing`), apart from the step.

    python benchmarks/pack_cost.py [--repeats 10] [--max_elements N]

For the train state of `configs/cifar10_ddpm.py` (bf16 compute), times a program that applies an elementwise update
(x <- 0.999 x + 0.001 for floats, x + 1 for integers) to every leaf `repeats` times, each repeat behind an
optimization barrier so that it runs as it would once per call:
  leaves:  the update on the state's arrays as they are;
  packed:  unpack (slices), the update, pack (one concatenation per dtype): what the packed train step adds;
  dus:     the same, writing each updated leaf into the incoming buffer (dynamic_update_slice) instead (its
           10-repeat program took XLA over 2 minutes to compile on an H100 machine).
Prints ms per repeat (the device's work, one launch per program) and ms per launch of a one-repeat program with
the state as it crosses the call (host work per array).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from configs import cifar10_ddpm
from diffax import parallel
from diffax.modes.bench import bench_experiment
from diffax.train.optimizer import make_optimizer
from diffax.train.packing import Packing
from diffax.train.state import abstract_state, create_train_state


def update(tree):
    return jax.tree.map(lambda x: x * 0.999 + 0.001 if jnp.issubdtype(x.dtype, jnp.floating) else x + 1, tree)


def pack_in_place(packing, tree, packed):
    """`packing.pack(tree)` written leaf by leaf into the buffers of `packed`."""
    leaves = packing.treedef.flatten_up_to(tree)
    buffers = []
    for buffer, members in zip(packed[0], packing.groups, strict=True):
        offset = 0
        for index, shape in members:
            buffer = jax.lax.dynamic_update_slice(buffer, jnp.ravel(leaves[index]), (offset,))
            offset += leaves[index].size
        buffers.append(buffer)
    return tuple(buffers), tuple(leaves[index] for index in packing.rest)


def repeated(fn, repeats: int):
    def run(x):
        for _ in range(repeats):
            x = jax.lax.optimization_barrier(fn(x))
        return x

    return jax.jit(run, donate_argnums=0)


def seconds(fn, x, calls: int) -> tuple[float, object]:
    x = jax.block_until_ready(fn(x))
    start = time.perf_counter()
    for _ in range(calls):
        x = fn(x)
    jax.block_until_ready(x)
    return (time.perf_counter() - start) / calls, x


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max_elements", type=int, default=65536)
    args = parser.parse_args()
    config = cifar10_ddpm.get_config("")
    config.model.compute_dtype = "bfloat16"
    experiment = bench_experiment(config)
    mesh = parallel.mesh_from_config(config.mesh)
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    abstract = abstract_state(experiment, optimizer, mesh, num_ema=1, fsdp=False, min_fsdp_size=0)
    packing = Packing.of(abstract, args.max_elements)
    state = create_train_state(experiment, optimizer, abstract, config.seed)
    print(f"{jax.devices()[0].device_kind}: {len(jax.tree.leaves(state))} arrays, packed {packing.num_arrays} "
          f"(max_elements {max_elements})")
    state = packing.packed(state)
    variants = {"leaves": update, "packed": lambda p: packing.pack(update(packing.unpack(p))),
                "dus": lambda p: pack_in_place(packing, update(packing.unpack(p)), p)}
    for name, fn in variants.items():
        x = packing.unpacked(state) if name == "leaves" else state
        many, x = seconds(repeated(fn, args.repeats), x, 10)
        one, x = seconds(repeated(fn, 1), x, 10)
        print(f"{name:7s} device {1e3 * many / args.repeats:.3f} ms per repeat; one-repeat call {1e3 * one:.3f} ms")
        state = packing.packed(x) if name == "leaves" else x


if __name__ == "__main__":
    main()
