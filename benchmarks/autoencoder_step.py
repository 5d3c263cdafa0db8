"""The autoencoder recipe's train step at full size on an accelerator: compile time, ms per step, images/s and peak
memory of configs/autoencoder_kl_f8.py (LDM's kl-f8: 83.7M-parameter autoencoder, PatchGAN, 256x256x3) on random
images, before and after the discriminator starts, for a few per-device batch sizes.

    python benchmarks/autoencoder_step.py [--batch 12 24 48] [--steps 5] [--perceptual none]

No data set is read (the images are uniform noise in [-1, 1]); the step is the one training runs (`StepRunner`,
one jitted step with both Adams), on all local devices (the batch is per device). Prints one JSON line per setting;
figures go to benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from diffax import parallel  # noqa: E402
from diffax.experiment import DataSpec, build_experiment  # noqa: E402
from diffax.train.optimizer import task_optimizer  # noqa: E402
from diffax.train.runner import StepRunner  # noqa: E402
from diffax.train.state import config_abstract_state, create_train_state  # noqa: E402


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(config, batch_per_device: int, steps: int, after_start: bool) -> dict:
    devices = jax.device_count()
    config.train.batch_size = batch_per_device * devices
    config.autoencoder.disc_start = 0 if after_start else 10**9
    experiment = build_experiment(config, DataSpec((256, 256, 3), None, True))
    mesh = parallel.mesh_from_config(config.mesh)
    optimizer = task_optimizer(config)
    abstract = config_abstract_state(experiment, optimizer, mesh)
    runner = StepRunner(experiment, optimizer, mesh, abstract)
    held = runner.hold(create_train_state(experiment, optimizer, abstract, config.seed))
    images = np.random.default_rng(0).uniform(-1, 1, (1, config.train.batch_size, 256, 256, 3)).astype(np.float32)
    batch = parallel.global_batch({"image": images, "label": np.zeros((1, config.train.batch_size), np.int32)},
                                  parallel.batch_sharding(mesh, leading_axes=1), example_axis=1)
    started = time.time()
    held, metrics = runner(held, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.time() - started
    started = time.time()
    for _ in range(steps):
        held, metrics = runner(held, batch)
    jax.block_until_ready(metrics)
    seconds = (time.time() - started) / steps
    loss = float(np.asarray(metrics["loss"])[0])
    return {"devices": devices, "batch_per_device": batch_per_device, "discriminator": after_start,
            "compile_s": round(compile_seconds, 1), "ms_per_step": round(1000 * seconds, 1),
            "images_per_s": round(config.train.batch_size / seconds, 1), "peak_gib": (_peak_bytes() or 0) / 2**30,
            "loss_finite": bool(np.isfinite(loss)), "compute_dtype": config.model.compute_dtype}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--perceptual", default=None, help="autoencoder.perceptual (default: the recipe's); 'none' "
                        "for the loss diffusers' peer has (benchmarks/autoencoder_peer.py)")
    args = parser.parse_args()
    from configs import autoencoder_kl_f8

    for batch in args.batch:
        for after_start in (False, True):
            config = autoencoder_kl_f8.get_config()
            if args.perceptual is not None:
                config.autoencoder.perceptual = args.perceptual
            print(json.dumps({"perceptual": config.autoencoder.perceptual,
                              **measure(config, batch, args.steps, after_start)}), flush=True)


if __name__ == "__main__":
    main()
