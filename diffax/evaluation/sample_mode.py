"""`--mode sample`: samples from the newest checkpoint with the config's sampler, steps and guidance scale.

Writes WORKDIR/samples/sample_<step>_<method>_<steps>_g<scale>.png (a grid, or a scatter plot for 2-D data) and
the .npz beside it with `samples` (N, *example) and `labels` (N,) (-1 for unconditional models).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from diffax.evaluation import generate, grid
from diffax.train.loop import load_checkpoint, sampling_params


def run_sample(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Returns the path of the PNG (without extension the .npz has the same name)."""
    experiment, mesh, state = load_checkpoint(config, workdir)
    step = int(jax.device_get(state.step))
    sample_config = config.sample
    samples = generate.generate_samples(experiment, sampling_params(state, sample_config.ema_index), sample_config,
                                        mesh, seed=config.seed)
    labels = generate.sample_labels(len(samples), experiment.num_classes)
    name = (f"sample_{step:07d}_{sample_config.method}_{sample_config.num_steps}"
            f"_g{sample_config.guidance_scale:g}")
    path = os.path.join(workdir, "samples", name)
    if jax.process_index() == 0:
        grid.samples_png(samples, path + ".png", experiment.is_image, columns=experiment.num_classes)
        np.savez(path + ".npz", samples=samples,
                 labels=np.full(len(samples), -1, np.int32) if labels is None else labels)
        logging.info("wrote %d samples to %s.png and .npz", len(samples), path)
    return path + ".png"
