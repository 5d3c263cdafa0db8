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


def make_generator(experiment: Experiment, sample_config: ml_collections.ConfigDict, mesh: Mesh, batch_size: int):
    """A jitted generate(params, seed, labels) -> (batch_size, *example) samples, replicated on the mesh.

    labels: (batch_size,) int32 for class-conditional networks (guided with sample_config.guidance_scale), else None.
    Noise and solver randomness come from PRNGKey(seed).
    """
    grid = time_grid(experiment.schedule, sample_config.num_steps, sample_config.grid, t_end=sample_config.t_end)
    options = sample_config.options.to_dict()

    def generate(params: Any, seed: jax.Array, labels: jax.Array | None) -> jax.Array:
        noise_key, solver_key = jax.random.split(jax.random.PRNGKey(seed))
        x0_fn = experiment.x0_fn(params)
        if labels is not None:
            null = jnp.full_like(labels, experiment.num_classes)
            x0_fn = classifier_free_guidance(x0_fn, labels, null, sample_config.guidance_scale, experiment.schedule)
        noise = jax.random.normal(noise_key, (batch_size, *experiment.example_shape))
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

