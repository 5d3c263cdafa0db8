"""What a run is made of, built from its config: the network, the forward process, the data and the denoiser.

The one place that reads the config's `task`, `model`, `diffusion` and `data` keys, so that every mode (train,
sample, eval, bench) and `diffax.load_run` agree on shapes, conditioning and parameterization. A run's task is
`diffusion` (a score network called as net(x, noise_level, cond) under a forward process), `classifier` (an image
classifier net(x) -> logits over the data set's labels, with no forward process: its `schedule` is None) or
`autoencoder` (LDM's KL autoencoder net(x) -> (reconstruction, posterior) of `nets.AUTOENCODERS`, trained beside a
PatchGAN `discriminator`; no forward process either); the network's inputs (`Experiment.dummy_inputs`) and the
trained variables (`Experiment.init_variables`) are decided here and nowhere else.

Data sets are sources in `DATA_SOURCES`, a plain dict from `data.name` to a `DataSource`; a name that is not a key
is read as a TFDS data set (the bundled ones, `digits` and `mnist5k`, are prepared on first use). A source gives
the `DataSpec` of its examples and this process's batch iterator. The spec is all that sampling needs, and a
trained run stores it beside its config (`diffax.run_config`), so sampling never opens the data set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from diffax import data as data_lib
from diffax import mixture, nets, objectives
from diffax.data import sources
from diffax.schedules import Schedule, get_schedule

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("diffusion", "classifier", "autoencoder")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What one example is, known without reading the data.

    Attributes:
      example_shape: (H, W, C) images or (D,) vectors.
      num_classes: label classes of the data set, or None (unlabelled).
      is_image: images in [-1, 1] (grids, uint8 output, bits/dim) rather than points.
      context_shape: (L, E) of the embedding sequence each example carries (data.context_key), or None.
      latent_scale: latent runs (data.autoencoder): the factor of the autoencoder's latents (`diffax.latents`);
        example_shape is then the latents' and is_image says that the decoded samples are images.
      image_shape: latent runs: (H, W, C) of the decoded images.
      autoencoder_step: latent runs: the autoencoder checkpoint whose encoder made the latents (the one its
        decoder then uses, whatever that run trains on to).
    """

    example_shape: tuple[int, ...]
    num_classes: int | None
    is_image: bool
    context_shape: tuple[int, int] | None = None
    latent_scale: float | None = None
    image_shape: tuple[int, ...] | None = None
    autoencoder_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        def listed(shape):
            return None if shape is None else list(shape)

        return {"example_shape": list(self.example_shape), "num_classes": self.num_classes,
                "is_image": self.is_image, "context_shape": listed(self.context_shape),
                "latent_scale": self.latent_scale, "image_shape": listed(self.image_shape),
                "autoencoder_step": self.autoencoder_step}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        def shape(key):  # Absent from runs saved before the key existed.
            return None if values.get(key) is None else tuple(values[key])

        return cls(tuple(values["example_shape"]), values["num_classes"], bool(values["is_image"]),
                   shape("context_shape"), values.get("latent_scale"), shape("image_shape"),
                   values.get("autoencoder_step"))


class DataSource(Protocol):
    """A data set by name: its spec and its batches ({"image": (b, *example_shape), "label": (b,)}, and
    "context": (b, L, E) when the spec has a context_shape)."""

    def spec(self, data: ml_collections.ConfigDict, *, require_data: bool) -> DataSpec: ...

    def iterator(self, data: ml_collections.ConfigDict, *, seed: int, split: str, global_batch_size: int,
                 num_epochs: int | None, train: bool) -> data_lib.DataIterator: ...


class TfdsSource:
    """A TFDS data set stored as ArrayRecord (`diffax.data`); images scaled to [-1, 1]."""

    def spec(self, data: ml_collections.ConfigDict, *, require_data: bool) -> DataSpec:
        """With require_data=False a catalogue data set that is not prepared is described by its builder's
        metadata, which needs neither the files nor TensorFlow (benchmarks on synthetic data)."""
        context_key = data.get("context_key") or None
        try:
            spec = data_lib.dataset_spec(data.name, split=data.split, data_dir=data.data_dir,
                                         image_size=data.image_size, pad_to=data.get("pad_to"),
                                         context_key=context_key)
        except FileNotFoundError:
            if require_data:
                raise
            features = tfds.builder(data.name).info.features
            height, width, channels = features["image"].shape
            size = (sources.image_size_hw(data.get("pad_to")) or sources.image_size_hw(data.image_size)
                    or (height, width))
            context_shape = sources.context_shape(features, data.name, context_key)
            return DataSpec((*size, channels), getattr(features["label"], "num_classes", None), True, context_shape)
        return DataSpec(tuple(spec.image_shape), spec.num_classes, True, spec.context_shape)

    def iterator(self, data, *, seed, split, global_batch_size, num_epochs, train):
        return data_lib.make_dataset(data.name, split=split, global_batch_size=global_batch_size, seed=seed,
                                     data_dir=data.data_dir, image_size=data.image_size,
                                     random_flip=data.random_flip and train, num_epochs=num_epochs,
                                     worker_count=data.worker_count, pad_to=data.get("pad_to"),
                                     context_key=data.get("context_key") or None)


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    """Points drawn once from an exact Gaussian mixture (`diffax.mixture`): `data.toy_examples` of them per split,
    a different draw for each split, so held-out points differ from training points."""

    make_mixture: Any

    def spec(self, data, *, require_data):
        return DataSpec((self.make_mixture().dim,), None, False)

    def iterator(self, data, *, seed, split, global_batch_size, num_epochs, train):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0 if split == data.split else 1)
        points = np.asarray(self.make_mixture().sample(key, data.toy_examples))
        return data_lib.make_array_dataset(points, global_batch_size=global_batch_size, seed=seed,
                                           num_epochs=num_epochs)


