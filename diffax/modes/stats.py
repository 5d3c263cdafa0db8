"""`--mode stats`: reference statistics of a data set's features, for FID / FCD against them.

    python launch.py --mode stats --config configs/cifar10_ddpm.py --workdir /tmp/cifar10_stats \
        --config.eval.features=inception --config.eval.inception_weights=/path/pt_inception.npz

writes WORKDIR/stats/<data.name>_<split>_<features>.npz with `mu` (D,) and `sigma` (D, D) (float64; the layout of
ADM's reference batches, which `--config.eval.reference_stats=PATH` reads) and `num_examples`. The split is
eval.stats_split (default data.split: papers' FIDs compare 50,000 samples with the training set). Every full batch
of eval.batch_size is used (choose one that divides the split to use every image); statistics accumulate in float64
over batches, so the split never has to fit in memory.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from etils import epath

from diffax import console
from diffax.evaluation import metrics
from diffax.modes.sample_quality import feature_network, real_feature_batches


def stats_file_name(config: ml_collections.ConfigDict, split: str) -> str:
    """'<data>_<split>_<features>.npz', e.g. 'cifar10_train_inception.npz', 'digits_test_classifier-cls_digits.npz'."""
    features = config.eval.features
    if features.startswith("classifier:"):
        features = "classifier-" + epath.Path(features.removeprefix("classifier:")).name
    return f"{config.data.name}_{split}_{features}.npz".replace("/", "-").replace(":", "-")


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the statistics; returns the file's path."""
    if not config.eval.features:
        raise ValueError("--mode stats needs config.eval.features: 'inception' (with config.eval.inception_weights) "
                         "or 'classifier:WORKDIR'")
    split = config.eval.stats_split or config.data.split
    _, features = feature_network(config.eval)
    statistics = None
    for batch in real_feature_batches(config, split, features):
        statistics = statistics or metrics.FeatureStatistics(batch.shape[1])
        statistics.update(batch)
        console.info(f"{statistics.count} images of {config.data.name} {split}")
    if statistics is None:
        raise ValueError(f"split {split!r} of data set {config.data.name!r} has fewer images than one batch of "
                         f"{config.eval.batch_size}")
    path = epath.Path(workdir) / "stats" / stats_file_name(config, split)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            np.savez(file, mu=statistics.mean(), sigma=statistics.covariance(),
                     num_examples=np.int64(statistics.count))
        console.info(f"wrote the statistics of {statistics.count} images to {path}")
    return str(path)
