"""The training loop: build or resume the state, feed global batches, log, checkpoint, write sample grids.

    WORKDIR/checkpoints/    Orbax checkpoints (train state, data position, config); the newest is resumed
    WORKDIR/metrics.jsonl   one JSON line per logged step
    WORKDIR/tensorboard/    TensorBoard event file(s)
    WORKDIR/samples/        step_<step, 7 digits>.png sample grids from the EMA parameters

Between jitted calls the train state is held packed (`packing`: few arrays to launch) and unpacked only to
checkpoint or sample. A SIGTERM (preemption) makes the run save a checkpoint after the step in flight and return
normally (exit 0). A non-finite loss stops the run with an error naming the step, before any checkpoint of the
diverged state is written. Metrics stay on device between log steps, so the host does not wait for every step.
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

from diffax import parallel
from diffax.checkpoint import Checkpointer
from diffax.evaluation import generate, grid
from diffax.train import metrics as metrics_lib
from diffax.train import setup
from diffax.train.optimizer import make_optimizer
from diffax.train.state import (TrainState, abstract_state, create_train_state, for_checkpoint, state_packing,
                                with_cast_params)
from diffax.train.step import make_train_step


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


def build_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The config's mesh over its first `mesh.num_devices` devices (all if -1)."""
    devices = jax.devices()
    if config.mesh.num_devices != -1:
        if jax.process_count() > 1:
            raise ValueError(f"config.mesh.num_devices = {config.mesh.num_devices}: expected -1 (all devices) in a "
                             f"run of {jax.process_count()} processes")
        devices = devices[:config.mesh.num_devices]
    return parallel.make_mesh(config.mesh.data, config.mesh.fsdp, devices)


def restore_or_create(experiment: setup.Experiment, mesh: jax.sharding.Mesh, checkpointer: Checkpointer,
                      ) -> tuple[TrainState, TrainState, bytes | None]:
    """(state, its abstract state with shardings, data-iterator state or None): the newest checkpoint's, or a fresh
    state."""
    config = experiment.config
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    abstract = abstract_state(experiment, optimizer, mesh, num_ema=len(config.train.ema_decays),
                              fsdp=config.mesh.fsdp > 1, min_fsdp_size=config.mesh.min_fsdp_size)
    if checkpointer.latest_step() is not None:
        logging.info("resuming from %s at step %d", checkpointer.directory, checkpointer.latest_step())
        state, data_state = checkpointer.restore(for_checkpoint(abstract))
        return with_cast_params(state, abstract), abstract, data_state
    return create_train_state(experiment, optimizer, abstract, config.seed), abstract, None


def sampling_params(state: TrainState, ema_index: int) -> Any:
    """The parameters to sample from: EMA `ema_index`, or the raw parameters for -1."""
    return state.params if ema_index == -1 else state.ema_params[ema_index]


def write_samples(experiment: setup.Experiment, state: TrainState, mesh: jax.sharding.Mesh, workdir: str,
                  step: int) -> str:
    """Writes WORKDIR/samples/step_<step, 7 digits>.png (and returns its path) from the configured EMA parameters."""
    config = experiment.config
    samples = generate.generate_samples(experiment, sampling_params(state, config.sample.ema_index), config.sample,
                                        mesh, seed=config.seed)
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
    experiment = setup.build_experiment(config)
    mesh = build_mesh(config)
    parallel.check_batch_size(train_config.batch_size, mesh.devices.size, train_config.grad_accum_steps)
    checkpointer = Checkpointer(workdir, max_to_keep=train_config.keep_checkpoints)
    state, abstract, data_state = restore_or_create(experiment, mesh, checkpointer)
    step = int(jax.device_get(state.step))
    packing = state_packing(abstract, train_config.pack_max_elements)
    packed = packing.packed(state)  # What the step takes and returns; unpacked to save or sample.
    del state
    iterator = setup.make_iterator(config, split=config.data.split, global_batch_size=train_config.batch_size,
                                   seed=config.seed)
    if data_state is not None:
        iterator.set_state(data_state)
    train_step = make_train_step(experiment, make_optimizer(config.optim, train_config.num_steps), mesh, packing)
    batch_sharding = parallel.batch_sharding(mesh, leading_axes=1)
    per_dispatch = train_config.steps_per_dispatch
    writer = metrics_lib.MetricWriter(workdir)
    progress = metrics_lib.Progress(train_config.num_steps, train_config.batch_size, step, train_config.progress_bar)
    preemption = _Preemption()
    pending: list[tuple[int, dict]] = []
    window_start, window_examples = time.time(), 0
    logging.info("training %s from step %d to %d on %d devices", config.model.name, step, train_config.num_steps,
                 mesh.devices.size)
    try:
        while step < train_config.num_steps:
            local = [next(iterator) for _ in range(per_dispatch)]
            batches = parallel.global_batch({key: np.stack([b[key] for b in local]) for key in local[0]},
                                            batch_sharding, example_axis=1)
            packed, step_metrics = train_step(packed, batches)
            pending.append((step, step_metrics))
            step += per_dispatch
            window_examples += per_dispatch * train_config.batch_size
            preempted = preemption.reached(step)
            done = step >= train_config.num_steps
            save = done or preempted or step % train_config.checkpoint_every == 0
            if save or step % train_config.log_every == 0:
                _flush(pending, writer, progress, window_start, window_examples)
                window_start, window_examples = time.time(), 0
            if save:
                checkpointer.save(step, for_checkpoint(packing.unpacked(packed)), iterator.get_state(), config)
            if preempted:
                logging.warning("preempted: saved step %d, exiting", step)
                break
            if train_config.sample_every and step % train_config.sample_every == 0 and not done:
                write_samples(experiment, packing.unpacked(packed), mesh, workdir, step)
        else:
            logging.info("wrote %s", write_samples(experiment, packing.unpacked(packed), mesh, workdir, step))
    finally:
        checkpointer.wait()
        checkpointer.close()
        progress.close()
        writer.close()
        preemption.close()
    return packing.unpacked(packed)


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str
                    ) -> tuple[setup.Experiment, jax.sharding.Mesh, TrainState]:
    """(experiment, mesh, state) of the newest checkpoint in `workdir`, placed on the config's mesh."""
    experiment = setup.build_experiment(config)
    mesh = build_mesh(config)
    checkpointer = Checkpointer(workdir, max_to_keep=None)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: train first (--mode train)")
    state, _, _ = restore_or_create(experiment, mesh, checkpointer)
    checkpointer.close()
    return experiment, mesh, state
