"""Samples from an experiment's parameters: the guided denoiser, and numbered samples that depend only on their
number.

Sample i of a draw with seed s starts from the noise normal(fold_in(noise_key, i)) and takes every solver draw
from fold_in(solver_key, i), where (noise_key, solver_key) = split(PRNGKey(s)). So sample i is the same, up to
float rounding of the network, whatever the batch size, the number of devices or the other samples drawn beside it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.sharding import Mesh

from diffax import parallel
from diffax.experiment import Experiment, make_iterator
from diffax.nets.embeddings import null_condition
from diffax.sampling import classifier_free_guidance, sample
from diffax.schedules import time_grid

# edit(x0_fn, inputs {name: (B, ...)}, noise (B, *example), keys (B,)) -> (B, *example): what one batch computes.
Edit = Callable[[Any, dict[str, jax.Array], jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How to sample: solver, time grid, solver options, guidance scale and clipping (the config's `sample`)."""

    method: str = "dpmpp_2m"
    num_steps: int = 50
    grid: str = "uniform"
    t_end: float = 0.0
    options: tuple[tuple[str, Any], ...] = ()
    guidance_scale: float = 1.0
    clip_denoised: bool = False

    @classmethod
    def from_config(cls, sample_config: ml_collections.ConfigDict, **changes: Any) -> SamplerSettings:
        """The settings of a config's `sample` section; `changes` (None values ignored) replace fields."""
        settings = cls(sample_config.method, sample_config.num_steps, sample_config.grid, sample_config.t_end,
                       tuple(sorted(sample_config.options.to_dict().items())), sample_config.guidance_scale,
                       sample_config.clip_denoised)
        changes = {key: value for key, value in changes.items() if value is not None}
        if isinstance(changes.get("options"), dict):
            changes["options"] = tuple(sorted(changes["options"].items()))
        return dataclasses.replace(settings, **changes)

    def describe(self) -> str:
        """A file-name-safe summary, e.g. 'ddim-eta1_50-trailing_g2_clip'."""
        method = "-".join([self.method, *(f"{key}{value:g}" if isinstance(value, (int, float)) else f"{key}{value}"
                                          for key, value in self.options)])
        parts = [method, f"{self.num_steps}-{self.grid}" + (f"-to{self.t_end:g}" if self.t_end else ""),
                 f"g{self.guidance_scale:g}"]
        return "_".join(parts + (["clip"] if self.clip_denoised else []))


def make_denoiser(experiment: Experiment, params: Any, cond: jax.Array | None, guidance_scale: float = 1.0,
                  clip_denoised: bool = False):
    """The sampler's denoiser x0_fn(x_t, t): conditioned on `cond` (labels (B,) or embedding sequences (B, L, E)),
    guided with `guidance_scale` against the null condition (`diffax.nets.embeddings.null_condition`: the null
    class, or the zero sequence), and clipped to the data range [-1, 1] when clip_denoised (as DDPM's and ADM's
    samplers do).

    At scale 1 the guided denoiser equals the conditional one, so the unconditional half-batch is skipped.
    """
    denoise = experiment.x0_fn(params)
    if cond is None:
        x0_fn = denoise
    elif guidance_scale == 1.0:
        def x0_fn(x, t):
            return denoise(x, t, cond)
    else:
        null = null_condition(cond, experiment.num_classes)
        x0_fn = classifier_free_guidance(denoise, cond, null, guidance_scale, experiment.schedule)
    if clip_denoised:
        return lambda x, t: jnp.clip(x0_fn(x, t), -1.0, 1.0)
    return x0_fn


def sample_labels(num_samples: int, num_classes: int | None, classes: Sequence[int] = ()) -> np.ndarray | None:
    """Labels cycling through `classes` (default 0, 1, ..., num_classes - 1), or None for unconditional networks.
    A grid with num_classes columns then shows one class per column."""
    if not num_classes:
        return None
    classes = np.asarray(classes if len(classes) else np.arange(num_classes), np.int32)
    if classes.min() < 0 or classes.max() >= num_classes:
        raise ValueError(f"labels {classes.tolist()}: expected classes in [0, {num_classes})")
    return np.resize(classes, num_samples)


