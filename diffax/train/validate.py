"""Config checks that run at launch, before anything compiles: each error names the key, its value and what was
expected, e.g. `config.train.batch_size = 30: expected a multiple of train.grad_accum_steps = 4`."""

from __future__ import annotations

from typing import Any

import ml_collections

from diffax import nets, objectives, schedules
from diffax.sampling import SOLVERS
from diffax.train.bench import parse_example_shape
from diffax.train.optimizer import DECAYS
from diffax.train.setup import DTYPES

GRID_KINDS = ("uniform", "quadratic", "karras", "log_snr", "trailing")


def _require(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"config.{key} = {value!r}: expected {expected}")


def _one_of(config: ml_collections.ConfigDict, key: str, choices) -> None:
    value = _get(config, key)
    _require(value in choices, key, value, f"one of {sorted(choices)}")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def _positive(config: ml_collections.ConfigDict, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = _get(config, key)
        ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
        _require(ok, key, value, "a non-negative number" if allow_zero else "a positive number")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid key."""
    _one_of(config, "model.name", nets.NETWORKS)
    _one_of(config, "model.compute_dtype", DTYPES)
    _require(0.0 <= config.model.label_dropout < 1.0, "model.label_dropout", config.model.label_dropout,
             "a probability in [0, 1)")
    _one_of(config, "diffusion.schedule", schedules.SCHEDULES)
    _one_of(config, "diffusion.prediction", objectives.PREDICTIONS)
    _one_of(config, "diffusion.noise_conditioning", objectives.NOISE_CONDITIONINGS)
    _one_of(config, "diffusion.weighting", objectives.WEIGHTINGS)
    _one_of(config, "diffusion.time_sampling", objectives.TIME_SAMPLERS)
    _positive(config, "diffusion.sigma_data", "optim.learning_rate")
    _positive(config, "optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm", "optim.eps",
              allow_zero=True)
    _one_of(config, "optim.decay", DECAYS)
    for key in ("optim.b1", "optim.b2", "optim.end_learning_rate_fraction"):
        value = _get(config, key)
        _require(0.0 <= value <= 1.0, key, value, "a number in [0, 1]")

    train = config.train
    _positive(config, "train.batch_size", "train.num_steps", "train.grad_accum_steps", "train.steps_per_dispatch",
              "train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
    _positive(config, "train.sample_every", "train.pack_max_elements", allow_zero=True)
    _require(train.batch_size % train.grad_accum_steps == 0, "train.batch_size", train.batch_size,
             f"a multiple of train.grad_accum_steps = {train.grad_accum_steps}")
    for key in ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.sample_every"):
        value = _get(config, key)
        _require(value % train.steps_per_dispatch == 0, key, value,
                 f"a multiple of train.steps_per_dispatch = {train.steps_per_dispatch}")
    decays = tuple(train.ema_decays)
    _require(len(decays) > 0 and all(0.0 <= d < 1.0 for d in decays), "train.ema_decays", decays,
             "a non-empty tuple of decays in [0, 1)")

    _one_of(config, "sample.method", SOLVERS)
    _one_of(config, "sample.grid", GRID_KINDS)
    _positive(config, "sample.num_steps", "sample.num_samples", "sample.batch_size", "eval.batch_size",
              "eval.num_batches", "eval.bpd_examples", "bench.steps", "bench.sample_steps")
    parse_example_shape(config.bench.example_shape)
    _require(-1 <= config.sample.ema_index < len(decays), "sample.ema_index", config.sample.ema_index,
             f"-1 (raw parameters) or an index into train.ema_decays (length {len(decays)})")
    _positive(config, "sample.guidance_scale", allow_zero=True)

    mesh = config.mesh
    for key in ("mesh.data", "mesh.fsdp", "mesh.num_devices"):
        value = _get(config, key)
        _require(isinstance(value, int) and (value == -1 or value >= 1), key, value, "-1 or a positive integer")
    _require(not (mesh.data == -1 and mesh.fsdp == -1), "mesh.fsdp", mesh.fsdp, "a size when mesh.data is -1")
