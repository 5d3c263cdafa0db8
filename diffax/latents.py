"""Latent diffusion (Rombach et al. 2022): a diffusion run on the latents of a trained autoencoder run.

    config.data.autoencoder = WORKDIR   a run of config.task = 'autoencoder' (configs/autoencoder_*.py), trained on
                                        images of the shape this config's data section reads

The diffusion network sees z = scale * E(x), where E(x) is the mean of the encoder's posterior (LDM samples from it;
with the KL weight 1e-6 its spread is about a tenth of the latents' (configs/autoencoder_mnist.py:cpu at step 600:
rms 0.15 against a std of 1.45), and the mean makes the encoding a deterministic function of the image, which a
cache needs) and `scale` is LDM's `scale_by_std`: 1 / std of the latents of the first
training batch(es), or data.latent_scale where set (Stable Diffusion's 0.18215). It is computed once, at the start
of training, and saved with the run (run.json's data_spec) beside the autoencoder's checkpoint step, so sampling
never reads the data and decodes with the autoencoder that encoded, even if that run trained on. Samples are decoded,
x = D(z / scale), in the one place every sampler call passes through (`diffax.generate.generate_samples`), so grids,
sample files, `Run.sample`, edits and sample-quality scores all see images.

Where the latents come from (measured on ldm_mnist:cpu, benchmarks/NOTES.md "Latent data": the encoder took 52 ms
of a 241 ms step): with data.latent_cache the whole of data.split is encoded once at the start of training and
kept in host memory (`cache_latents`), as configs/ldm_mnist.py does (4,500 latents of 8x8x4: 4.6 MB; a step takes
27% less time). Otherwise each global batch is encoded on the fly where it lies, split over the mesh like the
training step (`LatentCodec.encode_global`), so every process encodes only its own examples and the data pipeline,
its random flips and its resumable position stay the image pipeline's: the choice for data sets whose latents do
not fit in memory (ImageNet at f = 4: 63 GB of float32), which an ArrayRecord cache of latents would serve (not
built).

Sits beside `diffax.run` (it loads the autoencoder with `load_run`); experiments get the codec as
`Experiment.latents`, which the lower floors call only through its encode and decode functions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import data as data_lib
from diffax import parallel
from diffax.experiment import DataSpec, Experiment, build_experiment, data_spec, make_iterator
from diffax.run import AutoencoderRun, load_run

SCALE_EXAMPLES = 512  # Images whose latents give the std of scale_by_std (LDM: its first batch).


def autoencoder_workdir(config: ml_collections.ConfigDict) -> str:
    """config.data.autoencoder, or "" for a diffusion run on the data itself."""
    return config.data.get("autoencoder", "") or ""


@functools.lru_cache(maxsize=4)
def open_autoencoder(workdir: str, step: int | None = None) -> AutoencoderRun:
    """The autoencoder run in `workdir` at checkpoint `step` (None: the newest), loaded once per process; errors
    name config.data.autoencoder."""
    try:
        run = load_run(workdir, step)
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
                               latent_scale=latent_scale(config, autoencoder), image_shape=images.example_shape,
                               autoencoder_step=autoencoder.step)


def with_latents(experiment: Experiment) -> Experiment:
    """The experiment with its `LatentCodec` attached, for a config with data.autoencoder (else unchanged)."""
    workdir = autoencoder_workdir(experiment.config)
    if not workdir:
        return experiment
    spec = experiment.spec
    return dataclasses.replace(experiment,
                               latents=LatentCodec(open_autoencoder(workdir, spec.autoencoder_step), spec.latent_scale))


def build_latent_experiment(config: ml_collections.ConfigDict, spec: DataSpec | None = None) -> Experiment:
    """`build_experiment` for any diffusion config, with the latent spec (computed when `spec` is None) and codec
    of a latent one."""
    if autoencoder_workdir(config) and spec is None:
        spec = latent_spec(config)
    return with_latents(build_experiment(config, spec))


def _divisor_at_most(count: int, top: int, multiple_of: int) -> int:
    """The largest batch <= top, a multiple of `multiple_of`, that divides `count` (else `multiple_of`)."""
    return next((size for size in range(min(top, count), 0, -1) if count % size == 0 and size % multiple_of == 0),
                multiple_of)


def cache_latents(experiment: Experiment) -> dict[str, np.ndarray]:
    """{"image": scaled latents (N, *latent_shape), "label": (N,)} of every example of data.split, on every
    process: the split read once in global batches that divide it, encoded over the mesh, gathered."""
    config = experiment.config
    count = data_lib.dataset_spec(config.data.name, split=config.data.split, data_dir=config.data.data_dir,
                                  image_size=config.data.image_size, pad_to=config.data.get("pad_to")).num_examples
    mesh = experiment.latents.autoencoder.mesh
    batch_size = _divisor_at_most(count, config.eval.batch_size, mesh.devices.size)
    sharding = parallel.batch_sharding(mesh)
    parts = []
    for local in make_iterator(config, split=config.data.split, global_batch_size=batch_size, seed=config.seed,
                               num_epochs=1, train=False):
        batch = encode_batch(experiment, parallel.global_batch({"image": local["image"], "label": local["label"]},
                                                                sharding))
        parts.append(parallel.to_host(batch))
    return {key: np.concatenate([part[key] for part in parts]) for key in ("image", "label")}


def training_data(experiment: Experiment, *, global_batch_size: int, seed: int
                  ) -> tuple[data_lib.DataIterator, Callable[[dict[str, jax.Array]], dict[str, jax.Array]]]:
    """(this process's iterator over data.split, what makes the global batches built from it the network's
    inputs): with data.latent_cache the split's latents encoded once (`cache_latents`) and nothing more to do;
    else the data and `encode_batch` (the identity unless latent)."""
    config = experiment.config
    if experiment.latents is None or not config.data.get("latent_cache", False):
        iterator = make_iterator(config, split=config.data.split, global_batch_size=global_batch_size, seed=seed)
        return iterator, functools.partial(encode_batch, experiment)
    cached = cache_latents(experiment)
    iterator = data_lib.make_array_dataset(cached["image"], cached["label"], global_batch_size=global_batch_size,
                                           seed=seed)
    return iterator, lambda batch: batch


def encode_batch(experiment: Experiment, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A global data batch (`diffax.parallel.global_batch`) with its images replaced by their scaled latents
    (latent runs; others unchanged)."""
    if experiment.latents is None:
        return batch
    return {**batch, "image": experiment.latents.encode_global(batch["image"])}
