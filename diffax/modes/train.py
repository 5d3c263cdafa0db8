"""`--mode train`: build or resume the state, feed global batches, log, checkpoint, write sample grids.

    WORKDIR/run.json        the run's resolved config and data spec (`diffax.run_config`), written before step 1
    WORKDIR/checkpoints/    Orbax checkpoints (train state, data position, config); the newest is resumed
    WORKDIR/metrics.jsonl   one JSON line per logged step
    WORKDIR/tensorboard/    TensorBoard event file(s)
    WORKDIR/samples/        step_<step, 7 digits>.png sample grids from the EMA parameters

The steps run through `diffax.train.runner.StepRunner`, which owns any speed machinery. A SIGTERM (preemption)
makes the run save a checkpoint after the step in flight and return normally (exit 0). A non-finite loss stops the
run with an error naming the step, before any checkpoint of the diverged state is written. Metrics stay on device
between log steps, so the host does not wait for every step.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffax import generate, parallel
from diffax.checkpoint import Checkpointer
from diffax.evaluation import grid
from diffax.experiment import Experiment, build_experiment, make_iterator
from diffax.run_config import read_run_file, write_run_file
from diffax.train import metrics as metrics_lib
from diffax.train.optimizer import make_optimizer
from diffax.train.runner import StepRunner
from diffax.train.state import FIELDS, TrainState, config_abstract_state, create_train_state


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf."""


class _Preemption:
    """Turns SIGTERM into a flag that the loop checks between steps (all processes agree on the step)."""

    def __init__(self):
        self._signalled = False
        self._multiprocess = jax.process_count() > 1
        if not self._multiprocess:  # With several processes JAX's coordination service catches SIGTERM.
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint after this step and exiting")
        self._signalled = True

    def reached(self, step: int) -> bool:
        if self._multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        if not self._multiprocess:
            signal.signal(signal.SIGTERM, self._previous)


def restore_or_create(experiment: Experiment, mesh: jax.sharding.Mesh, checkpointer: Checkpointer,
                      step: int | None = None) -> tuple[TrainState, TrainState, bytes | None]:
    """(state, its abstract state with shardings, data-iterator state or None): checkpoint `step`'s (default: the
    newest) if the workdir has one, else a fresh state."""
    config = experiment.config
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    abstract = config_abstract_state(experiment, optimizer, mesh)
    if checkpointer.latest_step() is not None:
        step = checkpointer.check_step(step)
        logging.info("resuming from %s at step %d", checkpointer.directory, step)
        fields, data_state = checkpointer.restore({field: getattr(abstract, field) for field in FIELDS}, step)
        return TrainState(**fields), abstract, data_state
    return create_train_state(experiment, optimizer, abstract, config.seed), abstract, None


def write_samples(experiment: Experiment, state: TrainState, mesh: jax.sharding.Mesh, workdir: str,
                  step: int) -> str:
    """Writes WORKDIR/samples/step_<step, 7 digits>.png (and returns its path): config.sample's sampler on the
    EMA parameters of config.sample.ema_index (-1: raw), samples 0..num_samples - 1 of seed config.seed."""
    config = experiment.config
    sample_config = config.sample
    params = state.params if sample_config.ema_index == -1 else state.ema_params[sample_config.ema_index]
    samples = generate.generate_samples(
        experiment, params, generate.SamplerSettings.from_config(sample_config), mesh,
        num_samples=sample_config.num_samples, seed=config.seed, batch_size=sample_config.batch_size,
        labels=generate.sample_labels(sample_config.num_samples, experiment.num_classes, sample_config.labels))
    path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
        grid.samples_png(samples, path, experiment.is_image, columns=experiment.num_classes)
    return path


