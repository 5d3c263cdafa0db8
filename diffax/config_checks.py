"""Config checks that run at launch, before anything compiles: each error names the key, its value and what was
expected, e.g. `config.train.batch_size = 30: expected a multiple of train.grad_accum_steps = 4`.

Most checks are tables: CHOICES (a key and the registry its value must be a key of), POSITIVE, NON_NEGATIVE and
FRACTIONS; what relates several keys follows them in `validate_config`.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from diffax import nets, objectives, sampling, schedules
from diffax.evaluation.perceptual import PERCEPTUAL_LOSSES
from diffax.experiment import DTYPES, TASKS, parse_shape
from diffax.nets.embeddings import LABEL_CONDITIONINGS
from diffax.run_config import read_run_file
from diffax.sampling import SOLVERS
from diffax.sampling.editing import INPAINT_ALGORITHMS
from diffax.train.optimizer import DECAYS

CHOICES = {
    "task": TASKS,
    "model.name": nets.NETWORKS, "model.compute_dtype": DTYPES, "model.label_conditioning": LABEL_CONDITIONINGS,
    "diffusion.schedule": schedules.SCHEDULES,
    "diffusion.prediction": objectives.PREDICTIONS, "diffusion.noise_conditioning": objectives.NOISE_CONDITIONINGS,
    "diffusion.weighting": objectives.WEIGHTINGS, "diffusion.time_sampling": objectives.TIME_SAMPLERS,
    "optim.decay": DECAYS, "sample.method": SOLVERS, "sample.grid": schedules.TIME_GRIDS,
    "edit.task": ("denoise", "img2img", "inpaint"), "edit.inpaint_algorithm": INPAINT_ALGORITHMS,
    "autoencoder.perceptual": PERCEPTUAL_LOSSES,
}
POSITIVE = ("diffusion.sigma_data", "optim.learning_rate", "train.batch_size", "train.num_steps",
            "train.grad_accum_steps", "train.steps_per_dispatch", "train.log_every", "train.checkpoint_every",
            "train.keep_checkpoints", "sample.num_steps", "sample.num_samples", "sample.batch_size",
            "eval.batch_size", "eval.num_batches", "eval.bpd_examples", "bench.steps", "bench.sample_steps",
            "edit.num_images", "edit.cg_steps", "edit.jump_length", "edit.jump_n_sample")
NON_NEGATIVE = ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip_norm", "optim.eps",
                "train.sample_every", "sample.guidance_scale", "sample.seed", "edit.num_steps",
                "edit.intermediates")
FRACTIONS = ("optim.b1", "optim.b2", "optim.end_learning_rate_fraction", "edit.strength")


def _require(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"config.{key} = {value!r}: expected {expected}")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_solver_options(config: ml_collections.ConfigDict) -> None:
    """Every key of sample.options must be a keyword of the solver's step, and its value one the solver takes:
    a two-step run on a (1, 2) input is traced (nothing computed), so a bad value stops the launch rather than the
    first sample grid of a training run."""
    sample = config.sample
    step = SOLVERS[sample.method].step
    accepted = [name for name, parameter in inspect.signature(step).parameters.items()
                if parameter.kind == inspect.Parameter.KEYWORD_ONLY]
    for option in sample.options.keys():
        _require(option in accepted, f"sample.options.{option}", sample.options[option],
                 f"an option of sampler {sample.method!r}: one of {accepted}")
    schedule = schedules.get_schedule(config.diffusion.schedule, shift=config.diffusion.shift,
                                      zero_terminal_snr=config.diffusion.zero_terminal_snr,
                                      **config.diffusion.schedule_kwargs.to_dict())
    grid = schedules.time_grid(schedule, 2, sample.grid)
    try:
        jax.eval_shape(lambda noise: sampling.sample(lambda x, t: x, schedule, noise, grid, sample.method,
                                                     jax.random.key(0), **sample.options.to_dict()),
                       jax.ShapeDtypeStruct((1, 2), jnp.float32))
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"config.sample.options = {sample.options.to_dict()}: sampler {sample.method!r} "
                         f"refuses them: {error}") from None


def _check_autoencoder(config: ml_collections.ConfigDict) -> None:
    """An autoencoder run: an autoencoder network (nets.AUTOENCODERS), no label conditioning, whole batches, loss
    weights that make sense, and an LPIPS weights file that exists."""
    model, settings = config.model, config.autoencoder
    _require(model.name in nets.AUTOENCODERS, "model.name", model.name,
             f"an autoencoder ({sorted(nets.AUTOENCODERS)}) for config.task = 'autoencoder'")
    _require(not model.class_conditional, "model.class_conditional", model.class_conditional,
             "False for config.task = 'autoencoder'")
    _require(config.train.grad_accum_steps == 1, "train.grad_accum_steps", config.train.grad_accum_steps,
             "1 for config.task = 'autoencoder' (its step takes whole batches)")
    for key in ("perceptual_weight", "kl_weight", "disc_factor", "disc_weight", "disc_start"):
        value = settings[key]
        _require(_is_number(value) and value >= 0, f"autoencoder.{key}", value, "a non-negative number")
    for key in ("disc_features", "disc_layers"):
        value = settings[key]
        _require(isinstance(value, int) and value > 0, f"autoencoder.{key}", value, "a positive integer")
    if settings.perceptual == "lpips":
        _require(bool(settings.lpips_weights) and epath.Path(settings.lpips_weights).exists(),
                 "autoencoder.lpips_weights", settings.lpips_weights,
                 "the path of an existing .npz of LPIPS weights for autoencoder.perceptual = 'lpips'")


def _check_task(config: ml_collections.ConfigDict) -> None:
    """A classifier run needs a classifier network (nets.CLASSIFIERS) and no label conditioning; an autoencoder run
    an autoencoder (`_check_autoencoder`); a diffusion run a score network (not a classifier, not an autoencoder of
    nets.AUTOENCODERS)."""
    model = config.model
    if config.task == "autoencoder":
        _check_autoencoder(config)
    elif config.task == "classifier":
        _require(model.name in nets.CLASSIFIERS, "model.name", model.name,
                 f"a classifier ({sorted(nets.CLASSIFIERS)}) for config.task = 'classifier'")
        _require(not model.class_conditional, "model.class_conditional", model.class_conditional,
                 "False for config.task = 'classifier' (the classifier predicts the label)")
    else:
        _require(model.name not in {**nets.CLASSIFIERS, **nets.AUTOENCODERS}, "model.name", model.name,
                 f"a score network for config.task = {config.task!r}, not a classifier or an autoencoder")


def check_autoencoder_run(config: ml_collections.ConfigDict) -> None:
    """data.autoencoder, where set, must be the workdir of an autoencoder run: read from its run.json, nothing
    loaded (launch.py checks it after `validate_config`, which looks at the config alone)."""
    workdir = config.data.autoencoder
    if not workdir:
        return
    _require(config.task == "diffusion", "data.autoencoder", workdir, f"'' for config.task = {config.task!r}")
    saved = read_run_file(workdir)
    _require(saved is not None, "data.autoencoder", workdir,
             "the workdir of a trained autoencoder run (there is no run there)")
    task = saved[0].get("task", "diffusion")
    _require(task == "autoencoder", "data.autoencoder", workdir,
             f"the workdir of an autoencoder run (config.task = 'autoencoder'), not of a {task} run")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid key."""
    for key, registry in CHOICES.items():
        value = _get(config, key)
        _require(value in registry, key, value, f"one of {sorted(registry)}")
    for key in POSITIVE:
        value = _get(config, key)
        _require(_is_number(value) and value > 0, key, value, "a positive number")
    for key in NON_NEGATIVE:
        value = _get(config, key)
        _require(_is_number(value) and value >= 0, key, value, "a non-negative number")
    for key in FRACTIONS:
        value = _get(config, key)
        _require(_is_number(value) and 0.0 <= value <= 1.0, key, value, "a number in [0, 1]")
    _require(0.0 <= config.model.label_dropout < 1.0, "model.label_dropout", config.model.label_dropout,
             "a probability in [0, 1)")
    _check_task(config)
    _require(not (config.model.class_conditional and config.data.context_key), "data.context_key",
             config.data.context_key, "'' for a class-conditional model (one condition per network: labels or an "
             "embedding sequence)")
    _require(not (config.data.latent_cache and (config.data.random_flip or config.data.context_key)),
             "data.latent_cache", config.data.latent_cache, "False with data.random_flip or data.context_key (the "
             "cache holds latents of unflipped images and their labels)")
    _require(config.model.label_conditioning == "embedding" or config.model.class_conditional,
             "model.label_conditioning", config.model.label_conditioning,
             "'embedding' unless model.class_conditional (there are no labels to read)")

    train = config.train
    _require(train.batch_size % train.grad_accum_steps == 0, "train.batch_size", train.batch_size,
             f"a multiple of train.grad_accum_steps = {train.grad_accum_steps}")
    for key in ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.sample_every"):
        value = _get(config, key)
        _require(value % train.steps_per_dispatch == 0, key, value,
                 f"a multiple of train.steps_per_dispatch = {train.steps_per_dispatch}")
    decays = tuple(train.ema_decays)
    _require(len(decays) > 0 and all(0.0 <= d < 1.0 for d in decays), "train.ema_decays", decays,
             "a non-empty tuple of decays in [0, 1)")

    sample = config.sample
    _check_solver_options(config)
    _require(-1 <= sample.ema_index < len(decays), "sample.ema_index", sample.ema_index,
             f"-1 (raw parameters) or an index into train.ema_decays (length {len(decays)})")
    _require(sample.step is None or (isinstance(sample.step, int) and sample.step >= 0), "sample.step", sample.step,
             "None (the newest checkpoint) or a checkpoint's step")
    _require(all(isinstance(label, int) and label >= 0 for label in sample.labels), "sample.labels", sample.labels,
             "a tuple of class indices, e.g. (3, 5)")
    parse_shape(config.bench.example_shape, "bench.example_shape")
    _require(config.edit.intermediates <= config.edit.num_steps, "edit.intermediates", config.edit.intermediates,
             f"at most edit.num_steps = {config.edit.num_steps} (states of the reverse run)")
    evaluation = config.eval
    _require(evaluation.num_samples is None or (isinstance(evaluation.num_samples, int) and evaluation.num_samples
                                                >= 0), "eval.num_samples", evaluation.num_samples,
             "None (10,000 on accelerators, 1,000 on a CPU) or a number of samples")
    _require(evaluation.features in ("", "inception") or evaluation.features.startswith("classifier:"),
             "eval.features", evaluation.features, "'', 'inception' or 'classifier:WORKDIR'")
    levels = config.edit.noise_std
    _require(len(levels) > 0 and all(_is_number(std) and std > 0 for std in levels), "edit.noise_std", levels,
             "a tuple of positive numbers")

    workers = config.data.worker_count
    _require(isinstance(workers, int) and workers >= -1, "data.worker_count", workers,
             "-1 (as many as the host can give) or a number of grain worker processes >= 0")

    mesh = config.mesh
    for key in ("mesh.data", "mesh.fsdp", "mesh.num_devices"):
        value = _get(config, key)
        _require(isinstance(value, int) and (value == -1 or value >= 1), key, value, "-1 or a positive integer")
    _require(not (mesh.data == -1 and mesh.fsdp == -1), "mesh.fsdp", mesh.fsdp, "a size when mesh.data is -1")
