"""Samples from trained parameters with the config's sampler, time grid and classifier-free guidance scale."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from diffax import parallel
from diffax.sampling import classifier_free_guidance, sample
from diffax.schedules import time_grid
from diffax.train.setup import Experiment


def sample_labels(num_samples: int, num_classes: int | None) -> np.ndarray | None:
    """Labels 0, 1, ..., num_classes - 1, 0, 1, ... (a grid with num_classes columns shows one class per column)."""
    return None if not num_classes else np.arange(num_samples, dtype=np.int32) % num_classes


def make_denoiser(experiment: Experiment, params: Any, labels: jax.Array | None,
                  sample_config: ml_collections.ConfigDict):
    """The sampler's denoiser x0_fn(x_t, t): conditioned on `labels` (B,), guided with sample_config.guidance_scale,
    and clipped to the data range [-1, 1] when sample_config.clip_denoised (as DDPM's and ADM's samplers do).

    At scale 1 the guided denoiser equals the conditional one, so the unconditional half-batch is skipped.
    """
    denoise = experiment.x0_fn(params)
    if labels is None:
        x0_fn = denoise
    elif sample_config.guidance_scale == 1.0:
        def x0_fn(x, t):
            return denoise(x, t, labels)
    else:
        null = jnp.full_like(labels, experiment.num_classes)
        x0_fn = classifier_free_guidance(denoise, labels, null, sample_config.guidance_scale, experiment.schedule)
    if sample_config.clip_denoised:
        return lambda x, t: jnp.clip(x0_fn(x, t), -1.0, 1.0)
    return x0_fn


def make_generator(experiment: Experiment, sample_config: ml_collections.ConfigDict, mesh: Mesh, batch_size: int):
    """A jitted generate(params, seed, labels) -> (batch_size, *example) samples, replicated on the mesh.

    labels: (batch_size,) int32 for class-conditional networks (guided with sample_config.guidance_scale), else None.
    Noise and solver randomness come from PRNGKey(seed); the examples are split over the mesh's devices when
    batch_size is a multiple of their count.
    """
    grid = time_grid(experiment.schedule, sample_config.num_steps, sample_config.grid, t_end=sample_config.t_end)
    options = sample_config.options.to_dict()

    def generate(params: Any, seed: jax.Array, labels: jax.Array | None) -> jax.Array:
        noise_key, solver_key = jax.random.split(jax.random.PRNGKey(seed))
        x0_fn = make_denoiser(experiment, params, labels, sample_config)
        noise = jax.random.normal(noise_key, (batch_size, *experiment.example_shape))
        if batch_size % mesh.devices.size == 0:  # Split the examples over the devices (else replicated work).
            noise = jax.lax.with_sharding_constraint(noise, parallel.batch_sharding(mesh))
        return sample(x0_fn, experiment.schedule, noise, grid, sample_config.method, solver_key, **options)

    return jax.jit(generate, out_shardings=parallel.replicated(mesh))


def generate_samples(experiment: Experiment, params: Any, sample_config: ml_collections.ConfigDict, mesh: Mesh,
                     seed: int) -> np.ndarray:
    """sample_config.num_samples samples (N, *example) as numpy, in calls of sample_config.batch_size."""
    batch_size = min(sample_config.batch_size, sample_config.num_samples)
    generate = make_generator(experiment, sample_config, mesh, batch_size)
    labels = sample_labels(sample_config.num_samples, experiment.num_classes)
    chunks = []
    for start in range(0, sample_config.num_samples, batch_size):
        chunk_labels = None
        if labels is not None:
            chunk_labels = np.resize(labels[start:start + batch_size], batch_size)
        samples = generate(params, jnp.uint32(seed + start), chunk_labels)
        chunks.append(np.asarray(parallel.to_host(samples)))
    return np.concatenate(chunks)[:sample_config.num_samples]

