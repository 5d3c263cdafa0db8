"""`--mode train`: build or resume the state, feed global batches, log, checkpoint, write sample grids.

    WORKDIR/run.json        the run's resolved config and data spec (`diffax.run_config`), written before step 1
    WORKDIR/checkpoints/    Orbax checkpoints (train state, data position, config, checksums); the newest intact one
                            is resumed, a damaged one set aside (`diffax.checkpoint`)
    WORKDIR/metrics.jsonl   one JSON line per logged step (with its wall time)
    WORKDIR/tensorboard/    TensorBoard event file(s): scalars, sample grids, the config
    WORKDIR/samples/        step_<step, 7 digits>.png sample grids from the EMA parameters (diffusion runs)

The steps run through `diffax.train.runner.StepRunner`, which owns any speed machinery. Signals (`diffax.signals`):
a SIGTERM or Ctrl-C in the loop makes the run save a checkpoint after the step in flight and return; `run` then
exits 0 (SIGTERM) or 130 (Ctrl-C). A non-finite loss stops the run with an error naming the step, before any
checkpoint of the diverged state is written. Metrics stay on device between log steps, so the host does not wait for
every step; it waits once, for the first step, so that rates and the ETA leave compilation out.
"""

from __future__ import annotations

import signal
import sys
import time

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from diffax import console, generate, parallel, signals
from diffax.checkpoint import Checkpointer
from diffax.evaluation import grid
from diffax.experiment import Experiment
from diffax.latents import build_latent_experiment, training_data
from diffax.run_config import read_run_file, write_run_file
from diffax.train import metrics as metrics_lib
from diffax.train.optimizer import task_optimizer
from diffax.train.runner import StepRunner
from diffax.train.state import TrainState, config_abstract_state, create_train_state, restorable_fields


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf."""


def _stop_requested(step: int, log_step: bool) -> bool:
    """Whether a signal asks the loop to stop after `step`, agreed by every process: one process checks its flag
    each step; several agree on SIGTERM through JAX's preemption sync point each step and on Ctrl-C at log steps
    (a collective there costs nothing: the metrics are gathered then anyway)."""
    if jax.process_count() == 1:
        return signals.requested() is not None
    if multihost_utils.reached_preemption_sync_point(step):
        return True
    if not log_step:
        return False
    flags = multihost_utils.process_allgather(np.int32(signals.requested() is not None))
    return bool(np.any(flags))


def restore_or_create(experiment: Experiment, mesh: jax.sharding.Mesh, checkpointer: Checkpointer,
                      step: int | None = None, *, heal: bool = False
                      ) -> tuple[TrainState, TrainState, bytes | None]:
    """(state, its abstract state with shardings, data-iterator state or None): checkpoint `step`'s (default: the
    newest; with heal=True the newest intact one, damaged ones set aside) if the workdir has one, else a fresh
    state."""
    config = experiment.config
    optimizer = task_optimizer(config)
    abstract = config_abstract_state(experiment, optimizer, mesh)
    if checkpointer.latest_step() is not None:
        fields, data_state = checkpointer.restore(restorable_fields(abstract), step, heal=heal and step is None)
        state = abstract.replace(**fields)  # An empty model_state is not read: the abstract's {} stands.
        if heal:
            console.info(f"resuming from {checkpointer.directory} at step {int(jax.device_get(state.step))}")
        return state, abstract, data_state
    return create_train_state(experiment, optimizer, abstract, config.seed), abstract, None


def write_samples(experiment: Experiment, state: TrainState, mesh: jax.sharding.Mesh, workdir: str,
                  step: int, writer: metrics_lib.MetricWriter | None = None) -> str:
    """Writes WORKDIR/samples/step_<step, 7 digits>.png (and returns its path), and the image to `writer`'s
    TensorBoard: config.sample's sampler on the EMA parameters of config.sample.ema_index (-1: raw), samples
    0..num_samples - 1 of seed config.seed."""
    config = experiment.config
    sample_config = config.sample
    params = state.params if sample_config.ema_index == -1 else state.ema_params[sample_config.ema_index]
    samples = generate.generate_samples(
        experiment, params, generate.SamplerSettings.from_config(sample_config), mesh,
        num_samples=sample_config.num_samples, seed=config.seed, batch_size=sample_config.batch_size,
        cond=generate.sample_conditions(experiment, sample_config.num_samples, sample_config.labels))
    path = str(epath.Path(workdir) / "samples" / f"step_{step:07d}.png")
    if jax.process_index() == 0:
        image = grid.samples_png(samples, path, experiment.is_image, columns=experiment.num_classes)
        if writer is not None:
            writer.write_image(step, "samples", image)
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
    """Trains (or resumes) the run of `config` in `workdir` to config.train.num_steps, or until a signal stops it
    (`diffax.signals.requested()` then says which); returns the final state."""
    train_config = config.train
    saved = read_run_file(workdir)
    experiment = build_latent_experiment(config, saved[1] if saved else None)
    if jax.process_index() == 0:
        write_run_file(workdir, config, experiment.spec)
    mesh = parallel.mesh_from_config(config.mesh)
    parallel.check_batch_size(train_config.batch_size, mesh.devices.size, train_config.grad_accum_steps)
    checkpointer = Checkpointer(workdir, max_to_keep=train_config.keep_checkpoints)
    try:
        state, abstract, data_state = restore_or_create(experiment, mesh, checkpointer, heal=True)
        checkpointer.trim()
        return _loop(experiment, mesh, checkpointer, state, abstract, data_state, workdir)
    finally:
        checkpointer.close()


def _loop(experiment: Experiment, mesh: jax.sharding.Mesh, checkpointer: Checkpointer, state: TrainState,
          abstract: TrainState, data_state: bytes | None, workdir: str) -> TrainState:
    config = experiment.config
    train_config = config.train
    step = int(jax.device_get(state.step))
    runner = StepRunner(experiment, task_optimizer(config), mesh, abstract)
    held = runner.hold(state)  # What the runner takes and returns.
    del state
    iterator, to_inputs = training_data(experiment, global_batch_size=train_config.batch_size, seed=config.seed)
    if data_state is not None:
        iterator.set_state(data_state)
    batch_sharding = parallel.batch_sharding(mesh, leading_axes=1)
    per_call = runner.steps_per_call
    writer = metrics_lib.MetricWriter(workdir)
    writer.write_config(config)
    progress = metrics_lib.Progress(train_config.num_steps, step, train_config.progress_bar)
    pending: list[tuple[int, dict]] = []
    window_start, window_examples = time.time(), 0
    timed = False
    grids = experiment.task == "diffusion"  # A classifier or an autoencoder has no samples to show.
    console.info(f"training {config.model.name} from step {step} to {train_config.num_steps} on "
                 f"{mesh.devices.size} devices")
    try:
        with signals.handled():
            while step < train_config.num_steps:
                local = [next(iterator) for _ in range(per_call)]
                stacked = {key: np.stack([b[key] for b in local]) for key in local[0]}
                batches = to_inputs(parallel.global_batch(stacked, batch_sharding, example_axis=1))
                held, step_metrics = runner(held, batches)
                pending.append((step, step_metrics))
                step += per_call
                window_examples += per_call * train_config.batch_size
                if not timed:  # Compiled and run once: rates count from here.
                    jax.block_until_ready(step_metrics)
                    progress.started(step)
                    signals.first_step_done()
                    timed = True
                done = step >= train_config.num_steps
                log_step = done or step % train_config.log_every == 0
                stop = _stop_requested(step, log_step or step % train_config.checkpoint_every == 0)
                save = done or stop or step % train_config.checkpoint_every == 0
                if save or log_step:
                    _flush(pending, writer, progress, window_start, window_examples)
                    window_start, window_examples = time.time(), 0
                if save:
                    checkpointer.save(step, runner.state(held), iterator.get_state(), config)
                if stop:
                    how = "interrupted" if signals.requested() == signal.SIGINT else "preempted"
                    console.warning(f"{how}: saved step {step}, exiting")
                    break
                if grids and train_config.sample_every and step % train_config.sample_every == 0 and not done:
                    write_samples(experiment, runner.state(held), mesh, workdir, step, writer)
            else:
                if grids:
                    console.info(f"wrote {write_samples(experiment, runner.state(held), mesh, workdir, step, writer)}")
    finally:
        checkpointer.wait()
        progress.close()
        writer.close()
    return runner.state(held)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The mode's entry point (`launch.py --mode train`): exits 130 when a Ctrl-C stopped the run."""
    train(config, workdir)
    if signals.exit_code():
        sys.exit(signals.exit_code())


def restore_train_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                        ) -> tuple[Experiment, jax.sharding.Mesh, TrainState]:
    """(experiment, mesh, whole train state) of checkpoint `step` (default: the newest) of the run in `workdir`,
    placed on `config`'s mesh."""
    saved = read_run_file(workdir)
    experiment = build_latent_experiment(config, saved[1] if saved else None)
    mesh = parallel.mesh_from_config(config.mesh)
    checkpointer = Checkpointer(workdir, max_to_keep=None)
    try:
        checkpointer.check_step(step)
        state, _, _ = restore_or_create(experiment, mesh, checkpointer, step)
    finally:
        checkpointer.close()
    return experiment, mesh, state
