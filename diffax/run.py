"""A trained run as an object: load it anywhere (a notebook, a script, another machine) from its workdir.

    run = diffax.load_run("/tmp/diffax_digits")          # the newest checkpoint; step=... picks another
    run.config                                            # the config the run trained with (WORKDIR/run.json)
    images = run.sample(16, labels=[3] * 16, method="heun", steps=18, grid="karras", guidance=2.0, seed=0)
    images.shape, images.dtype                            # (16, 8, 8, 1) uint8
    x0_fn = run.denoiser(labels=jnp.full((4,), 3))        # x0_fn(x_t (4, 8, 8, 1), t (4,)) -> x0_hat, in [-1, 1]

    classifier = diffax.load_run("/tmp/cls_digits")          # a classifier run (configs/classifier_digits.py)
    classifier.predict(images), classifier.features(images)  # (16,) labels, (16, 128) penultimate features

    autoencoder = diffax.load_run("/tmp/ae_mnist_cpu")       # an autoencoder run (configs/autoencoder_mnist.py)
    latents = autoencoder.encode(images)                     # (N, 8, 8, 4) float32 posterior means
    autoencoder.decode(latents), autoencoder.latent_shape    # uint8 (N, 32, 32, 1); (8, 8, 4)

`sample` returns images as uint8 (N, H, W, C) in 0..255, and other data (2-D points) as float32 in the data's own
units. Sample i of a seed is the same whatever `batch_size` and device count (`diffax.generate`). Only the chosen
parameter set is read from the checkpoint, never the optimizer state, and the data set is never opened.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import PIL.Image

from diffax import generate, parallel
from diffax.checkpoint import Checkpointer
from diffax.experiment import Experiment, build_experiment
from diffax.run_config import differing_run_keys, read_run_file
from diffax.sampling import editing
from diffax.train.optimizer import task_optimizer
from diffax.train.state import config_abstract_state


class TrainedRun:
    """A trained run of either task: its config, experiment (network, schedule, data spec), checkpoint step and
    parameters."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, experiment: Experiment,
                 checkpointer: Checkpointer, step: int, mesh: jax.sharding.Mesh):
        self.workdir, self.config, self.experiment, self.step, self.mesh = workdir, config, experiment, step, mesh
        self._checkpointer = checkpointer
        self._params: dict[int, Any] = {}

    @functools.cached_property
    def _abstract(self):
        return config_abstract_state(self.experiment, task_optimizer(self.config), self.mesh)

    def _ema_index(self, ema: bool | int) -> int:
        """-1 for the raw parameters, else an index into config.train.ema_decays (True: the first)."""
        if ema is True:
            return 0
        if ema is False:
            return -1
        decays = tuple(self.config.train.ema_decays)
        if not -1 <= ema < len(decays):
            raise ValueError(f"ema = {ema}: expected True, False, -1 or an index into the run's ema_decays {decays}")
        return ema

    def params(self, ema: bool | int = True) -> Any:
        """The parameters: EMA (True: the first of train.ema_decays; an int picks one) or raw (False or -1).
        Read from the checkpoint on first use, placed replicated (or FSDP-sharded, as trained) on the mesh."""
        index = self._ema_index(ema)
        if index not in self._params:
            if index == -1:
                request = {"params": self._abstract.params}
            else:
                request = {"ema_params": tuple(tree if i == index else None
                                               for i, tree in enumerate(self._abstract.ema_params))}
            restored, _ = self._checkpointer.restore(request, self.step)
            self._params[index] = restored["params"] if index == -1 else restored["ema_params"][index]
        return self._params[index]

    def _map_batches(self, fn, inputs: np.ndarray, batch_size: int | None) -> np.ndarray:
        """float32 numpy of fn(batch (b, ...) on the mesh, start index) over `inputs` (N, ...) in batches of
        `batch_size` (default config.eval.batch_size, split over the mesh's devices), the last one padded, so `fn`
        compiles once per batch size."""
        batch_size = batch_size or self.config.eval.batch_size
        parallel.check_batch_size(batch_size, self.mesh.devices.size)
        sharding = parallel.batch_sharding(self.mesh)
        outputs = []
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            padded = np.pad(batch, [(0, batch_size - len(batch))] + [(0, 0)] * (batch.ndim - 1))
            out = fn(jax.device_put(padded, sharding), start)
            outputs.append(np.asarray(parallel.to_host(out))[:len(batch)])
        return np.concatenate(outputs).astype(np.float32)

    def close(self) -> None:
        self._checkpointer.close()


