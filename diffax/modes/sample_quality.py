"""Sample quality of a trained run: N samples drawn with the run's sampler settings, scored against real data.

    images, eval.features = "classifier:WORKDIR"   FCD (Fréchet distance of a diffax-trained classifier's
                                                  penultimate features, offline), KID, precision/recall,
                                                  density/coverage against the held-out split (data.eval_split)
    images, eval.features = "inception"            FID with the FID InceptionV3 (pool3, 2048-d) and the weights
                                                  the user supplies (eval.inception_weights); with
                                                  eval.reference_stats also the FID against those statistics
    Gaussian-mixture data (toy2d)                 exact scores: mean log-density of the samples under the true
                                                  mixture (beside that of fresh data, the best attainable) and
                                                  the energy distance to fresh data (beside fresh against fresh)

Sample i is drawn from fold_in(PRNGKey(sample.seed), i) (`diffax.generate`), so a score is reproducible by seed and
independent of the batch size and device count. Papers' FIDs use 50,000 samples against the training set's
statistics: small N biases FD upwards (the same N compares runs; `eval.num_samples`).

Features are computed on every process from all samples (the samples are replicated after sampling) and from the
real images each process reads, gathered to all. Real images: up to N of data.eval_split, read in batches that
divide their number where one can (`num_real` records the count).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from diffax import console, generate
from diffax import data as data_lib
from diffax.evaluation import inception, metrics
from diffax.experiment import MixtureSource, data_source, make_iterator
from diffax.run import ClassifierRun, Run, load_run

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 images (N, H, W, C) -> float32 features (N, D)

DEFAULT_SAMPLES = {"cpu": 1_000}  # eval.num_samples None: 10,000 on accelerators, fewer on a CPU.
_REAL_FEATURES: dict[tuple, np.ndarray] = {}  # real_features' results in this process.


def num_samples(eval_config: ml_collections.ConfigDict) -> int:
    """eval.num_samples, or its default for this platform."""
    if eval_config.num_samples is not None:
        return eval_config.num_samples
    return DEFAULT_SAMPLES.get(jax.default_backend(), 10_000)


def feature_network(eval_config: ml_collections.ConfigDict) -> tuple[str, FeatureFn]:
    """(metric prefix "fid" or "fcd", features of uint8 images) for eval.features; loaded once per process."""
    return _feature_network(eval_config.features, eval_config.inception_weights, eval_config.batch_size)


@functools.lru_cache(maxsize=4)
def _feature_network(choice: str, inception_weights: str, batch_size: int) -> tuple[str, FeatureFn]:
    if choice == "inception":
        if not inception_weights:
            raise ValueError("config.eval.features = 'inception' needs config.eval.inception_weights=PATH (an .npz "
                             "from `python -m diffax.convert inception pt_inception-2015-12-05-*.pth PATH`)")
        return "fid", inception.inception_feature_fn(inception_weights, batch_size=batch_size)
    if choice.startswith("classifier:"):
        workdir = choice.removeprefix("classifier:")
        classifier = load_run(workdir)
        if not isinstance(classifier, ClassifierRun):
            raise ValueError(f"config.eval.features = {choice!r}: {workdir!r} holds a diffusion run, not a classifier")
        return "fcd", functools.partial(classifier.features, batch_size=batch_size)
    raise ValueError(f"config.eval.features = {choice!r}: expected 'inception' or 'classifier:WORKDIR'")


def _divisor_batch(count: int, largest: int, multiple_of: int) -> int:
    """The largest batch in [top / 4, top], top = min(largest, count), a multiple of `multiple_of`, that divides
    `count` (so no image is dropped), else top rounded down to a multiple of `multiple_of` (the last partial batch
    is then dropped): small batches would make reading slow."""
    top = min(largest, count)
    for batch in range(top, max(top // 4, 1) - 1, -1):
        if count % batch == 0 and batch % multiple_of == 0:
            return batch
    return top - top % multiple_of


def real_feature_batches(config: ml_collections.ConfigDict, split: str, features: FeatureFn,
                         limit: int | None = None) -> Iterator[np.ndarray]:
    """Features (b, D) of `split`'s images, each batch gathered from all processes, until `limit` features (None:
    the whole split). The batch (at most eval.batch_size) divides the number read where one can, so every image
    counts; else the last partial batch is dropped."""
    available = data_lib.dataset_spec(config.data.name, split=split, data_dir=config.data.data_dir,
                                      image_size=config.data.image_size).num_examples
    wanted = available if limit is None else min(limit, available)
    batch = _divisor_batch(wanted, config.eval.batch_size, jax.process_count())
    if batch == 0:
        raise ValueError(f"eval.batch_size {config.eval.batch_size} is smaller than the {jax.process_count()} "
                         f"processes")
    iterator = make_iterator(config, split=split, global_batch_size=batch, seed=config.seed, num_epochs=1,
                             train=False)
    seen = 0
    for local in iterator:
        local_features = features(generate.to_data_range(local["image"], is_image=True))
        if jax.process_count() > 1:
            local_features = np.asarray(multihost_utils.process_allgather(local_features, tiled=True))
        yield local_features
        seen += len(local_features)
        if seen >= wanted:
            return


def real_features(config: ml_collections.ConfigDict, split: str, features: FeatureFn, count: int) -> np.ndarray:
    """Features (n, D) of up to `count` images of `split` (n < count when the split is smaller); computed once per
    process for the same data, split, count and features (sweeps score many sampler settings against them)."""
    data = config.data
    key = (config.eval.features, config.eval.inception_weights, data.name, data.data_dir, data.image_size, split,
           count, config.eval.batch_size, config.seed)
    if key not in _REAL_FEATURES:
        batches = list(real_feature_batches(config, split, features, limit=count))
        if not batches:
            raise ValueError(f"split {split!r} of data set {data.name!r} has fewer images than one batch of "
                             f"{min(config.eval.batch_size, count)}")
        _REAL_FEATURES[key] = np.concatenate(batches)[:count]
    return _REAL_FEATURES[key]


def feature_scores(prefix: str, real: np.ndarray, fake: np.ndarray, seed: int) -> dict[str, float]:
    """Fréchet distance, KID (mean and spread over subsets), precision/recall (k = 3), density/coverage (k = 5)."""
    stats = [metrics.FeatureStatistics(real.shape[1]) for _ in range(2)]
    stats[0].update(real)
    stats[1].update(fake)
    kid, kid_std = metrics.kernel_inception_distance(real, fake, seed=seed)
    precision, recall = metrics.precision_recall(real, fake)
    density, coverage = metrics.density_coverage(real, fake)
    return {prefix: metrics.frechet_distance(stats[0].mean(), stats[0].covariance(), stats[1].mean(),
                                             stats[1].covariance()),
            "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall, "density": density,
            "coverage": coverage}


def reference_distance(path: str, fake: np.ndarray) -> float:
    """The Fréchet distance of features (N, D) to reference statistics (an .npz with `mu` (D,), `sigma` (D, D))."""
    with np.load(path, allow_pickle=False) as reference:
        missing = {"mu", "sigma"} - set(reference.files)
        if missing:
            raise ValueError(f"reference statistics {path!r} lack {sorted(missing)} (expected `mu` and `sigma`)")
        mu, sigma = reference["mu"], reference["sigma"]
    if mu.shape != (fake.shape[1],) or sigma.shape != (fake.shape[1],) * 2:
        raise ValueError(f"reference statistics {path!r} have mu {mu.shape}, sigma {sigma.shape}; the features "
                         f"have {fake.shape[1]} dims")
    stats = metrics.FeatureStatistics(fake.shape[1])
    stats.update(fake)
    return metrics.frechet_distance(mu, sigma, stats.mean(), stats.covariance())


def mixture_scores(mixture, samples: np.ndarray, seed: int) -> dict[str, float]:
    """Exact scores of 2-D points against the true Gaussian mixture and a fresh draw of as many data points."""
    fresh = np.asarray(mixture.sample(jax.random.PRNGKey(seed + 1), 2 * len(samples)), np.float64)
    data, other = fresh[:len(samples)], fresh[len(samples):]
    log_prob = jax.jit(mixture.log_prob)
    return {"log_density": float(np.mean(log_prob(samples))), "log_density_data": float(np.mean(log_prob(data))),
            "energy_distance": metrics.energy_distance(samples, data),
            "energy_distance_data": metrics.energy_distance(other, data)}


def evaluate_samples(trained: Run, config: ml_collections.ConfigDict) -> dict | None:
    """Draws eval.num_samples samples with config.sample's settings and scores them (module docstring); None when
    nothing scores them (images without eval.features, or num_samples 0)."""
    count = num_samples(config.eval)
    source = data_source(config.data.name)
    is_mixture = isinstance(source, MixtureSource)
    if count == 0 or not (is_mixture or config.eval.features):
        if count and trained.experiment.is_image:
            console.info("no sample-quality scores: set --config.eval.features=classifier:WORKDIR (a classifier "
                         "run, offline) or =inception with --config.eval.inception_weights=PATH")
        return None
    sample_config = config.sample
    start = time.perf_counter()
    raw = trained.sample(count, labels=sample_config.labels or None, seed=sample_config.seed,
                         ema=sample_config.ema_index, progress=None, raw=True)
    sampling_seconds = time.perf_counter() - start
    samples = generate.to_data_range(raw, trained.experiment.is_image)
    settings = trained.sampler_settings()
    record = {"step": trained.step, "sampler": dataclasses.asdict(settings), "ema_index": sample_config.ema_index,
              "seed": sample_config.seed, "num_samples": count, "sampling_seconds": sampling_seconds,
              "nonfinite_samples": int(np.sum(~np.isfinite(raw.reshape(count, -1)).all(1)))}
    start = time.perf_counter()
    if is_mixture:
        record["scores"] = mixture_scores(source.make_mixture(), samples, config.seed)
    else:
        prefix, features = feature_network(config.eval)
        fake = features(samples)
        real = real_features(config, config.data.eval_split, features, count)
        record.update(features=config.eval.features, num_real=len(real))
        record["scores"] = feature_scores(prefix, real, fake, config.seed)
        if config.eval.reference_stats:
            record["scores"][f"{prefix}_reference"] = reference_distance(config.eval.reference_stats, fake)
            record["reference_stats"] = config.eval.reference_stats
    record["scoring_seconds"] = time.perf_counter() - start
    return record