DATA_SOURCES: dict[str, DataSource] = {"toy2d": MixtureSource(mixture.toy_mixture_2d)}
TFDS_SOURCE = TfdsSource()


def data_source(name: str) -> DataSource:
    """The source registered as `name`, else the TFDS data set of that name."""
    return DATA_SOURCES.get(name, TFDS_SOURCE)


def data_spec(config: ml_collections.ConfigDict, *, require_data: bool = True, latent: bool = True) -> DataSpec:
    """The spec of the config's training data; require_data as in `TfdsSource.spec`. A latent config's
    (data.autoencoder) comes from `diffax.latents.latent_spec`, which reads this one with latent=False."""
    if latent and config.data.get("autoencoder"):
        raise ValueError(f"config.data.autoencoder = {config.data.autoencoder!r}: the spec of latent data is made by "
                         f"diffax.latents.latent_spec (the train mode), or read from the run's run.json")
    return data_source(config.data.name).spec(config.data, require_data=require_data)


def make_iterator(config: ml_collections.ConfigDict, *, split: str, global_batch_size: int, seed: int,
                  num_epochs: int | None = None, train: bool = True) -> data_lib.DataIterator:
    """This process's iterator over the config's data: {"image": (b, *example_shape), "label": (b,)}."""
    return data_source(config.data.name).iterator(config.data, seed=seed, split=split,
                                                  global_batch_size=global_batch_size, num_epochs=num_epochs,
                                                  train=train)


