"""Latent diffusion (Rombach et al. 2022): a diffusion run on the latents of a trained autoencoder run.

    config.data.autoencoder = WORKDIR   a run of config.task = 'autoencoder' (configs/autoencoder_*.py), trained on
                                        images of the shape this config's data section reads

The diffusion network sees z = scale * E(x), where E(x) is the mean of the encoder's posterior (LDM samples from it;
with the KL weight 1e-6 its spread is a small fraction of the latents' and the mean makes the encoding a
deterministic function of the image) and `scale` is LDM's `scale_by_std`: 1 / std of the latents of the first
training batch(es), or data.latent_scale where set (Stable Diffusion's 0.18215). It is computed once, at the start
of training, and saved with the run (run.json's data_spec), so sampling never reads the data. Samples are decoded,
x = D(z / scale), in the one place every sampler call passes through (`diffax.generate.generate_samples`), so grids,
sample files, `Run.sample`, edits and sample-quality scores all see images.

Encoding on the fly, not cached: the images are encoded batch by batch as training reads them (`LatentCodec.encode`),
so the data pipeline, its random flips and its resumable position stay the image pipeline's. Measured on this
machine's CPU for configs/ldm_mnist.py:cpu (benchmarks/NOTES.md, "latent data"): see there for the share of a step
the encoder takes against what a cache read would cost.

Sits beside `diffax.run` (it loads the autoencoder with `load_run`); experiments get the codec as
`Experiment.latents`, which the lower floors use only through its two functions.
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np

from diffax.experiment import DataSpec, Experiment, build_experiment, data_spec, make_iterator
from diffax.run import AutoencoderRun, load_run

SCALE_EXAMPLES = 512  # Images whose latents give the std of scale_by_std (LDM: its first batch).


def autoencoder_workdir(config: ml_collections.ConfigDict) -> str:
    """config.data.autoencoder, or "" for a diffusion run on the data itself."""
    return config.data.get("autoencoder", "") or ""


@functools.lru_cache(maxsize=4)
def open_autoencoder(workdir: str) -> AutoencoderRun:
    """The autoencoder run in `workdir` (loaded once per process); errors name config.data.autoencoder."""
    try:
        run = load_run(workdir)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"config.data.autoencoder = {workdir!r}: {error}") from None
    if not isinstance(run, AutoencoderRun):
        raise ValueError(f"config.data.autoencoder = {workdir!r} holds a {run.config.get('task', 'diffusion')} run, "
                         f"not an autoencoder run (config.task = 'autoencoder')")
    return run


@dataclasses.dataclass(frozen=True)
class LatentCodec:
    """Images in [-1, 1] <-> scaled latents through an autoencoder run: encode(x) = scale * mean(E(x)),
    decode(z) = D(z / scale). Both take and return float32 numpy arrays (N, ...)."""

    autoencoder: AutoencoderRun
    scale: float

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) images in [-1, 1] -> (N, *latent_shape) scaled latents."""
        return self.scale * self.autoencoder.encode(images, raw=True)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(N, *latent_shape) scaled latents -> (N, H, W, C) images in [-1, 1] (the decoder's, unclipped)."""
        return self.autoencoder.decode(np.asarray(latents, np.float32) / self.scale, raw=True)


def latent_scale(config: ml_collections.ConfigDict, autoencoder: AutoencoderRun) -> float:
    """data.latent_scale if positive, else 1 / std of the unscaled latents of the first SCALE_EXAMPLES images of
    data.split in the training order (LDM's scale_by_std on its first batch)."""
    if config.data.get("latent_scale", 0.0) > 0:
        return float(config.data.latent_scale)
    images = next(make_iterator(config, split=config.data.split, global_batch_size=SCALE_EXAMPLES,
                                seed=config.seed, train=False))["image"]
    latents = autoencoder.encode(images, raw=True)
    return float(1.0 / np.std(latents.astype(np.float64)))


def latent_spec(config: ml_collections.ConfigDict) -> DataSpec:
    """The data spec of a latent run: the autoencoder's latent shape, the data's classes, the latent scale and the
    decoded images' shape. Reads the data (for the scale) and checks the images fit the autoencoder."""
    workdir = autoencoder_workdir(config)
    autoencoder = open_autoencoder(workdir)
    images = data_spec(config, latent=False)
    if tuple(images.example_shape) != tuple(autoencoder.experiment.example_shape):
        raise ValueError(f"config.data reads images of shape {images.example_shape}, but the autoencoder in "
                         f"config.data.autoencoder = {workdir!r} was trained on {autoencoder.experiment.example_shape}"
                         f" (match data.name, data.image_size and data.pad_to to its config)")
    return dataclasses.replace(images, example_shape=autoencoder.latent_shape,
                               latent_scale=latent_scale(config, autoencoder), image_shape=images.example_shape)


def with_latents(experiment: Experiment) -> Experiment:
    """The experiment with its `LatentCodec` attached, for a config with data.autoencoder (else unchanged)."""
    workdir = autoencoder_workdir(experiment.config)
    if not workdir:
        return experiment
    return dataclasses.replace(experiment,
                               latents=LatentCodec(open_autoencoder(workdir), experiment.spec.latent_scale))


def build_latent_experiment(config: ml_collections.ConfigDict, spec: DataSpec | None = None) -> Experiment:
    """`build_experiment` for any diffusion config, with the latent spec (computed when `spec` is None) and codec
    of a latent one."""
    if autoencoder_workdir(config) and spec is None:
        spec = latent_spec(config)
    return with_latents(build_experiment(config, spec))


def encode_batch(experiment: Experiment, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A data batch with its images replaced by their scaled latents (latent runs; others unchanged)."""
    if experiment.latents is None:
        return batch
    return {**batch, "image": experiment.latents.encode(batch["image"])}

