"""`--mode eval` on a classifier run (config.task = 'classifier'): held-out accuracy and cross-entropy of a
checkpoint (config.sample.step, default the newest), for the raw and every EMA parameter set, on every example of
data.eval_split:

    accuracy = mean_i [argmax_k z_ik = y_i],    loss = mean_i (logsumexp_k z_ik - z_iy_i)    (logits z, labels y)

Results go to WORKDIR/eval_<step>.json (with the number of examples) and, as `eval/...` scalars, to metrics.jsonl
and TensorBoard, as the diffusion evaluation's do.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
from etils import epath

from diffax import console, data, generate
from diffax.experiment import make_iterator
from diffax.run import ClassifierRun, load_run
from diffax.train.metrics import MetricWriter


def heldout_examples(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, C), int32 labels (N,)): every example of the config's data.eval_split, in the
    pipeline's order for config.seed."""
    split = config.data.eval_split
    count = data.dataset_spec(config.data.name, split=split, data_dir=config.data.data_dir,
                              image_size=config.data.image_size).num_examples
    batch = next(make_iterator(config, split=split, global_batch_size=count, seed=config.seed, num_epochs=1,
                               train=False))
    return generate.to_data_range(batch["image"], is_image=True), np.asarray(batch["label"], np.int32)


def accuracy_and_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of logits (N, K) against labels (N,) (module docstring), in float64."""
    logits = np.asarray(logits, np.float64)
    peak = logits.max(axis=1)
    log_normalizer = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
    loss = np.mean(log_normalizer - logits[np.arange(len(labels)), labels])
    return float(np.mean(logits.argmax(axis=1) == labels)), float(loss)


def evaluate(trained: ClassifierRun, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"eval/accuracy/<set>": ..., "eval/loss/<set>": ...} for the raw parameters and each EMA."""
    decays = trained.config.train.ema_decays
    parameter_sets = {"raw": -1, **{f"ema_{decay:g}": index for index, decay in enumerate(decays)}}
    results = {}
    for name, ema in parameter_sets.items():
        accuracy, loss = accuracy_and_loss(trained.logits(images, ema=ema), labels)
        results.update({f"eval/accuracy/{name}": accuracy, f"eval/loss/{name}": loss})
    return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the classifier's checkpoint; returns the results of `evaluate`."""
    trained = load_run(workdir, config.sample.step, config=config)
    images, labels = heldout_examples(config)
    results = evaluate(trained, images, labels)
    step = trained.step
    trained.close()
    if jax.process_index() == 0:
        record = {"step": step, "examples": len(labels), **results}
        (epath.Path(workdir) / f"eval_{step:07d}.json").write_text(json.dumps(record, indent=1))
    writer = MetricWriter(workdir)
    writer.write(step, results)
    writer.close()
    console.info(f"eval at step {step} on {len(labels)} held-out examples: {results}")
    return results
