"""What a run is made of, built from its config: the network, the forward process, the data and the denoiser.

Shared by every mode (train, sample, eval, bench) so that they agree on shapes, conditioning and parameterization.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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

TOY_DATASETS = ("toy2d",)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The network and forward process of a config, and the shape of one example.

    Attributes:
      model: the Flax network, `model.apply({'params': p}, x, noise_level, cond, train=...)`.
      schedule: the forward process.
      example_shape: (H, W, C) images or (D,) vectors.
      num_classes: label classes the network is conditioned on, or None (unconditional).
      is_image: images in [-1, 1] (grids, bits/dim) rather than points.
    """

    config: ml_collections.ConfigDict
    model: nn.Module
    schedule: Schedule
    example_shape: tuple[int, ...]
    num_classes: int | None
    is_image: bool

    def net_fn(self, params: Any, *, train: bool, dropout_key: jax.Array | None = None) -> objectives.NetFn:
        """net_fn(x_in (B, *example_shape), noise_level (B,), cond) -> output, parameters closed over."""
        rngs = {"dropout": dropout_key} if dropout_key is not None else None

        def net_fn(x_in, noise_level, cond):
            return self.model.apply({"params": params}, x_in, noise_level, cond, train=train, rngs=rngs)

        return net_fn

    def x0_fn(self, params: Any):
        """The denoiser x0_fn(x_t, t (B,), cond=None) -> x0_hat of the network with `params` (eval mode)."""
        diffusion = self.config.diffusion
        return objectives.make_x0_fn(self.net_fn(params, train=False), self.schedule, diffusion.prediction,
                                     diffusion.noise_conditioning, diffusion.sigma_data)

    def dummy_inputs(self) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(x (1, *example_shape), noise_level (1,), cond (1,) or None): zeros to initialize or trace the network."""
        cond = jnp.zeros((1,), jnp.int32) if self.num_classes else None
        return jnp.zeros((1, *self.example_shape), jnp.float32), jnp.zeros((1,)), cond

    def init_params(self, key: jax.Array) -> Any:
        """Fresh parameters (use under jit / eval_shape)."""
        return self.model.init(key, *self.dummy_inputs(), train=False)["params"]


def data_spec(config: ml_collections.ConfigDict, *, require_data: bool = True
              ) -> tuple[tuple[int, ...], int | None, bool]:
    """(example shape, number of classes, is_image) of the config's training data.

    With require_data=False (benchmarks on synthetic data) a TFDS catalogue data set that is not prepared is
    described by its builder's metadata instead, which needs neither the files nor TensorFlow.
    """
    data = config.data
    if data.name in TOY_DATASETS:
        return (mixture.toy_mixture_2d().dim,), None, False
    try:
        spec = data_lib.dataset_spec(data.name, split=data.split, data_dir=data.data_dir,
                                     image_size=data.image_size)
    except FileNotFoundError:
        if require_data:
            raise
        features = tfds.builder(data.name).info.features
        height, width, channels = features["image"].shape
        size = sources.image_size_hw(data.image_size) or (height, width)
        return (*size, channels), getattr(features["label"], "num_classes", None), True
    return tuple(spec.image_shape), spec.num_classes, True


def build_experiment(config: ml_collections.ConfigDict, *, require_data: bool = True) -> Experiment:
    """The `Experiment` of a (validated) config; require_data as in `data_spec`."""
    example_shape, num_classes, is_image = data_spec(config, require_data=require_data)
    model_config = config.model
    num_classes = num_classes if model_config.class_conditional else None
    overrides = dict(model_config.kwargs.to_dict())
    if num_classes:
        overrides["num_classes"] = num_classes
    model = nets.build_network(model_config.name, dtype=DTYPES[model_config.compute_dtype], **overrides)
    diffusion = config.diffusion
    schedule = get_schedule(diffusion.schedule, shift=diffusion.shift, zero_terminal_snr=diffusion.zero_terminal_snr,
                            **diffusion.schedule_kwargs.to_dict())
    return Experiment(config, model, schedule, example_shape, num_classes, is_image)


def make_iterator(config: ml_collections.ConfigDict, *, split: str, global_batch_size: int, seed: int,
                  num_epochs: int | None = None, train: bool = True) -> data_lib.DataIterator:
    """This process's iterator over the config's data: {"image": (b, *example_shape), "label": (b,)}."""
    data = config.data
    if data.name in TOY_DATASETS:
        # A fixed draw from the mixture per split, so held-out points differ from training points.
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0 if split == data.split else 1)
        points = np.asarray(mixture.toy_mixture_2d().sample(key, data.toy_examples))
        return data_lib.make_array_dataset(points, global_batch_size=global_batch_size, seed=seed,
                                           num_epochs=num_epochs)
    return data_lib.make_dataset(data.name, split=split, global_batch_size=global_batch_size, seed=seed,
                                 data_dir=data.data_dir, image_size=data.image_size,
                                 random_flip=data.random_flip and train, num_epochs=num_epochs,
                                 worker_count=data.worker_count)
