"""`--mode eval`: held-out metrics of a trained run's checkpoint (config.sample.step, default the newest), for the
raw and every EMA parameter set, and the quality of its samples.

    loss          (eval.loss) the training objective on eval.num_batches batches of data.eval_split, with noise
                  and times drawn from PRNGKey(seed) per batch (the same draws for every parameter set)
    bits_per_dim  (pixel images, not latents; eval.bits_per_dim) the probability-flow ODE likelihood of
                  eval.bpd_examples held-out images, uniformly dequantized (diffax.likelihood), with the
                  unconditional denoiser
    samples       eval.num_samples samples with the config's sampler settings and EMA (sample.*), scored by
                  FCD / FID, KID, precision/recall, density/coverage, or exactly on mixtures
                  (`diffax.modes.sample_quality`)

The run's own config is used (WORKDIR/run.json), with the command line's eval and sample overrides.
Held-out results go to WORKDIR/eval_<step>.json, sample scores to WORKDIR/eval/<step>_<sampler settings>.json
(named like the sample files, so other settings never overwrite them), and both, as `eval/...` scalars, to
metrics.jsonl and TensorBoard. A classifier run is evaluated by `diffax.modes.evaluate_classifier` (held-out
accuracy), an autoencoder run by `diffax.modes.evaluate_autoencoder` (reconstruction PSNR and SSIM).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from diffax import console, likelihood, parallel
from diffax.experiment import Experiment, make_iterator
from diffax.modes import evaluate_autoencoder, evaluate_classifier
from diffax.modes.sample import sample_file_stem
from diffax.modes.sample_quality import evaluate_samples
from diffax.latents import encode_batch
from diffax.run import Run, load_run
from diffax.train.metrics import MetricWriter
from diffax.train.step import make_loss_fn


def _parameter_sets(run: Run) -> dict[str, Any]:
    decays = run.config.train.ema_decays
    return {"raw": run.params(ema=-1), **{f"ema_{decay:g}": run.params(ema=index) for index, decay in enumerate(decays)}}


def heldout_loss(experiment: Experiment, parameter_sets: dict[str, Any], mesh) -> dict[str, float]:
    """Mean held-out loss per parameter set."""
    config = experiment.config
    batch_size = config.eval.batch_size
    parallel.check_batch_size(batch_size, mesh.devices.size)
    iterator = make_iterator(config, split=config.data.eval_split, global_batch_size=batch_size,
                                   seed=config.seed, train=False)
    loss_fn = make_loss_fn(experiment)
    batch_loss = jax.jit(lambda params, batch, key: loss_fn(params, batch, key, False)[0],
                         out_shardings=parallel.replicated(mesh))
    totals = dict.fromkeys(parameter_sets, 0.0)
    sharding = parallel.batch_sharding(mesh)
    for index in range(config.eval.num_batches):
        batch = encode_batch(experiment, parallel.global_batch(next(iterator), sharding))
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), index)
        for name, params in parameter_sets.items():
            totals[name] += float(parallel.to_host(batch_loss(params, batch, key)))
    return {name: total / config.eval.num_batches for name, total in totals.items()}


def heldout_bits_per_dim(experiment: Experiment, parameter_sets: dict[str, Any], mesh) -> dict[str, float]:
    """Mean bits/dim of eval.bpd_examples held-out images per parameter set (one ODE solve over the batch)."""
    config = experiment.config
    count = config.eval.bpd_examples
    parallel.check_batch_size(count, mesh.devices.size)
    iterator = make_iterator(config, split=config.data.eval_split, global_batch_size=count, seed=config.seed,
                                   train=False)
    images = parallel.global_batch({"image": next(iterator)["image"]}, parallel.batch_sharding(mesh))["image"]

    def bits(params, images, key):
        integers = jnp.round((images + 1.0) * 127.5)  # The pipeline's [-1, 1] back to 0..255.
        return likelihood.image_bits_per_dim(experiment.x0_fn(params), experiment.schedule, integers, key,
                                             rtol=config.eval.bpd_rtol, atol=config.eval.bpd_rtol)

    bits = jax.jit(bits, out_shardings=parallel.replicated(mesh))
    key = jax.random.PRNGKey(config.seed)
    results = {name: float(np.mean(parallel.to_host(bits(params, images, key))))
               for name, params in parameter_sets.items()}
    for name in [name for name, value in results.items() if not np.isfinite(value)]:
        console.warning(f"bits/dim of the {name} parameters is {results[name]}: the likelihood ODE did not finish "
                        f"within its step limit at eval.bpd_rtol = {config.eval.bpd_rtol} (a stiff velocity field)")
    return results


def _write_json(path: epath.Path, record: dict) -> None:
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))


def evaluate(trained: Run, config: ml_collections.ConfigDict) -> tuple[dict[str, float], dict | None]:
    """(held-out results {"eval/loss/<set>": ..., "eval/bits_per_dim/<set>": ...}, the sample-quality record or
    None) of a loaded run under `config` (its own with eval/sample changes), written to the run's workdir."""
    experiment, mesh, step, workdir = trained.experiment, trained.mesh, trained.step, trained.workdir
    heldout = {}
    # Bits/dim are of the network's data: pixel images, not latents (whose density omits the decoder's).
    bits_per_dim = experiment.is_image and config.eval.bits_per_dim and experiment.latents is None
    if config.eval.loss or bits_per_dim:
        parameter_sets = _parameter_sets(trained)
        if config.eval.loss:
            heldout.update({f"eval/loss/{name}": value
                            for name, value in heldout_loss(experiment, parameter_sets, mesh).items()})
        if bits_per_dim:
            heldout.update({f"eval/bits_per_dim/{name}": value
                            for name, value in heldout_bits_per_dim(experiment, parameter_sets, mesh).items()})
        _write_json(epath.Path(workdir) / f"eval_{step:07d}.json", {"step": step, **heldout})
    record = evaluate_samples(trained, config)
    if record is not None:
        record["name"] = sample_file_stem(trained, trained.sampler_settings(), record["num_samples"])
        _write_json(epath.Path(workdir) / "eval" / f"{record['name']}.json", record)
    return heldout, record


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the checkpoint; returns {"eval/loss/<set>": ..., "eval/bits_per_dim/<set>": ...,
    "eval/<score>/<sampler settings>": ...}, also written to metrics.jsonl and TensorBoard."""
    if config.task == "classifier":
        return evaluate_classifier.run(config, workdir)
    if config.task == "autoencoder":
        return evaluate_autoencoder.run(config, workdir)
    trained = load_run(workdir, config.sample.step, config=config)
    results, record = evaluate(trained, config)
    if record is not None:
        tag = record["name"].split("_", 1)[1]  # The settings without the step.
        results.update({f"eval/{name}/{tag}": value for name, value in record["scores"].items()})
    trained.close()
    writer = MetricWriter(workdir)
    writer.write(trained.step, results)
    writer.close()
    console.info(f"eval at step {trained.step}: {results}")
    return results
