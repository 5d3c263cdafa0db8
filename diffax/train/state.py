"""The train state: one pytree holding everything a step reads and writes, created directly in its shardings.

    TrainState(step, params, ema_params, opt_state, key, model_state)

`key` is the raw uint32 data of the run's base PRNG key; step s draws its randomness from fold_in(key, s), so a
run resumed at step s draws exactly what the uninterrupted run drew. `ema_params` holds one exponential moving
average of the parameters per configured decay d:  ema <- d_t ema + (1 - d_t) params, where after the update of
step t (0-based)

    d_t = min(d, (1 + t) / (10 + t))    with warm-up (config train.ema_warmup; TensorFlow's
                                        ExponentialMovingAverage with num_updates = t)
    d_t = d                             without

The warm-up forgets the random initialization within the first steps (d_0 = 0.1, d_99 ~ 0.92), so a short run's
EMA is an average of trained parameters; it reaches d after t = (10 d - 1) / (1 - d) steps (899 for 0.99, 9989 for
0.999), after which both rules agree.
`model_state` holds what the step updates other than by the optimizer: {} for diffusion and classifier runs, the
discriminator's BatchNorm statistics for an autoencoder (`Experiment.init_variables`). Checkpoints written before it
existed hold no such field; a state whose model_state is empty does not ask for it (`restorable_fields`).
The checkpoint holds exactly this tree (`diffax.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffax import parallel
from diffax.experiment import Experiment

FIELDS = ("step", "params", "ema_params", "opt_state", "key", "model_state")


@flax.struct.dataclass
class TrainState:
    """step () int32; params; ema_params (one params tree per EMA decay); opt_state; key (2,) uint32 base key;
    model_state (non-trained variables, e.g. BatchNorm statistics; {} when none)."""

    step: jax.Array
    params: Any
    ema_params: tuple[Any, ...]
    opt_state: optax.OptState
    key: jax.Array
    model_state: Any = flax.struct.field(default_factory=dict)


def restorable_fields(abstract: TrainState) -> dict[str, Any]:
    """{field: abstract tree} of the fields a checkpoint must hold for `abstract`: all of FIELDS but an empty
    model_state (older checkpoints have none, and there is nothing to read)."""
    return {field: getattr(abstract, field) for field in FIELDS
            if field != "model_state" or jax.tree.leaves(abstract.model_state)}


def ema_decay(decay: float, step: jax.Array | None) -> jax.Array | float:
    """d_t = min(d, (1 + t) / (10 + t)) at update `step` t (module docstring); `decay` itself when step is None."""
    if step is None:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: tuple[Any, ...], params: Any, decays: Sequence[float],
               step: jax.Array | None = None) -> tuple[Any, ...]:
    """ema <- d_t ema + (1 - d_t) params for each decay d; with `step` (the update's 0-based index) the warm-up
    d_t = min(d, (1 + t) / (10 + t)), else d_t = d."""
    def average(ema: Any, decay: float) -> Any:
        chex.assert_trees_all_equal_shapes(ema, params)  # Each EMA mirrors the parameters leaf by leaf.
        decay = ema_decay(decay, step)
        return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)

    return tuple(average(ema, decay) for decay, ema in zip(decays, ema_params, strict=True))


def _init_fn(experiment: Experiment, optimizer: optax.GradientTransformation, num_ema: int):
    def init(seed: jax.Array) -> TrainState:
        root = jax.random.PRNGKey(seed)
        params, model_state = experiment.init_variables(jax.random.fold_in(root, 0))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=(params,) * num_ema,
                          opt_state=optimizer.init(params), key=jax.random.fold_in(root, 1), model_state=model_state)

    return init


def abstract_state(experiment: Experiment, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                   num_ema: int, fsdp: bool, min_fsdp_size: int) -> TrainState:
    """The train state as ShapeDtypeStructs carrying their NamedShardings (`parallel.tree_shardings`)."""
    abstract = jax.eval_shape(_init_fn(experiment, optimizer, num_ema), jnp.zeros((), jnp.uint32))
    shardings = parallel.tree_shardings(abstract, mesh, fsdp=fsdp, min_fsdp_size=min_fsdp_size)
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract, shardings)


def create_train_state(experiment: Experiment, optimizer: optax.GradientTransformation, abstract: TrainState,
                       seed: int) -> TrainState:
    """A fresh state of `abstract`'s shapes, dtypes and shardings, computed by a jitted init whose outputs land in
    their shardings (no host round trip, and valid across processes: each process only materializes its own
    shards)."""
    init = jax.jit(_init_fn(experiment, optimizer, len(abstract.ema_params)),
                   out_shardings=jax.tree.map(lambda leaf: leaf.sharding, abstract))
    return init(jnp.asarray(seed, jnp.uint32))


def config_abstract_state(experiment: Experiment, optimizer: optax.GradientTransformation,
                          mesh: Mesh) -> TrainState:
    """`abstract_state` with the EMA count and FSDP settings of the experiment's config."""
    config = experiment.config
    return abstract_state(experiment, optimizer, mesh, num_ema=len(config.train.ema_decays),
                          fsdp=config.mesh.fsdp > 1, min_fsdp_size=config.mesh.min_fsdp_size)
