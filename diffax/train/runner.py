"""The step runner: how optimizer steps reach the devices, and the one home of the train step's speed machinery.

    runner = StepRunner(experiment, optimizer, mesh, abstract)
    held = runner.hold(state)                 # the form the loop keeps between calls
    held, metrics = runner(held, batches)     # batches {"image": (n, B, ...), "label": (n, B)}; metrics (n,) each
    state = runner.state(held)                # the TrainState again, to checkpoint or sample

Three mechanisms, each off unless the config asks (the train state and the checkpoint never depend on them):
  train.steps_per_dispatch = n   n optimizer steps per jitted call (`lax.scan`), so the host launches one program
                                 per n steps; n = 1 runs the step without a loop, since XLA:CPU runs loop bodies
                                 several times slower than straight-line code.
  train.cast_params = True       the runner keeps, beside the state, a copy of the parameters that the network
                                 declares it computes in its compute dtype (`computes_in_dtype(path)`, e.g. DiT's):
                                     copy[path] = params[path].astype(compute dtype)
                                 written after each update; the step's forward and backward read it. On GPUs a bias
                                 that enters the program as a bf16 parameter, not as the output of a cast, stays in
                                 cuBLASLt's epilogue. The values are those of the cast the network would do itself,
                                 and the gradient of a cast is the upcast cotangent: training is bitwise unchanged.
  train.flat_state = True        the runner holds the parameters, each EMA and the optimizer's per-parameter
                                 moments as one flat float32 vector each (`FlatLayout`), so clipping, AdamW and the
                                 EMA run as a few fusions over whole vectors instead of a few per parameter array
                                 (on GPUs each is a kernel); the network reads its arrays as slices of the vector.
                                 The same training up to the order of the gradient norm's float32 sum.
Their measured effect on the shipped recipes is in benchmarks/NOTES.md.

The autoencoder's step has two programs: a call whose steps all come before disc_start
(`autoencoder_step.first_adversarial_step`) runs the one without the discriminator. To choose, the runner counts on
the host the steps it has run since `hold`, so choosing costs no device sync; each program compiles on first use.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffax import parallel
from diffax.experiment import DTYPES, Experiment
from diffax.train.autoencoder_step import first_adversarial_step, make_autoencoder_step_fn
from diffax.train.state import TrainState
from diffax.train.step import Batch, Metrics, make_step_fn

Copy = dict[str, jax.Array]


def declared_casts(experiment: Experiment, abstract_params: Any) -> dict[str, Any]:
    """{keystr(path): compute dtype} of the parameters the network declares it computes in its compute dtype;
    {} for float32 compute or train.cast_params off."""
    dtype = DTYPES[experiment.config.model.compute_dtype]
    if not experiment.config.train.cast_params or dtype == DTYPES["float32"]:
        return {}
    computes_in_dtype = getattr(experiment.model, "computes_in_dtype", None)
    if computes_in_dtype is None:
        raise ValueError(f"config.train.cast_params = True: network {experiment.config.model.name!r} declares no "
                         f"parameters computed in its compute dtype (a `computes_in_dtype(path)` method)")
    return {jax.tree_util.keystr(path): dtype for path, _ in jax.tree_util.tree_leaves_with_path(abstract_params)
            if computes_in_dtype(tuple(key.key for key in path))}


def _select(tree: Any, paths: dict[str, Any]) -> dict[str, Any]:
    """{keystr(path): leaf} of the leaves of `tree` whose paths are keys of `paths`."""
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if jax.tree_util.keystr(path) in paths}


def _make_copy(params: Any, dtypes: dict[str, Any]) -> Copy:
    return {path: leaf.astype(dtypes[path]) for path, leaf in _select(params, dtypes).items()}


def _with_copy(params: Any, copy: Copy) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, leaf: copy.get(jax.tree_util.keystr(path), leaf), params)


class FlatLayout:
    """The flat held form of a train state (train.flat_state): params -> one (P,) float32 vector (the leaves of the
    parameter tree raveled and concatenated: the 1-D leaves, biases and norm scales, first, then the others, each
    group in tree order), each EMA likewise, and in the optimizer state each subtree shaped like the parameters
    (AdamW's moments) likewise; step, key and scalars unchanged.

    `tree` slices the 1-D leaves out of a copy of their block, made behind an optimization barrier: XLA's GPU fusion
    cost model (as read in its source) prices a slice fused into a reader as reading the whole operand, so a small
    slice of the whole vector stays a kernel of its own, a copy; slices of the small block are fused more often
    (benchmarks/NOTES.md, session 10, has the measurement)."""

    def __init__(self, abstract: TrainState):
        leaves = jax.tree.leaves(abstract.params)
        if {leaf.dtype for leaf in leaves} != {jnp.dtype(jnp.float32)}:
            raise ValueError("config.train.flat_state = True: every parameter must be float32 (one flat vector)")
        if not all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(abstract)):
            raise ValueError("config.train.flat_state = True needs a replicated train state: set config.mesh.fsdp = 1")
        self._treedef = jax.tree.structure(abstract.params)
        self._shapes = [leaf.shape for leaf in leaves]
        small = [i for i, leaf in enumerate(leaves) if leaf.ndim <= 1]
        large = [i for i, leaf in enumerate(leaves) if leaf.ndim > 1]
        self._order = small + large
        self._small_size = sum(leaves[i].size for i in small)
        self._splits = [np.cumsum([leaves[i].size for i in group])[:-1].tolist() for group in (small, large)]
        self._abstract_opt_state = abstract.opt_state

    def _is_params(self, node: Any) -> bool:
        return jax.tree.structure(node) == self._treedef

    def held(self, tree: Any) -> jax.Array:
        """A parameter-shaped tree -> its (P,) vector, written once: behind an optimization barrier, where XLA would
        otherwise fuse the concatenate of every leaf into each reader (the gradient norm, AdamW), which is slow
        (benchmarks/NOTES.md, "The flat gradient written once")."""
        leaves = jax.tree.leaves(tree)
        return jax.lax.optimization_barrier(jnp.concatenate([jnp.ravel(leaves[i]) for i in self._order]))

    def tree(self, vector: jax.Array) -> Any:
        """A (P,) vector -> the parameter-shaped tree (slices of it; the 1-D leaves of a copy of their block)."""
        blocks = (jax.lax.optimization_barrier(vector[:self._small_size]), vector[self._small_size:])
        parts = [part for block, splits in zip(blocks, self._splits) if block.size for part in jnp.split(block, splits)]
        leaves = [None] * len(self._shapes)
        for i, part in zip(self._order, parts):
            leaves[i] = part.reshape(self._shapes[i])
        return jax.tree.unflatten(self._treedef, leaves)

    def to_held(self, state: TrainState) -> TrainState:
        opt_state = jax.tree.map(lambda node: self.held(node) if self._is_params(node) else node, state.opt_state,
                                 is_leaf=self._is_params)
        return state.replace(params=self.held(state.params), ema_params=tuple(map(self.held, state.ema_params)),
                             opt_state=opt_state)

    def from_held(self, held: TrainState) -> TrainState:
        opt_state = jax.tree.map(lambda template, node: self.tree(node) if self._is_params(template) else node,
                                 self._abstract_opt_state, held.opt_state, is_leaf=self._is_params)
        return held.replace(params=self.tree(held.params), ema_params=tuple(map(self.tree, held.ema_params)),
                            opt_state=opt_state)


class StepRunner:
    """Jitted optimizer steps over a state of `abstract`'s shardings (the held buffers are donated)."""

    def __init__(self, experiment: Experiment, optimizer: optax.GradientTransformation, mesh: Mesh,
                 abstract: TrainState):
        self.steps_per_call = experiment.config.train.steps_per_dispatch
        self._casts = declared_casts(experiment, abstract.params)
        if experiment.task == "autoencoder":
            steps = {adversarial: make_autoencoder_step_fn(experiment, optimizer, mesh, adversarial)
                     for adversarial in (False, True)}
            self._first_adversarial = first_adversarial_step(experiment.config)
        else:
            steps, self._first_adversarial = {True: make_step_fn(experiment, optimizer, mesh)}, 0
        self._next_step = 0
        if experiment.config.train.flat_state and experiment.task == "autoencoder":
            raise ValueError("config.train.flat_state = True: not for autoencoder runs (two optimizers, BatchNorm)")
        layout = FlatLayout(abstract) if experiment.config.train.flat_state else None
        tree = (lambda params: params) if layout is None else layout.tree

        def program(step):
            def one_step(held, batch: Batch):
                state, copy = held
                extra = {} if layout is None else {"layout": layout}
                state, metrics = step(state, batch, _with_copy(tree(state.params), copy), **extra)
                return (state, _make_copy(tree(state.params), self._casts)), metrics

            def call(held, batches: Batch):
                if self.steps_per_call == 1:
                    held, metrics = one_step(held, jax.tree.map(lambda x: x[0], batches))
                    return held, jax.tree.map(lambda x: x[None], metrics)
                return jax.lax.scan(one_step, held, batches)

            return jax.jit(call, in_shardings=(held_shardings, parallel.batch_sharding(mesh, 1)),
                           out_shardings=(held_shardings, parallel.replicated(mesh)), donate_argnums=0)

        shardings = jax.tree.map(lambda leaf: leaf.sharding, abstract)
        copy_shardings = _select(shardings.params, self._casts)
        if layout is None:
            held_shardings, self._to_held, self._from_held = (shardings, copy_shardings), None, None
        else:
            flat = jax.eval_shape(layout.to_held, abstract)
            held_shardings = (jax.tree.map(lambda _: parallel.replicated(mesh), flat), copy_shardings)
            self._to_held = jax.jit(layout.to_held, out_shardings=held_shardings[0])
            self._from_held = jax.jit(layout.from_held, out_shardings=shardings)
        self._make_copy = jax.jit(lambda params: _make_copy(params, self._casts), out_shardings=copy_shardings)
        self._programs = {key: program(step) for key, step in steps.items()}

    def hold(self, state: TrainState) -> Any:
        """The state in the form the runner takes and returns: (state or its flat form, cast copy). Reads its step
        (one sync)."""
        self._next_step = int(jax.device_get(state.step))
        copy = self._make_copy(state.params)
        return (state if self._to_held is None else self._to_held(state)), copy

    def state(self, held: Any) -> TrainState:
        """The TrainState of a held form."""
        return held[0] if self._from_held is None else self._from_held(held[0])

    def _program(self, batches: Batch):
        """The program for the next call's steps (module docstring)."""
        last = self._next_step + jax.tree.leaves(batches)[0].shape[0] - 1
        return self._programs[last >= self._first_adversarial]

    def __call__(self, held: Any, batches: Batch) -> tuple[Any, Metrics]:
        program = self._program(batches)
        self._next_step += jax.tree.leaves(batches)[0].shape[0]
        return program(held, batches)

    def lower(self, held: Any, batches: Batch):
        """The jitted call for the next steps lowered for these arguments (benchmarks compile it to time it)."""
        return self._program(batches).lower(held, batches)