def sample_conditions(experiment: Experiment, num_samples: int, classes: Sequence[int] = (),
                      contexts: np.ndarray | None = None) -> np.ndarray | None:
    """What `num_samples` samples are conditioned on: labels cycling through `classes` (`sample_labels`), the
    embedding sequences `contexts` (N, L, E) (default: those of the first N held-out examples, data.eval_split,
    in the pipeline's order), or None for an unconditional network."""
    if experiment.conditioning == "labels":
        return sample_labels(num_samples, experiment.num_classes, classes)
    if experiment.conditioning != "embeddings":
        return None
    if contexts is None:
        config = experiment.config
        contexts = next(make_iterator(config, split=config.data.eval_split, global_batch_size=num_samples,
                                      seed=config.seed, train=False))["context"]
    contexts = np.asarray(contexts, np.float32)
    expected = (num_samples, *experiment.spec.context_shape)
    if contexts.shape != expected:
        raise ValueError(f"contexts of shape {contexts.shape}: expected {expected}, one sequence per sample")
    return contexts


def null_conditions(experiment: Experiment, num_samples: int) -> np.ndarray | None:
    """The null condition of `num_samples` samples, which gives the unconditional denoiser: the null class (N,) or
    zero sequences (N, L, E) (`diffax.nets.embeddings.null_condition`); None for an unconditional network."""
    template = experiment.dummy_inputs()[2]
    if template is None:
        return None
    return np.asarray(null_condition(jnp.repeat(template, num_samples, axis=0), experiment.num_classes))


