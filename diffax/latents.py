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

Encoding on the fly, not cached: each global batch is encoded where it lies, split over the mesh like the training
step (`LatentCodec.encode_global`), so every process encodes only its own examples and the data pipeline, its
random flips and its resumable position stay the image pipeline's. The cost measured against a cache is in
benchmarks/NOTES.md ("Latent data").

Sits beside `diffax.run` (it loads the autoencoder with `load_run`); experiments get the codec as
`Experiment.latents`, which the lower floors call only through its encode and decode functions.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import parallel
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


def _encoder(autoencoder: AutoencoderRun):
    """A jitted encode(params, images (..., H, W, C) global) -> posterior means (..., *latent_shape), computed
    where the images lie (sharded as they are over the mesh)."""
    model = autoencoder.experiment.model

    def encode(params, images):
        flat = images.reshape(-1, *images.shape[-3:])
        means = model.apply({"params": params}, flat, method="encode").mode()
        return means.reshape(*images.shape[:-3], *means.shape[1:])

    return jax.jit(encode)


@dataclasses.dataclass(frozen=True)
class LatentCodec:
    """Images in [-1, 1] <-> scaled latents through an autoencoder run: encode(x) = scale * mean(E(x)),
    decode(z) = D(z / scale)."""

    autoencoder: AutoencoderRun
    scale: float

    @functools.cached_property
    def _encode(self):
        return _encoder(self.autoencoder)

    def encode_global(self, images: jax.Array) -> jax.Array:
        """Global images (..., H, W, C) (a training or held-out batch, split over the mesh) -> their scaled latents,
        split the same way: every process encodes its own examples, on its devices."""
        return self.scale * self._encode(self.autoencoder.params()["autoencoder"], images)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, C) in [-1, 1], the same on every process -> scaled latents (N, *latent_shape), numpy."""
        return self.scale * self.autoencoder.encode(images, raw=True)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents (N, *latent_shape), numpy -> images (N, H, W, C) in [-1, 1] (the decoder's, unclipped)."""
        return self.autoencoder.decode(np.asarray(latents, np.float32) / self.scale, raw=True)


def latent_scale(config: ml_collections.ConfigDict, autoencoder: AutoencoderRun) -> float:
    """data.latent_scale if positive, else 1 / std of the unscaled latents of the first SCALE_EXAMPLES images of
    data.split in the training order (LDM's scale_by_std on its first batch), the same on every process."""
    if config.data.get("latent_scale", 0.0) > 0:
        return float(config.data.latent_scale)
    iterator = make_iterator(config, split=config.data.split, global_batch_size=SCALE_EXAMPLES, seed=config.seed,
                             train=False)
    images = parallel.global_batch({"image": next(iterator)["image"]}, parallel.batch_sharding(autoencoder.mesh))
    latents = _encoder(autoencoder)(autoencoder.params()["autoencoder"], images["image"])
    return float(1.0 / jnp.std(latents.astype(jnp.float32)))


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


def encode_batch(experiment: Experiment, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A global data batch (`diffax.parallel.global_batch`) with its images replaced by their scaled latents
    (latent runs; others unchanged)."""
    if experiment.latents is None:
        return batch
    return {**batch, "image": experiment.latents.encode_global(batch["image"])}
