"""`--mode bench`: speed of the config's train step, denoiser and sampler on synthetic data of the config's shapes.

Reports (to the log, stdout and WORKDIR/bench.json):
  train:    compile time, ms per optimizer step, examples/s, peak device memory, model-FLOPs utilization
                MFU = 3 * forward FLOPs per example * examples/s / (devices * peak FLOP/s per device)
            (a training step costs about 3 forward passes: the forward, and the backward's two products per layer),
            the host's time to launch one call (train.steps_per_dispatch steps) onto idle devices (wall time until
            the call returns, median of 5) and the number of arrays the call takes and returns as the train state:
            the host limits the rate where launching a call takes about as long as running it;
  denoiser: ms per call of the sampler's denoiser on a batch of sample.batch_size, and examples/s;
  sampler:  ms per step of a `bench.sample_steps`-step run of sample.method, and its ratio to one denoiser call
            (1 + the sampler's own overhead for one-evaluation solvers such as DDIM); end to end: examples/s of that
            run from the noise (drawn on the device) to uint8 images on the host, as the sample mode makes them;
  accuracy: |loss - loss_f32| / loss_f32 and the relative L2 error of the network output of the config's compute
            dtype against float32, on a fixed batch, noise and time draw, with the parameters after the timed steps
            plus N(0, 0.01^2) so that zero-initialized output layers are live.
`bench.train_only` keeps only the train figures, which are all a classifier or autoencoder run has (MFU counts the
autoencoder's encode and decode as its forward, not the discriminator's passes). `bench.example_shape` ("H,W,C")
replaces the data set's example shape, e.g. 32,32,4 for latent-space networks.
Peak FLOP/s is `bench.peak_flops`, else the dense bf16 figure of known accelerators; MFU is omitted on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from diffax import generate, parallel
from diffax.experiment import Experiment, build_experiment, parse_shape
from diffax.nets import forward_flops_per_example
from diffax.train.optimizer import task_optimizer
from diffax.train.runner import StepRunner
from diffax.train.state import config_abstract_state, create_train_state
from diffax.train.step import make_loss_fn

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


def bench_experiment(config: ml_collections.ConfigDict) -> Experiment:
    experiment = build_experiment(config, require_data=False)
    shape = parse_shape(config.bench.example_shape, "bench.example_shape")
    return experiment.with_example_shape(shape) if shape else experiment


def _synthetic_batches(experiment: Experiment, batch_size: int, steps: int, mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    local = batch_size // jax.process_count()
    batch = {"image": rng.standard_normal((steps, local, *experiment.example_shape), np.float32),
             "label": rng.integers(0, experiment.num_classes or 1, (steps, local), np.int32)}
    return parallel.global_batch(batch, parallel.batch_sharding(mesh, leading_axes=1), example_axis=1)


def seconds_per_call(fn, *args, repeats: int) -> float:
    """Mean wall time of `repeats` back-to-back calls (dispatched asynchronously, one sync at the end)."""
    jax.block_until_ready(fn(*args))  # Warm-up.
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def _compile(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return time.perf_counter() - start, compiled


def prepare_train(experiment: Experiment, mesh, batch_size: int):
    """(compile seconds, compiled runner call, fresh state in the runner's form, synthetic batches, the runner)
    for timing or profiling."""
    config = experiment.config
    optimizer = task_optimizer(config)
    abstract = config_abstract_state(experiment, optimizer, mesh)
    runner = StepRunner(experiment, optimizer, mesh, abstract)
    held = runner.hold(create_train_state(experiment, optimizer, abstract, config.seed))
    batches = _synthetic_batches(experiment, batch_size, runner.steps_per_call, mesh)
    compile_seconds, compiled = _compile(runner, held, batches)
    return compile_seconds, compiled, held, batches, runner


def bench_train(experiment: Experiment, mesh, batch_size: int) -> tuple[dict, object]:
    config = experiment.config
    compile_seconds, train_step, held, batches, runner = prepare_train(experiment, mesh, batch_size)
    held, _ = jax.block_until_ready(train_step(held, batches))  # Warm-up.
    start = time.perf_counter()
    for _ in range(config.bench.steps):
        held, _ = train_step(held, batches)
    jax.block_until_ready(held)
    step_seconds = (time.perf_counter() - start) / (config.bench.steps * runner.steps_per_call)
    launch_seconds = []
    for _ in range(5):  # Host time to launch one call onto idle devices.
        launch_start = time.perf_counter()
        held, _ = train_step(held, batches)
        launch_seconds.append(time.perf_counter() - launch_start)
        jax.block_until_ready(held)
    results = {"train_compile_seconds": compile_seconds, "train_step_ms": 1e3 * step_seconds,
               "train_examples_per_second": batch_size / step_seconds,
               "train_launch_ms": 1e3 * float(np.median(launch_seconds)),
               "train_state_arrays": len(jax.tree.leaves(held))}
    return results, runner.state(held).params


def sampler_settings(config: ml_collections.ConfigDict) -> generate.SamplerSettings:
    return generate.SamplerSettings.from_config(config.sample, num_steps=config.bench.sample_steps)


def prepare_denoiser(experiment: Experiment, mesh, params) -> tuple[object, tuple]:
    """(the compiled denoiser the sampler calls, its arguments at sample.batch_size) for timing or profiling."""
    settings = sampler_settings(experiment.config)
    batch_size = experiment.config.sample.batch_size
    cond = generate.null_conditions(experiment, batch_size)  # The shapes, and so the cost, of real ones.
    sharding = parallel.batch_sharding(mesh)
    x = jax.device_put(np.random.default_rng(1).standard_normal((batch_size, *experiment.example_shape),
                                                                np.float32), sharding)
    t = jax.device_put(np.full((batch_size,), 0.5, np.float32), sharding)

    @jax.jit
    def denoise(params, x, t, cond):
        return generate.make_denoiser(experiment, params, cond, settings.guidance_scale,
                                      settings.clip_denoised)(x, t)

    args = (jax.jit(functools.partial(generate.sampler_params, experiment))(params), x, t, cond)
    return _compile(denoise, *args)[1], args


def bench_sampling(experiment: Experiment, mesh, params) -> dict:
    settings = sampler_settings(experiment.config)
    batch_size = experiment.config.sample.batch_size
    cond = generate.null_conditions(experiment, batch_size)
    denoise, args = prepare_denoiser(experiment, mesh, params)
    denoise_seconds = seconds_per_call(denoise, *args, repeats=experiment.config.bench.steps)
    generator = generate.make_generator(experiment, settings, mesh, batch_size)
    indices = np.arange(batch_size, dtype=np.int32)
    compile_seconds, sampler = _compile(generator, params, jnp.uint32(0), indices, cond, {})
    sample_seconds = seconds_per_call(sampler, params, jnp.uint32(0), indices, cond, {}, repeats=1)
    sampler_step_seconds = sample_seconds / settings.num_steps

    def end_to_end():  # Noise drawn on the device to the data range (uint8 images) on the host.
        samples = np.asarray(parallel.to_host(sampler(params, jnp.uint32(0), indices, cond, {})))
        return generate.to_data_range(samples, experiment.is_image)

    end_to_end_seconds = seconds_per_call(end_to_end, repeats=2)
    return {"sample_batch_size": batch_size, "denoiser_ms": 1e3 * denoise_seconds,
            "denoiser_examples_per_second": batch_size / denoise_seconds,
            "sampler_compile_seconds": compile_seconds, "sampler_step_ms": 1e3 * sampler_step_seconds,
            "sampler_step_over_denoiser": sampler_step_seconds / denoise_seconds,
            "sample_end_to_end_examples_per_second": batch_size / end_to_end_seconds}


def bench_accuracy(experiment: Experiment, mesh, params, batch_size: int) -> dict:
    """Loss and network output of the compute dtype against float32 (see the module docstring)."""
    reference = dataclasses.replace(experiment, model=experiment.model.clone(dtype=jnp.float32))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = treedef.unflatten([p + 0.01 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    batch = jax.tree.map(lambda x: x[0], _synthetic_batches(experiment, batch_size, 1, mesh))
    t = jnp.full((batch_size,), 0.5)
    cond = batch["label"] if experiment.num_classes else None

    @jax.jit
    def evaluate(params, batch):
        key = jax.random.PRNGKey(3)
        losses = [make_loss_fn(e)(params, batch, key, train=False)[0] for e in (experiment, reference)]
        x_t = batch["image"] * 0.6 + 0.8 * jax.random.normal(key, batch["image"].shape)
        outputs = [e.net_fn(params, train=False)(x_t, t, cond).astype(jnp.float32) for e in (experiment, reference)]
        output_error = jnp.linalg.norm(outputs[0] - outputs[1]) / jnp.linalg.norm(outputs[1])
        return losses[0], losses[1], output_error

    loss, loss_f32, output_error = (float(v) for v in evaluate(params, batch))
    return {"loss": loss, "loss_float32": loss_f32, "loss_relative_error": abs(loss - loss_f32) / loss_f32,
            "output_relative_error": output_error}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float | None]:
    """Benchmarks the config (a trained run's own config on its workdir); writes WORKDIR/bench.json."""
    experiment = bench_experiment(config)
    mesh = parallel.mesh_from_config(config.mesh)
    batch_size = config.bench.batch_size or config.train.batch_size
    parallel.check_batch_size(batch_size, mesh.devices.size, config.train.grad_accum_steps)
    train_results, params = bench_train(experiment, mesh, batch_size)
    logging.info("bench train: %s", json.dumps(train_results))
    examples_per_second = train_results["train_examples_per_second"]
    train_peak_memory = peak_memory_bytes()
    sampling_results, accuracy_results = {}, {}
    diffusion = experiment.task == "diffusion"
    if diffusion and not config.bench.train_only:
        sampling_results = bench_sampling(experiment, mesh, params)
        accuracy_results = bench_accuracy(experiment, mesh, params, batch_size)

    cond = jax.ShapeDtypeStruct((1,), jnp.int32) if experiment.num_classes and diffusion else None
    flops = forward_flops_per_example(experiment.model, experiment.example_shape, cond, noise_conditioned=diffusion)
    peak = peak_flops_per_device(config)
    results = {
        "device_kind": jax.devices()[0].device_kind, "devices": mesh.devices.size, "batch_size": batch_size,
        "model": config.model.name, "compute_dtype": config.model.compute_dtype,
        "example_shape": list(experiment.example_shape), "fsdp": config.mesh.fsdp,
        **train_results, "train_peak_memory_bytes": train_peak_memory,
        "forward_gflops_per_example": flops / 1e9,
        "mfu": 3 * flops * examples_per_second / (mesh.devices.size * peak) if peak else None,
        **sampling_results, **accuracy_results,
    }
    logging.info("bench: %s", json.dumps(results))
    if jax.process_index() == 0:
        print(json.dumps(results), flush=True)
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "bench.json").write_text(json.dumps(results, indent=1))
    return results