class Run(TrainedRun):
    """A trained diffusion run: its denoiser, samples and edits."""

    def denoiser(self, labels: Any = None, guidance: float = 1.0, *, context: Any = None, ema: bool | int = True,
                 clip_denoised: bool = False):
        """x0_fn(x_t (B, *example), t (B,)) -> x0_hat (B, *example) in the network's data space ([-1, 1] images),
        conditioned on `labels` (B,) (class-conditional runs) or `context` (B, L, E) (runs on embedding
        sequences) and guided with scale `guidance`."""
        conditioning = self.experiment.conditioning
        given = {"labels": labels, "embeddings": context}.get(conditioning)
        if conditioning == "labels" and given is None:
            raise ValueError(f"this run is class-conditional ({self.experiment.num_classes} classes): pass labels")
        if conditioning == "embeddings" and given is None:
            raise ValueError(f"this run is conditioned on embedding sequences {self.experiment.spec.context_shape}: "
                             f"pass context")
        dtype = jax.numpy.int32 if conditioning == "labels" else jax.numpy.float32
        cond = None if given is None else jax.numpy.asarray(given, dtype)
        return generate.make_denoiser(self.experiment, self.params(ema), cond, guidance, clip_denoised)

    def sampler_settings(self, **changes: Any) -> generate.SamplerSettings:
        """The run's configured sampler (config.sample) with `changes` (method, num_steps, grid, ...) applied."""
        return generate.SamplerSettings.from_config(self.config.sample, **changes)

    def sample(self, num: int, labels: Sequence[int] | None = None, *, context: Any = None,
               method: str | None = None, steps: int | None = None, grid: str | None = None,
               guidance: float | None = None, seed: int = 0, options: dict[str, Any] | None = None,
               ema: bool | int = True, batch_size: int | None = None, raw: bool = False,
               progress: bool | None = False) -> np.ndarray:
        """`num` samples as numpy: uint8 images (N, H, W, C) or float32 points (N, D); raw=True returns the
        network's data space instead ([-1, 1] float32 images; a latent run's decoded, `diffax.latents`).

        labels: class of each sample (cycled to `num`), default 0, 1, 2, ...; context: the embedding sequence of
        each sample (N, L, E) for runs on embedding sequences, default those of the first N held-out examples
        (`generate.sample_conditions`); method, steps, grid, guidance and options default to the run's
        config.sample; batch_size samples per call (default config.sample.batch_size); progress shows a bar
        (None: on a terminal).
        """
        settings = self.sampler_settings(method=method, num_steps=steps, grid=grid, guidance_scale=guidance,
                                         options=options)
        samples = generate.generate_samples(
            self.experiment, self.params(ema), settings, self.mesh, num_samples=num, seed=seed,
            batch_size=batch_size or self.config.sample.batch_size, progress=progress,
            cond=generate.sample_conditions(self.experiment, num, () if labels is None else labels, context))
        return samples if raw else generate.to_data_range(samples, self.experiment.is_image)

    def _edit(self, edit, images: Any, settings: generate.SamplerSettings, *, labels, seed: int, ema: bool | int,
              batch_size: int | None, raw: bool, masks: Any = None) -> np.ndarray:
        """Runs `edit` (`generate.Edit`) over images (and masks) in batches, like `sample`; without labels a
        conditional run edits with its unconditional denoiser (the null class, or the zero sequence)."""
        latents = self.experiment.latents
        inputs = {"image": to_model_images(images, self.experiment.sample_shape)}
        if masks is not None:
            inputs["mask"] = to_masks(masks, len(inputs["image"]), self.experiment.sample_shape)
        if latents is not None:  # Edit the latents (Stable Diffusion's img2img and latent inpainting).
            inputs["image"] = latents.encode(inputs["image"])
            if masks is not None:
                inputs["mask"] = latent_masks(inputs["mask"], self.experiment.example_shape)
        num = len(inputs["image"])
        conditioning = self.experiment.conditioning
        if conditioning == "labels" and labels is not None:
            cond = generate.sample_labels(num, self.experiment.num_classes, labels)
        else:  # Unknown condition: the unconditional denoiser.
            cond = generate.null_conditions(self.experiment, num)
            settings = dataclasses.replace(settings, guidance_scale=1.0)
        out = generate.generate_samples(
            self.experiment, self.params(ema), settings, self.mesh, num_samples=num, seed=seed,
            batch_size=batch_size or self.config.sample.batch_size, edit=edit, inputs=inputs, cond=cond)
        return out if raw else generate.to_data_range(out, self.experiment.is_image)

    def denoise(self, images: Any, noise_std: float, *, steps: int = 0, method: str = "ddpm",
                intermediates: int = 0, labels: Sequence[int] | None = None, guidance: float | None = None,
                seed: int = 0, ema: bool | int = True, batch_size: int | None = None, raw: bool = False
                ) -> np.ndarray:
        """Denoises images carrying Gaussian noise of std `noise_std` in the [0, 1] intensity scale (e.g. 0.1 is
        25.5 gray levels): steps 0 returns the posterior mean E[x | y] in one network call, steps > 0 draws from
        p(x | y) with `method` (`diffax.sampling.editing.denoise`); intermediates k > 0 returns (N, k + 1, ...):
        k states along the run, then the result."""
        if self.experiment.latents is not None:
            raise ValueError("denoise removes Gaussian noise of the images, which is not Gaussian noise of the "
                             "latents: a latent run (data.autoencoder) has img2img and inpaint")
        std = 2.0 * noise_std if self.experiment.is_image else noise_std  # In the network's data space.

        def edit(x0_fn, inputs, noise, keys):
            return editing.denoise(x0_fn, self.experiment.schedule, inputs["image"], std, num_steps=steps,
                                   method=method, key=keys, intermediates=intermediates)

        return self._edit(edit, images, self.sampler_settings(guidance_scale=guidance), labels=labels, seed=seed,
                          ema=ema, batch_size=batch_size, raw=raw)

    def img2img(self, images: Any, strength: float, *, steps: int | None = None, method: str | None = None,
                grid: str | None = None, labels: Sequence[int] | None = None, guidance: float | None = None,
                seed: int = 0, options: dict[str, Any] | None = None, ema: bool | int = True,
                batch_size: int | None = None, raw: bool = False) -> np.ndarray:
        """SDEdit: each image noised to the time `strength` and denoised back, running round(strength * steps)
        of the sampler's steps (`diffax.sampling.editing.img2img`); sampler settings default to the run's."""
        settings = self.sampler_settings(method=method, num_steps=steps, grid=grid, guidance_scale=guidance,
                                         options=options)

        def edit(x0_fn, inputs, noise, keys):
            return editing.img2img(x0_fn, self.experiment.schedule, inputs["image"], strength, noise,
                                   num_steps=settings.num_steps, grid=settings.grid, method=settings.method,
                                   key=keys, **dict(settings.options))

        return self._edit(edit, images, settings, labels=labels, seed=seed, ema=ema, batch_size=batch_size,
                          raw=raw)

    def inpaint(self, images: Any, masks: Any, *, algorithm: str = "posterior", steps: int | None = None,
                method: str | None = None, grid: str | None = None, cg_steps: int = 1, jump_length: int = 10,
                jump_n_sample: int = 10, labels: Sequence[int] | None = None, guidance: float | None = None,
                seed: int = 0, options: dict[str, Any] | None = None, ema: bool | int = True,
                batch_size: int | None = None, raw: bool = False) -> np.ndarray:
        """Repaints where the mask is white (1) and keeps the rest exactly (`diffax.sampling.editing.inpaint`).

        algorithm "posterior": the run's sampler (method, steps, grid, options default to config.sample) with the
        posterior denoiser, cg_steps conjugate-gradient iterations per call; "repaint": RePaint with jump_length
        and jump_n_sample (1: plain replacement) on a solver without memory, method default "ddpm" without
        options."""
        if algorithm == "repaint":  # Not the run's sampler: its options may not fit the memoryless solver.
            method, options = method or "ddpm", options or {}
        settings = self.sampler_settings(method=method, num_steps=steps, grid=grid, guidance_scale=guidance,
                                         options=options)

        def edit(x0_fn, inputs, noise, keys):
            return editing.inpaint(x0_fn, self.experiment.schedule, inputs["image"], inputs["mask"], noise, keys,
                                   algorithm=algorithm, num_steps=settings.num_steps, grid=settings.grid,
                                   method=settings.method, cg_steps=cg_steps, jump_length=jump_length,
                                   jump_n_sample=jump_n_sample, **dict(settings.options))

        return self._edit(edit, images, settings, labels=labels, seed=seed, ema=ema, batch_size=batch_size,
                          raw=raw, masks=masks)

    def with_config(self, config: ml_collections.ConfigDict) -> Run:
        """This run, sharing its loaded parameters, under `config`: the run's config with other sampler or eval
        settings (sweeps of sampler settings load a run once). Changing what the run trained is an error."""
        differing = differing_run_keys(self.config, config)
        if differing:
            raise ValueError(f"{differing} of the run in {self.workdir!r} cannot be changed after training")
        other = Run(self.workdir, config, self.experiment, self._checkpointer, self.step, self.mesh)
        other._params = self._params
        return other


