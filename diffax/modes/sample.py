"""`--mode sample`: samples from a trained run with config.sample's settings.

Reads the run's own config (WORKDIR/run.json) with the command line's sample overrides. The checkpoint is
config.sample.step (default: the newest), the parameters the EMA of config.sample.ema_index (-1: raw), the classes
config.sample.labels (cycled; default 0, 1, ..., one class per grid column). Writes, for the settings that made
them,

    WORKDIR/samples/<step, 7 digits>_<method[-options]>_<steps>-<grid>_g<guidance>_<ema>_seed<seed>_n<count>[_labels-...]
        .png  a grid (or a scatter plot of 2-D points)
        .npz  `samples` (uint8 images (N, H, W, C), or float32 points (N, D)) and `labels` (N,) (-1: unconditional)

so runs with other settings never overwrite each other.
"""

from __future__ import annotations


import jax
import ml_collections
import numpy as np
from etils import epath

from diffax import console, generate
from diffax.evaluation import grid
from diffax.run import Run, load_run


def sample_file_stem(run: Run, settings: generate.SamplerSettings, count: int) -> str:
    """The file name (without extension) that records everything that made the samples."""
    sample_config = run.config.sample
    ema = "raw" if sample_config.ema_index == -1 else f"ema{run.config.train.ema_decays[sample_config.ema_index]:g}"
    name = f"{run.step:07d}_{settings.describe()}_{ema}_seed{sample_config.seed}_n{count}"
    if run.experiment.num_classes and len(sample_config.labels):
        name += "_labels-" + "-".join(str(label) for label in sample_config.labels)
    return name


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the samples; returns the path of the PNG (the .npz has the same stem)."""
    sample_config = config.sample
    trained = load_run(workdir, sample_config.step, config=config)
    settings = trained.sampler_settings()
    samples = trained.sample(sample_config.num_samples, labels=sample_config.labels or None,
                             seed=sample_config.seed, ema=sample_config.ema_index, raw=True)
    labels = generate.sample_labels(len(samples), trained.experiment.num_classes, sample_config.labels)
    path = str(epath.Path(workdir) / "samples" / sample_file_stem(trained, settings, len(samples)))
    if jax.process_index() == 0:
        is_image = trained.experiment.is_image
        grid.samples_png(samples, path + ".png", is_image, columns=trained.experiment.num_classes)
        with epath.Path(path + ".npz").open("wb") as file:
            np.savez(file, samples=generate.to_data_range(samples, is_image),
                     labels=np.full(len(samples), -1, np.int32) if labels is None else labels)
        console.info(f"wrote {len(samples)} samples to {path}.png and .npz")
    trained.close()
    return path + ".png"