def _keys(seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    noise_key, solver_key = jax.random.split(jax.random.PRNGKey(seed))
    return noise_key, solver_key


def sample_noise(seed: jax.Array, indices: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The starting noise (B, *shape) of samples number `indices` (B,) of the draw with `seed`."""
    noise_key = _keys(seed)[0]
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), shape))(indices)


def sampling_edit(experiment: Experiment, settings: SamplerSettings) -> Edit:
    """The edit that samples from pure noise with `settings` (the generator's)."""
    grid = time_grid(experiment.schedule, settings.num_steps, settings.grid, t_end=settings.t_end)
    options = dict(settings.options)

    def edit(x0_fn, inputs, noise, keys):
        del inputs
        return sample(x0_fn, experiment.schedule, noise, grid, settings.method, keys, **options)

    return edit


def sampler_params(experiment: Experiment, params: Any) -> Any:
    """The parameters a sampler runs on: `params`, or with `sample.cast_params` (a speed option, off unless a recipe
    turns it on) each float leaf that the network only ever uses converted to one narrower dtype (its compute
    dtype) already converted. The casts then run once per sampler call instead of in every denoiser call, and on
    GPUs a bias that enters a product as a bf16 array rather than as a cast's output stays in cuBLASLt's epilogue.
    The network computes with the same values. Which leaves qualify is read off the network's jaxpr."""
    if not experiment.config.sample.get("cast_params", False):
        return params
    leaves, treedef = jax.tree.flatten(params)
    abstract = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    inputs = experiment.dummy_inputs()
    closed = jax.make_jaxpr(lambda flat: experiment.net_fn(treedef.unflatten(flat), train=False)(*inputs))(abstract)
    dtypes = narrowing_casts(closed.jaxpr, len(leaves))
    return treedef.unflatten([leaf if dtype is None else leaf.astype(dtype) for leaf, dtype in zip(leaves, dtypes)])


def narrowing_casts(jaxpr: jax.extend.core.Jaxpr, count: int) -> list[Any]:
    """For each of the first `count` inputs of `jaxpr`: the dtype that all its uses convert it to, where every use
    (through nested jit calls) is a conversion to one floating dtype narrower than its own; else None."""
    uses = {var: set() for var in jaxpr.invars[:count]}

    def visit(jaxpr, origin_of):  # origin_of: a variable of `jaxpr` -> the input of the outer jaxpr it carries
        for var in jaxpr.outvars:
            if isinstance(var, jax.extend.core.Var) and var in origin_of:
                uses[origin_of[var]].add(None)
        for eqn in jaxpr.eqns:
            passed = {position: origin_of[var] for position, var in enumerate(eqn.invars)
                      if isinstance(var, jax.extend.core.Var) and var in origin_of}
            if not passed:
                continue
            if eqn.primitive.name == "convert_element_type":
                uses[passed[0]].add(eqn.params["new_dtype"])
            elif eqn.primitive.name in ("pjit", "jit", "closed_call"):
                inner = getattr(eqn.params["jaxpr"], "jaxpr", eqn.params["jaxpr"])
                visit(inner, {inner.invars[position]: origin for position, origin in passed.items()})
            else:
                for origin in passed.values():
                    uses[origin].add(None)

    visit(jaxpr, {var: var for var in uses})

    def narrower(var, dtypes) -> Any:
        if len(dtypes) != 1 or None in dtypes:
            return None
        (dtype,) = dtypes
        own = var.aval.dtype
        return dtype if (jnp.issubdtype(own, jnp.floating) and jnp.issubdtype(dtype, jnp.floating)
                         and jnp.dtype(dtype).itemsize < jnp.dtype(own).itemsize) else None

    return [narrower(var, dtypes) for var, dtypes in uses.items()]


def make_generator(experiment: Experiment, settings: SamplerSettings, mesh: Mesh, batch_size: int,
                   edit: Edit | None = None):
    """A jitted generate(params, seed, indices (B,), cond (labels (B,), sequences (B, L, E) or None), inputs
    {name: (B, ...)}) -> (B, *example), replicated: edit(x0_fn, inputs, noise, keys) with the guided denoiser,
    the noise (B, *example) and solver keys (B,) of samples number `indices` of the draw with `seed` (module
    docstring); by default `sampling_edit`. The denoiser runs on `sampler_params(experiment, params)`. The batch
    is split over the mesh's devices when batch_size is a multiple of their count.
    """
    edit = edit or sampling_edit(experiment, settings)
    shape = experiment.example_shape

    def generate(params: Any, seed: jax.Array, indices: jax.Array, cond: jax.Array | None,
                 inputs: dict[str, jax.Array]) -> jax.Array:
        noise = sample_noise(seed, indices, shape)
        solver_key = _keys(seed)[1]
        keys = jax.vmap(lambda i: jax.random.fold_in(solver_key, i))(indices)
        if batch_size % mesh.devices.size == 0:  # Split the examples over the devices (else replicated work).
            noise, inputs = jax.lax.with_sharding_constraint((noise, inputs), parallel.batch_sharding(mesh))
        x0_fn = make_denoiser(experiment, sampler_params(experiment, params), cond, settings.guidance_scale,
                              settings.clip_denoised)
        return edit(x0_fn, inputs, noise, keys)

    return jax.jit(generate, out_shardings=parallel.replicated(mesh))


def generate_samples(experiment: Experiment, params: Any, settings: SamplerSettings, mesh: Mesh, *,
                     num_samples: int, seed: int, batch_size: int, cond: np.ndarray | None = None,
                     edit: Edit | None = None, inputs: dict[str, np.ndarray] | None = None,
                     progress: bool | None = False) -> np.ndarray:
    """Samples 0..num_samples - 1 of the draw with `seed` (N, *example) in the network's data space (decoded to
    images (N, *image_shape) in [-1, 1] for latent runs: the one place latents become images), in calls of
    `batch_size` (the last call padded); cond: labels (N,) for class-conditional networks, embedding sequences
    (N, L, E) for networks conditioned on them (`Experiment.conditioning`). With `edit` and its `inputs`
    {name: (N, ...)} (images to edit, masks), each sample is that edit of its inputs (`make_generator`).
    progress: a tqdm bar over the samples on stderr (process 0); None: when stderr is a terminal."""
    if experiment.conditioning and cond is None:
        raise ValueError(f"a network conditioned on {experiment.conditioning} needs them (cond)")
    if cond is not None and len(cond) != num_samples:
        raise ValueError(f"cond has {len(cond)} rows for {num_samples} samples")
    batch_size = min(batch_size, num_samples)
    generate = make_generator(experiment, settings, mesh, batch_size, edit)
    inputs = inputs or {}
    chunks = []
    show_bar = (sys.stderr.isatty() if progress is None else progress) and jax.process_index() == 0
    bar = tqdm.tqdm(total=num_samples, unit="sample", dynamic_ncols=True, disable=not show_bar)
    for start in range(0, num_samples, batch_size):
        indices = np.arange(start, start + batch_size, dtype=np.int32)
        chunk_cond = None if cond is None else _padded(cond[start:start + batch_size], batch_size)
        chunk_inputs = {name: _padded(value[start:start + batch_size], batch_size) for name, value in inputs.items()}
        samples = np.asarray(parallel.to_host(generate(params, jnp.uint32(seed), indices, chunk_cond, chunk_inputs)))
        chunks.append(samples if experiment.latents is None else experiment.latents.decode(samples))
        bar.update(min(batch_size, num_samples - start))
    bar.close()
    return np.concatenate(chunks)[:num_samples]


def _padded(values: np.ndarray, size: int) -> np.ndarray:
    """values (n, ...) with n <= size, its last row repeated to `size` rows."""
    return np.concatenate([values, np.repeat(values[-1:], size - len(values), axis=0)]) if len(values) < size \
        else values


def to_data_range(samples: np.ndarray, is_image: bool) -> np.ndarray:
    """Images in [-1, 1] -> uint8 in 0..255 (rounded, clipped); other data (points) unchanged, float32."""
    if not is_image:
        return np.asarray(samples, np.float32)
    return np.clip(np.round((np.asarray(samples, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