class ClassifierRun(TrainedRun):
    """A trained classifier (config.task = 'classifier'): labels, logits and penultimate features of images.

    Images are what `to_model_images` takes (uint8 (N, H, W, C) in 0..255, as `Run.sample` returns them). They go
    through the network in batches of `batch_size` (default config.eval.batch_size, split over the mesh's
    devices), the last batch padded, so the network compiles once per batch size and output kind.
    """

    @functools.cached_property
    def _forward(self):
        def forward(params, images, return_features):
            return self.experiment.model.apply({"params": params}, images, train=False,
                                               return_features=return_features)

        return jax.jit(forward, static_argnums=2, out_shardings=parallel.replicated(self.mesh))

    def _outputs(self, images: Any, return_features: bool, ema: bool | int, batch_size: int | None) -> np.ndarray:
        params = self.params(ema)
        return self._map_batches(lambda batch, _: self._forward(params, batch, return_features),
                                 to_model_images(images, self.experiment.example_shape), batch_size)

    def logits(self, images: Any, *, ema: bool | int = True, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, num_classes) logits of the images, with the EMA (`TrainedRun.params`) or raw parameters."""
        return self._outputs(images, False, ema, batch_size)

    def predict(self, images: Any, *, ema: bool | int = True, batch_size: int | None = None) -> np.ndarray:
        """int32 (N,) predicted labels: the argmax of the logits."""
        return np.argmax(self.logits(images, ema=ema, batch_size=batch_size), axis=-1).astype(np.int32)

    def features(self, images: Any, *, ema: bool | int = True, batch_size: int | None = None) -> np.ndarray:
        """float32 (N, feature_dim) penultimate features (`diffax.nets.classifier`), the input of the metrics of
        `diffax.evaluation.metrics` (Fréchet classifier distance, KID, precision/recall)."""
        return self._outputs(images, True, ema, batch_size)


class AutoencoderRun(TrainedRun):
    """A trained KL autoencoder (config.task = 'autoencoder'): images to latents and back, for latent diffusion.

    Images in are what `to_model_images` takes (uint8 (N, H, W, C) in 0..255, floats in [0, 1], PIL images), or with
    raw=True float (N, H, W, C) in [-1, 1] (the data pipeline's); images out are uint8 (N, H, W, C), or with raw=True
    the decoder's float32 output in its [-1, 1] data space (unclipped). Latents are float32 (N, *latent_shape), as
    the encoder makes them (no scale factor). Inputs go through the networks in batches of `batch_size` (default
    config.eval.batch_size, split over the mesh's devices), the last padded. Parameters as `TrainedRun.params`: EMA
    (True, the first of train.ema_decays, or an index) or raw (False).
    """

    @property
    def downsampling_factor(self) -> int:
        return self.experiment.model.downsampling_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(H / f, W / f, latent_channels) of the run's (H, W, C) images."""
        height, width, _ = self.experiment.example_shape
        f = self.downsampling_factor
        return height // f, width // f, self.experiment.model.latent_channels

    @functools.cached_property
    def _encode(self):
        def encode(params, images, seed, start, sample):
            posterior = self.experiment.model.apply({"params": params}, images, method="encode")
            if not sample:
                return posterior.mode()
            indices = start + jax.numpy.arange(images.shape[0])
            keys = jax.vmap(lambda index: jax.random.fold_in(jax.random.PRNGKey(seed), index))(indices)
            noise = jax.vmap(lambda key: jax.random.normal(key, posterior.mean.shape[1:]))(keys)
            return posterior.mean + posterior.std * noise

        return jax.jit(encode, static_argnums=4, out_shardings=parallel.replicated(self.mesh))

    @functools.cached_property
    def _decode(self):
        def decode(params, latents):
            return self.experiment.model.apply({"params": params}, latents, method="decode")

        return jax.jit(decode, out_shardings=parallel.replicated(self.mesh))

    def _images_in(self, images: Any, raw: bool) -> np.ndarray:
        if not raw:
            return to_model_images(images, self.experiment.example_shape)
        images = np.asarray(images, np.float32)
        if images.shape[1:] != tuple(self.experiment.example_shape):
            raise ValueError(f"images of shape {images.shape}: expected (N, "
                             f"{', '.join(map(str, self.experiment.example_shape))}), the run's data")
        return images

    def encode(self, images: Any, *, sample: bool = False, seed: int = 0, ema: bool | int = True,
               batch_size: int | None = None, raw: bool = False) -> np.ndarray:
        """float32 latents (N, *latent_shape): the posterior's mean, or with sample=True a draw
        z_i = mean_i + std_i * eps_i, eps_i from fold_in(PRNGKey(seed), i) (the same whatever the batch size)."""
        params = self.params(ema)["autoencoder"]
        return self._map_batches(lambda batch, start: self._encode(params, batch, seed, start, sample),
                                 self._images_in(images, raw), batch_size)

    def decode(self, latents: Any, *, ema: bool | int = True, batch_size: int | None = None,
               raw: bool = False) -> np.ndarray:
        """Images of latents (N, *latent_shape): uint8 (N, H, W, C), or raw=True float32 in [-1, 1] space."""
        latents = np.asarray(latents, np.float32)
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents of shape {latents.shape}: expected (N, "
                             f"{', '.join(map(str, self.latent_shape))}), the run's latent shape")
        params = self.params(ema)["autoencoder"]
        images = self._map_batches(lambda batch, _: self._decode(params, batch), latents, batch_size)
        return images if raw else generate.to_data_range(images, is_image=True)

    def reconstruct(self, images: Any, *, sample: bool = False, seed: int = 0, ema: bool | int = True,
                    batch_size: int | None = None, raw: bool = False) -> np.ndarray:
        """decode(encode(images)): in and out in the conventions of raw (class docstring)."""
        latents = self.encode(images, sample=sample, seed=seed, ema=ema, batch_size=batch_size, raw=raw)
        return self.decode(latents, ema=ema, batch_size=batch_size, raw=raw)


def _as_array(images: Any) -> np.ndarray:
    """A PIL image, a list of them, or an array -> a numpy array (N, ...) (one image gets N = 1)."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        images = np.stack([np.asarray(image) for image in images])
    return np.asarray(images)


def to_model_images(images: Any, example_shape: tuple[int, ...]) -> np.ndarray:
    """Images as the network sees them, float32 (N, H, W, C) in [-1, 1]: from uint8 (0..255) or float ([0, 1])
    arrays (N, H, W, C) or one (H, W, C) (without the channel axis for C = 1), or PIL images."""
    array, shape = _as_array(images), tuple(example_shape)
    if array.shape == shape:
        array = array[None]
    elif shape[-1] == 1 and array.shape == shape[:-1]:
        array = array[None, ..., None]
    elif shape[-1] == 1 and array.shape[1:] == shape[:-1]:
        array = array[..., None]
    if array.shape[1:] != shape:
        raise ValueError(f"images of shape {array.shape}: expected (N, {', '.join(map(str, shape))}), the run's data")
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return (array.astype(np.float32) / scale) * 2.0 - 1.0


def to_masks(masks: Any, count: int, example_shape: tuple[int, ...]) -> np.ndarray:
    """Masks float32 (N, H, W, C), 1 where to repaint: PIL images or arrays, white / nonzero = repaint; one mask
    (H, W) or (H, W, 1) for all images, or one per image (N, H, W), (N, H, W, 1) or (N, H, W, C)."""
    array, shape = _as_array(masks), tuple(example_shape)
    array = (array > (127 if array.dtype == np.uint8 else 0.5)).astype(np.float32)
    if array.shape == shape[:-1]:
        array = array[None, ..., None]
    elif array.shape == (*shape[:-1], 1):
        array = array[None]
    elif array.shape == (count, *shape[:-1]):
        array = array[..., None]
    try:
        return np.ascontiguousarray(np.broadcast_to(array, (count, *shape)))
    except ValueError:
        raise ValueError(f"masks of shape {array.shape} do not fit {count} images of shape {shape}") from None


def latent_masks(masks: np.ndarray, latent_shape: tuple[int, ...]) -> np.ndarray:
    """Image masks (N, H, W, C) -> latent masks (N, h, w, c): a latent pixel is repainted where any image pixel of
    its (H / h) x (W / w) block is."""
    count, height, width, _ = masks.shape
    rows, columns = height // latent_shape[0], width // latent_shape[1]
    blocks = masks.reshape(count, latent_shape[0], rows, latent_shape[1], columns, -1).max(axis=(2, 4, 5))
    return np.ascontiguousarray(np.broadcast_to(blocks[..., None], (count, *latent_shape)))


def load_run(workdir: str, step: int | None = None, *,
             config: ml_collections.ConfigDict | None = None) -> Run | ClassifierRun | AutoencoderRun:
    """The run trained in `workdir` at checkpoint `step` (default: the newest): a `Run`, a `ClassifierRun` for
    config.task = 'classifier', an `AutoencoderRun` for 'autoencoder'.

    config: the run's config with changes already applied (the modes pass the command line's); default: the
    config the run saved. Its `mesh` section places the parameters (default: all devices).
    """
    saved = read_run_file(workdir)
    if saved is None:
        raise FileNotFoundError(f"no run in workdir {workdir!r}: it has neither run.json nor checkpoints")
    config = config if config is not None else saved[0]
    experiment = build_experiment(config, saved[1])
    checkpointer = Checkpointer(workdir, max_to_keep=None)
    step = checkpointer.check_step(step)
    kinds = {"classifier": ClassifierRun, "autoencoder": AutoencoderRun}
    kind = kinds.get(config.get("task"), Run)  # Runs saved before `task` existed are diffusion runs.
    if config.data.get("autoencoder"):  # A latent run: decode samples, encode edited images.
        from diffax.latents import with_latents  # It loads autoencoder runs with this module's load_run.

        experiment = with_latents(experiment)
    return kind(workdir, config, experiment, checkpointer, step, parallel.mesh_from_config(config.mesh))
