"""The train state: one pytree holding everything a step reads and writes, created directly in its shardings.

    TrainState(step, params, cast_params, ema_params, opt_state, key)

`cast_params` is the copy of the parameters in the dtypes the network computes them in (`param_casts`), written
by each update and not checkpointed: `for_checkpoint` drops it and `with_cast_params` rebuilds it on restore.
`key` is the raw uint32 data of the run's base PRNG key; step s draws its randomness from
fold_in(key, s), so a run resumed at step s draws exactly what the uninterrupted run drew. `ema_params` holds one
exponential moving average of the parameters per configured decay d:  ema <- d ema + (1 - d) params.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffax import parallel
from diffax.train import param_casts
from diffax.train.packing import Packing
from diffax.train.setup import Experiment


@flax.struct.dataclass
class TrainState:
    """step () int32; params; cast_params {path: array}; ema_params (one params tree per EMA decay); opt_state;
    key (2,) uint32 base key."""

    step: jax.Array
    params: Any
    cast_params: param_casts.Copy
    ema_params: tuple[Any, ...]
    opt_state: optax.OptState
    key: jax.Array


def update_ema(ema_params: tuple[Any, ...], params: Any, decays: Sequence[float]) -> tuple[Any, ...]:
    """ema <- d ema + (1 - d) params, for each decay d."""
    def average(ema: Any, decay: float) -> Any:
        return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)

    return tuple(average(ema, decay) for decay, ema in zip(decays, ema_params, strict=True))


def network_cast_dtypes(experiment: Experiment) -> dict[str, Any]:
    """{path: dtype} of the parameters to keep a cast copy of (`param_casts.cast_dtypes` of the network in training
    mode); {} when config.train.cast_params_once is off."""
    if not experiment.config.train.cast_params_once:
        return {}
    params = jax.eval_shape(experiment.init_params, jax.random.PRNGKey(0))
    net_fn = lambda p: experiment.net_fn(p, train=True, dropout_key=jax.random.PRNGKey(0))(  # noqa: E731
        *experiment.dummy_inputs())
    return param_casts.cast_dtypes(net_fn, params)


def _init_fn(experiment: Experiment, optimizer: optax.GradientTransformation, num_ema: int,
             cast_dtypes: dict[str, Any]):
    def init(seed: jax.Array) -> TrainState:
        root = jax.random.PRNGKey(seed)
        params = experiment.init_params(jax.random.fold_in(root, 0))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          cast_params=param_casts.make_copy(params, cast_dtypes), ema_params=(params,) * num_ema,
                          opt_state=optimizer.init(params), key=jax.random.fold_in(root, 1))

    return init


def abstract_state(experiment: Experiment, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                   num_ema: int, fsdp: bool, min_fsdp_size: int) -> TrainState:
    """The train state as ShapeDtypeStructs carrying their NamedShardings (`parallel.tree_shardings`)."""
    init = _init_fn(experiment, optimizer, num_ema, network_cast_dtypes(experiment))
    abstract = jax.eval_shape(init, jnp.zeros((), jnp.uint32))
    shardings = parallel.tree_shardings(abstract, mesh, fsdp=fsdp, min_fsdp_size=min_fsdp_size)
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract, shardings)


def state_packing(abstract: TrainState, max_elements: int) -> Packing:
    """The packing of `abstract`'s small replicated leaves (`packing`), the cast copy excepted: the copy exists so
    that each bf16 bias enters the step as a parameter of its own, the form in which XLA put it in cuBLASLt's
    epilogue (benchmarks/NOTES v5); a slice of a packed buffer has not been measured to keep it there."""
    packable = jax.tree.map(lambda _: True, abstract).replace(
        cast_params=jax.tree.map(lambda _: False, abstract.cast_params))
    return Packing.of(abstract, max_elements, packable)


def create_train_state(experiment: Experiment, optimizer: optax.GradientTransformation, abstract: TrainState,
                       seed: int) -> TrainState:
    """A fresh state of `abstract`'s shapes, dtypes and shardings, computed by a jitted init whose outputs land in
    their shardings (no host round trip, and valid across processes: each process only materializes its own
    shards)."""
    init = jax.jit(_init_fn(experiment, optimizer, len(abstract.ema_params), _dtypes_of(abstract.cast_params)),
                   out_shardings=_shardings_of(abstract))
    return init(jnp.asarray(seed, jnp.uint32))


def for_checkpoint(state: TrainState) -> TrainState:
    """What a checkpoint holds: the state without its derived `cast_params`."""
    return state.replace(cast_params={})


def with_cast_params(restored: TrainState, abstract: TrainState) -> TrainState:
    """A state restored from `for_checkpoint(abstract)`, its cast copy rebuilt as `abstract` says."""
    dtypes = _dtypes_of(abstract.cast_params)
    cast = jax.jit(lambda params: param_casts.make_copy(params, dtypes),
                   out_shardings=_shardings_of(abstract.cast_params))
    return restored.replace(cast_params=cast(restored.params))


def _shardings_of(abstract: Any) -> Any:
    return jax.tree.map(lambda leaf: leaf.sharding, abstract)


def _dtypes_of(abstract_copy: dict[str, jax.ShapeDtypeStruct]) -> dict[str, Any]:
    return {path: leaf.dtype for path, leaf in abstract_copy.items()}
