"""`--mode bench`: speed of the config's train step and sampler on synthetic data of the config's shapes.

Reports (to the log and WORKDIR/bench.json): compile time, examples/s and ms per optimizer step, sampler ms per
step, peak device memory (where `device.memory_stats()` reports it), and model-FLOPs utilization

    MFU = 3 * forward FLOPs per example * examples/s / (devices * peak FLOP/s per device)

(a training step costs about 3 forward passes: forward, and the backward's two matrix products per layer).
Peak FLOP/s is `bench.peak_flops`, else the dense bf16 figure of known accelerators; MFU is omitted on CPU.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffax import parallel
from diffax.evaluation import generate
from diffax.nets import forward_flops_per_example
from diffax.train import setup
from diffax.train.loop import build_mesh
from diffax.train.optimizer import make_optimizer
from diffax.train.state import create_train_state, state_shardings
from diffax.train.step import make_train_step

# Dense bf16 peak FLOP/s per device, by substring of `device.device_kind` (vendor data sheets).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6": 918e12}


def peak_flops_per_device(config: ml_collections.ConfigDict) -> float | None:
    if config.bench.peak_flops:
        return config.bench.peak_flops
    kind = jax.devices()[0].device_kind
    return next((flops for name, flops in PEAK_FLOPS.items() if name.lower() in kind.lower()), None)


def peak_memory_bytes() -> int | None:
    """Max over local devices of the peak bytes in use, or None where the backend does not report it."""
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()]
    peaks = [peak for peak in peaks if peak is not None]
    return max(peaks) if peaks else None


def _synthetic_batches(experiment: setup.Experiment, batch_size: int, steps: int, mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    local = batch_size // jax.process_count()
    batch = {"image": rng.standard_normal((steps, local, *experiment.example_shape), np.float32),
             "label": rng.integers(0, experiment.num_classes or 1, (steps, local), np.int32)}
    return parallel.global_batch(batch, parallel.batch_sharding(mesh, leading_axes=1), example_axis=1)


def _timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def run_bench(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float | None]:
    experiment = setup.build_experiment(config, require_data=False)
    mesh = build_mesh(config)
    batch_size = config.bench.batch_size or config.train.batch_size
    parallel.check_batch_size(batch_size, mesh.devices.size, config.train.grad_accum_steps)
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    num_ema = len(config.train.ema_decays)
    _, shardings = state_shardings(experiment, optimizer, mesh, num_ema=num_ema, fsdp=config.mesh.fsdp > 1,
                                   min_fsdp_size=config.mesh.min_fsdp_size)
    state = create_train_state(experiment, optimizer, shardings, config.seed, num_ema)
    per_dispatch = config.train.steps_per_dispatch
    batches = _synthetic_batches(experiment, batch_size, per_dispatch, mesh)
    train_step = make_train_step(experiment, optimizer, mesh, shardings)

    start = time.perf_counter()
    compiled = train_step.lower(state, batches).compile()
    compile_seconds = time.perf_counter() - start
    state, _ = jax.block_until_ready(compiled(state, batches))  # Warm-up.
    seconds, (state, _) = _timed(lambda s: _repeat(compiled, s, batches, config.bench.steps), state)
    step_seconds = seconds / (config.bench.steps * per_dispatch)

    sample_config = ml_collections.ConfigDict(config.sample.to_dict())
    sample_config.num_steps = config.bench.sample_steps
    generator = generate.make_generator(experiment, sample_config, mesh, sample_config.batch_size)
    labels = generate.sample_labels(sample_config.batch_size, experiment.num_classes)
    start = time.perf_counter()
    sampler = generator.lower(state.params, jnp.uint32(0), labels).compile()
    sampler_compile_seconds = time.perf_counter() - start
    jax.block_until_ready(sampler(state.params, jnp.uint32(0), labels))
    sample_seconds, _ = _timed(sampler, state.params, jnp.uint32(1), labels)

    cond = jax.ShapeDtypeStruct((1,), jnp.int32) if experiment.num_classes else None
    flops = forward_flops_per_example(experiment.model, experiment.example_shape, cond)
    examples_per_second = batch_size / step_seconds
    peak = peak_flops_per_device(config)
    results = {
        "device_kind": jax.devices()[0].device_kind, "devices": mesh.devices.size, "batch_size": batch_size,
        "train_compile_seconds": compile_seconds, "train_step_ms": 1e3 * step_seconds,
        "train_examples_per_second": examples_per_second,
        "sampler_compile_seconds": sampler_compile_seconds, "sample_batch_size": sample_config.batch_size,
        "sampler_step_ms": 1e3 * sample_seconds / sample_config.num_steps,
        "forward_gflops_per_example": flops / 1e9, "peak_memory_bytes": peak_memory_bytes(),
        "mfu": 3 * flops * examples_per_second / (mesh.devices.size * peak) if peak else None,
    }
    logging.info("bench: %s", json.dumps(results))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "bench.json"), "w") as file:
            json.dump(results, file, indent=1)
    return results


def _repeat(step_fn, state, batches, count: int):
    for _ in range(count):
        state, metrics = step_fn(state, batches)
    return state, metrics