def parse_shape(text: str, key: str) -> tuple[int, ...] | None:
    """"32,32,4" -> (32, 32, 4); "" -> None. `key` names the config key in the error."""
    if not text:
        return None
    try:
        shape = tuple(int(size) for size in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) <= 0:
        raise ValueError(f"config.{key} = {text!r}: expected positive sizes such as '32,32,4'")
    return shape


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The network and forward process of a config, and what one example is.

    Attributes:
      config: the run's config.
      model: the Flax network, `model.apply({'params': p}, *inputs, train=...)` with the inputs of `dummy_inputs`:
        (x, noise_level, cond) for diffusion, (x,) for a classifier.
      schedule: the forward process; None for a classifier.
      spec: the data's `DataSpec`.
      num_classes: label classes the network is conditioned on (the data's, when model.class_conditional), or
        None; for a classifier, the classes it predicts (the data's).
      discriminator: an autoencoder's PatchGAN (`nets.PatchDiscriminator`), else None.
      latents: a latent run's codec (`diffax.latents.LatentCodec`: encode(images) -> latents and decode(latents)
        -> images, numpy in [-1, 1]), attached by `diffax.latents.with_latents`; else None.
    """

    config: ml_collections.ConfigDict
    model: nn.Module
    schedule: Schedule | None
    spec: DataSpec
    num_classes: int | None
    discriminator: nn.Module | None = None
    latents: Any = None

    @property
    def task(self) -> str:
        """'diffusion', 'classifier' or 'autoencoder' (config.task)."""
        return self.config.get("task", "diffusion")  # Runs saved before `task` existed are diffusion runs.

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.spec.example_shape

    @property
    def conditioning(self) -> str | None:
        """What the network is conditioned on: 'labels' (class-conditional), 'embeddings' (the data's embedding
        sequences, data.context_key) or None."""
        if self.task != "diffusion":
            return None
        if self.num_classes:
            return "labels"
        return "embeddings" if self.spec.context_shape else None

    @property
    def is_image(self) -> bool:
        """Whether samples (decoded, for latent runs) are images in [-1, 1]."""
        return self.spec.is_image

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample as generated: the decoded images' for latent runs, else example_shape."""
        return tuple(self.spec.image_shape or self.example_shape)

    def with_example_shape(self, shape: tuple[int, ...]) -> Experiment:
        """The same network on other inputs (e.g. latents in benchmarks)."""
        return dataclasses.replace(self, spec=dataclasses.replace(self.spec, example_shape=tuple(shape)))

    def net_fn(self, params: Any, *, train: bool, dropout_key: jax.Array | None = None) -> Callable[..., jax.Array]:
        """The network with `params` closed over, on inputs of the form of `dummy_inputs`: diffusion
        net_fn(x_in (B, *example_shape), noise_level (B,), cond) -> output; classifier net_fn(x) -> logits."""
        rngs = {"dropout": dropout_key} if dropout_key is not None else None

        def net_fn(*inputs):
            return self.model.apply({"params": params}, *inputs, train=train, rngs=rngs)

        return net_fn

    def x0_fn(self, params: Any):
        """The denoiser x0_fn(x_t, t (B,), cond=None) -> x0_hat of the network with `params` (eval mode)."""
        diffusion = self.config.diffusion
        return objectives.make_x0_fn(self.net_fn(params, train=False), self.schedule, diffusion.prediction,
                                     diffusion.noise_conditioning, diffusion.sigma_data)

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        """Zeros of the network's positional inputs, to initialize or trace it: diffusion (x (1, *example_shape),
        noise_level (1,), cond: labels (1,), an embedding sequence (1, L, E) or None); classifier and autoencoder
        (x (1, *example_shape),)."""
        x = jnp.zeros((1, *self.example_shape), jnp.float32)
        if self.task in ("classifier", "autoencoder"):
            return (x,)
        cond = {"labels": jnp.zeros((1,), jnp.int32), None: None,
                "embeddings": jnp.zeros((1, *(self.spec.context_shape or ())), jnp.float32)}[self.conditioning]
        return x, jnp.zeros((1,)), cond

    def init_params(self, key: jax.Array) -> Any:
        """Fresh parameters of the network (use under jit / eval_shape)."""
        return self.model.init(key, *self.dummy_inputs(), train=False)["params"]

    def init_variables(self, key: jax.Array) -> tuple[Any, Any]:
        """(params, model_state): everything the optimizer trains, and the rest the train state carries (use under
        jit / eval_shape). Diffusion and classifier: (the network's parameters, {}). Autoencoder: ({"autoencoder":
        the network's, "discriminator": the PatchGAN's, "logvar": () float32 config.autoencoder.logvar_init},
        {"discriminator": the PatchGAN's BatchNorm batch_stats})."""
        if self.task != "autoencoder":
            return self.init_params(key), {}
        network_key, discriminator_key = jax.random.split(key)
        discriminator = self.discriminator.init(discriminator_key, *self.dummy_inputs(), train=False)
        params = {"autoencoder": self.init_params(network_key), "discriminator": discriminator["params"],
                  "logvar": jnp.asarray(self.config.autoencoder.logvar_init, jnp.float32)}
        return params, {"discriminator": discriminator["batch_stats"]}


def build_experiment(config: ml_collections.ConfigDict, spec: DataSpec | None = None, *,
                     require_data: bool = True) -> Experiment:
    """The `Experiment` of a (validated) config. `spec` (a trained run's stored spec) saves opening the data;
    without it the data set is read (require_data as in `TfdsSource.spec`)."""
    spec = spec or data_spec(config, require_data=require_data)
    model_config = config.model
    task = config.get("task", "diffusion")
    classifier = task == "classifier"
    if classifier and not spec.num_classes:
        raise ValueError(f"config.task = 'classifier' needs labelled data; data set {config.data.name!r} has no "
                         f"class labels")
    num_classes = spec.num_classes if model_config.class_conditional or classifier else None
    overrides = dict(model_config.kwargs.to_dict())
    if num_classes:
        overrides["num_classes"] = num_classes
        label_conditioning = model_config.get("label_conditioning", "embedding")  # Older runs: embedding.
        if label_conditioning != "embedding" and task == "diffusion":
            overrides["label_conditioning"] = label_conditioning
    if spec.context_shape and task == "diffusion":
        overrides["cross_attention"] = True
    if task == "autoencoder":
        overrides.setdefault("out_channels", spec.example_shape[-1])
    try:
        model = nets.build_network(model_config.name, dtype=DTYPES[model_config.compute_dtype], **overrides)
    except TypeError as error:  # An attribute the network does not have.
        raise ValueError(f"config.model.kwargs = {overrides}: {error}") from None
    if task == "autoencoder":
        autoencoder = config.autoencoder
        discriminator = nets.PatchDiscriminator(features=autoencoder.disc_features,
                                                num_layers=autoencoder.disc_layers,
                                                dtype=DTYPES[model_config.compute_dtype])
        return Experiment(config, model, None, spec, None, discriminator)
    diffusion = config.diffusion
    schedule = None if classifier else get_schedule(
        diffusion.schedule, shift=diffusion.shift, zero_terminal_snr=diffusion.zero_terminal_snr,
        **diffusion.schedule_kwargs.to_dict())
    return Experiment(config, model, schedule, spec, num_classes)