def _flush(pending: list[tuple[int, dict]], writer: metrics_lib.MetricWriter, progress: metrics_lib.Progress,
           started: float, examples: int) -> None:
    """Fetches pending per-step metrics, checks the loss is finite, writes the mean over the window."""
    if not pending:
        return
    fetched = [(first, parallel.to_host(m)) for first, m in pending]
    steps = np.concatenate([first + np.arange(len(m["loss"])) for first, m in fetched])
    values = {key: np.concatenate([m[key] for _, m in fetched]) for key in fetched[0][1]}
    bad = ~np.isfinite(values["loss"])
    if bad.any():
        raise NonFiniteLossError(f"loss is {values['loss'][bad][0]} at step {int(steps[bad][0]) + 1}; stopping "
                                 f"without checkpointing the diverged state")
    elapsed = time.time() - started
    scalars = {key: float(np.mean(value)) for key, value in values.items()}
    scalars["learning_rate"] = float(values["learning_rate"][-1])
    scalars.update(steps_per_second=len(steps) / elapsed, examples_per_second=examples / elapsed)
    last_step = int(steps[-1]) + 1
    writer.write(last_step, scalars)
    progress.update(last_step, scalars["loss"])
    pending.clear()


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the run of `config` in `workdir` to config.train.num_steps; returns the final state."""
    train_config = config.train
    saved = read_run_file(workdir)
    experiment = build_experiment(config, saved[1] if saved else None)
    if jax.process_index() == 0:
        write_run_file(workdir, config, experiment.spec)
    mesh = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_size(train_config.batch_size, mesh.devices.size, train_config.grad_accum_steps)
    checkpointer = Checkpointer(workdir, max_to_keep=train_config.keep_checkpoints)
    state, abstract, data_state = restore_or_create(experiment, mesh, checkpointer)
    step = int(jax.device_get(state.step))
    runner = StepRunner(experiment, make_optimizer(config.optim, train_config.num_steps), mesh, abstract)
    held = runner.hold(state)  # What the runner takes and returns.
    del state
    iterator = make_iterator(config, split=config.data.split, global_batch_size=train_config.batch_size,
                             seed=config.seed)
    if data_state is not None:
        iterator.set_state(data_state)
    batch_sharding = parallel.batch_sharding(mesh, leading_axes=1)
    per_call = runner.steps_per_call
    writer = metrics_lib.MetricWriter(workdir)
    progress = metrics_lib.Progress(train_config.num_steps, train_config.batch_size, step, train_config.progress_bar)
    preemption = _Preemption()
    pending: list[tuple[int, dict]] = []
    window_start, window_examples = time.time(), 0
    logging.info("training %s from step %d to %d on %d devices", config.model.name, step, train_config.num_steps,
                 mesh.devices.size)
    try:
        while step < train_config.num_steps:
            local = [next(iterator) for _ in range(per_call)]
            batches = parallel.global_batch({key: np.stack([b[key] for b in local]) for key in local[0]},
                                            batch_sharding, example_axis=1)
            held, step_metrics = runner(held, batches)
            pending.append((step, step_metrics))
            step += per_call
            window_examples += per_call * train_config.batch_size
            preempted = preemption.reached(step)
            done = step >= train_config.num_steps
            save = done or preempted or step % train_config.checkpoint_every == 0
            if save or step % train_config.log_every == 0:
                _flush(pending, writer, progress, window_start, window_examples)
                window_start, window_examples = time.time(), 0
            if save:
                checkpointer.save(step, runner.state(held), iterator.get_state(), config)
            if preempted:
                logging.warning("preempted: saved step %d, exiting", step)
                break
            if train_config.sample_every and step % train_config.sample_every == 0 and not done:
                write_samples(experiment, runner.state(held), mesh, workdir, step)
        else:
            logging.info("wrote %s", write_samples(experiment, runner.state(held), mesh, workdir, step))
    finally:
        checkpointer.wait()
        checkpointer.close()
        progress.close()
        writer.close()
        preemption.close()
    return runner.state(held)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The mode's entry point (`launch.py --mode train`)."""
    train(config, workdir)


def restore_train_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                        ) -> tuple[Experiment, jax.sharding.Mesh, TrainState]:
    """(experiment, mesh, whole train state) of checkpoint `step` (default: the newest) of the run in `workdir`,
    placed on `config`'s mesh."""
    saved = read_run_file(workdir)
    experiment = build_experiment(config, saved[1] if saved else None)
    mesh = parallel.mesh_from_config(config.mesh)
    checkpointer = Checkpointer(workdir, max_to_keep=None)
    checkpointer.check_step(step)
    state, _, _ = restore_or_create(experiment, mesh, checkpointer, step)
    checkpointer.close()
    return experiment, mesh, state
