"""Latent data: encoding each batch on the fly against reading latents cached once, per training step.

    python benchmarks/latent_data.py --config configs/ldm_mnist.py:cpu --config.data.autoencoder=/tmp/ae_mnist_cpu
    python benchmarks/latent_data.py --config configs/ldm_imagenet256.py \
        --config.data.autoencoder=gs://BUCKET/ae_kl_f4 --steps 20                       # on a GPU / TPU host

Times, per training step of the config (train.batch_size, its mesh), means over --steps after a warm-up:
  read_images    the image pipeline's next batch (`make_iterator`, as training reads it)
  encode         the autoencoder's encoder on that global batch (`LatentCodec.encode_global`, what training runs)
  read_latents   the next batch of an in-memory array pipeline of latents (`make_array_dataset`): a lower bound of
                 reading a latent cache (ArrayRecord files would add decoding and I/O)
  train_step     the diffusion step on latents (`diffax.modes.bench.bench_train`)
On the fly costs read_images + encode + train_step, cached read_latents + train_step (once the cache is written:
one encoder pass over the data). Input reading overlaps the step when it runs ahead in threads or workers, so the
encoder's share of the step is what decides. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from diffax import parallel
from diffax.data import make_array_dataset
from diffax.experiment import make_iterator
from diffax.latents import build_latent_experiment
from diffax.modes.bench import bench_train

_CONFIG = config_flags.DEFINE_config_file("config", None, "An LDM config file[:variant].")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps of each part.")


def mean_seconds(fn, steps: int) -> float:
    jax.block_until_ready(fn())  # Warm-up (compiles).
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def main(argv) -> None:
    del argv
    config, steps = _CONFIG.value, _STEPS.value
    experiment = build_latent_experiment(config)
    mesh = parallel.mesh_from_config(config.mesh)
    batch_size = config.train.batch_size
    sharding = parallel.batch_sharding(mesh)
    images = make_iterator(config, split=config.data.split, global_batch_size=batch_size, seed=config.seed)
    batch = parallel.global_batch({"image": next(images)["image"]}, sharding)["image"]
    read_images = mean_seconds(lambda: next(images)["image"], steps)
    encode = mean_seconds(lambda: experiment.latents.encode_global(batch), steps)
    latents = np.concatenate([np.asarray(parallel.to_host(experiment.latents.encode_global(batch)))] * 8)
    cached = make_array_dataset(latents, global_batch_size=batch_size, seed=config.seed)
    read_latents = mean_seconds(lambda: next(cached)["image"], steps)
    config.bench.steps = steps
    train = bench_train(experiment, mesh, batch_size)[0]["train_step_ms"] / 1e3
    record = {"config": sys.argv[1:], "backend": jax.default_backend(), "devices": jax.device_count(),
              "batch_size": batch_size, "latent_shape": list(experiment.example_shape),
              "read_images_ms": 1e3 * read_images, "encode_ms": 1e3 * encode, "read_latents_ms": 1e3 * read_latents,
              "train_step_ms": 1e3 * train,
              "on_the_fly_step_ms": 1e3 * (read_images + encode + train),
              "cached_step_ms": 1e3 * (read_latents + train)}
    print(json.dumps(record))


if __name__ == "__main__":
    app.run(main)
