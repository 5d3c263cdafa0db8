"""The step runner: how optimizer steps reach the devices, and the one home of the train step's speed machinery.

    runner = StepRunner(experiment, optimizer, mesh, abstract)
    held = runner.hold(state)                 # the form the loop keeps between calls
    held, metrics = runner(held, batches)     # batches {"image": (n, B, ...), "label": (n, B)}; metrics (n,) each
    state = runner.state(held)                # the TrainState again, to checkpoint or sample

Two mechanisms, both off unless the config asks (the state and the checkpoint never depend on them):
  train.steps_per_dispatch = n   n optimizer steps per jitted call (`lax.scan`), so the host launches one program
                                 per n steps; n = 1 runs the step without a loop, since XLA:CPU runs loop bodies
                                 several times slower than straight-line code.
  train.pack_max_elements = m    the state's replicated leaves of at most m numbers cross each call packed into one
                                 buffer per dtype (`packing`): the host's work per call grows with the number of
                                 arrays it passes, and most of a UNet's are small biases and scales.
Their measured effect on the shipped recipes is in benchmarks/NOTES.md.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import Mesh

from diffax import parallel
from diffax.experiment import Experiment
from diffax.train.packing import Packing
from diffax.train.state import TrainState
from diffax.train.step import Batch, Metrics, make_step_fn


class StepRunner:
    """Jitted optimizer steps over a state of `abstract`'s shardings (the state's buffers are donated)."""

    def __init__(self, experiment: Experiment, optimizer: optax.GradientTransformation, mesh: Mesh,
                 abstract: TrainState):
        train_config = experiment.config.train
        self.steps_per_call = train_config.steps_per_dispatch
        self.packing = Packing.of(abstract, train_config.pack_max_elements)
        step = make_step_fn(experiment, optimizer, mesh)

        def steps(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
            if self.steps_per_call == 1:
                state, metrics = step(state, jax.tree.map(lambda x: x[0], batches))
                return state, jax.tree.map(lambda x: x[None], metrics)
            return jax.lax.scan(step, state, batches)

        def call(held, batches: Batch):
            state, metrics = steps(self.packing.unpack(held), batches)
            return self.packing.pack(state), metrics

        self._call = jax.jit(call, in_shardings=(self.packing.shardings, parallel.batch_sharding(mesh, 1)),
                             out_shardings=(self.packing.shardings, parallel.replicated(mesh)), donate_argnums=0)

    def hold(self, state: TrainState) -> Any:
        """The state in the form the runner takes and returns."""
        return self.packing.packed(state)

    def state(self, held: Any) -> TrainState:
        """The TrainState of a held form (packed leaves copied out, the others passed through)."""
        return self.packing.unpacked(held)

    def __call__(self, held: Any, batches: Batch) -> tuple[Any, Metrics]:
        return self._call(held, batches)

    def lower(self, held: Any, batches: Batch):
        """The jitted call lowered for these arguments (benchmarks compile it to time compilation)."""
        return self._call.lower(held, batches)
