"""`--mode eval` on an autoencoder run (config.task = 'autoencoder'): how well a checkpoint (config.sample.step,
default the newest) reconstructs every image of data.eval_split, for the raw and every EMA parameter set.

Each image x (uint8) is encoded to its posterior mean and decoded (`AutoencoderRun.reconstruct`), the result
rounded to uint8 x_hat; then, averaged over the images,

    psnr = 10 log10(255^2 / mean (x - x_hat)^2)            (`diffax.evaluation.image_quality.psnr`)
    ssim = SSIM(x, x_hat), data range 255, Gaussian window 11, sigma 1.5 (`diffax.evaluation.ssim`)

as LDM reports its autoencoders (Rombach et al. 2022, Table 8: PSNR and SSIM of reconstructions). Results go to
WORKDIR/eval_<step>.json (with the number of images) and, as `eval/...` scalars, to metrics.jsonl and TensorBoard,
as the other evaluations do; WORKDIR/eval/reconstructions_<step>.png shows the first 16 held-out images (top row)
over their reconstructions by the first EMA (bottom row).
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
from etils import epath

from diffax import console
from diffax.evaluation import grid
from diffax.evaluation.image_quality import psnr
from diffax.evaluation.ssim import ssim
from diffax.modes.evaluate_classifier import heldout_examples
from diffax.run import AutoencoderRun, load_run
from diffax.train.metrics import MetricWriter


def reconstruction_scores(images: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """{"psnr": mean dB, "ssim": mean SSIM} of uint8 reconstructions (N, H, W, C) against the images (finite PSNR:
    an exact reconstruction counts as 100 dB)."""
    per_image = np.minimum(psnr(reconstructions, images), 100.0)
    similarity = ssim(images.astype(np.float32), reconstructions.astype(np.float32), data_range=255.0)
    return {"psnr": float(np.mean(per_image)), "ssim": float(np.mean(np.asarray(similarity)))}


FIGURE_IMAGES = 16


def write_figure(trained: AutoencoderRun, images: np.ndarray, path: epath.Path) -> None:
    """A PNG of the first FIGURE_IMAGES uint8 images over their reconstructions by the first EMA (every process
    computes, process 0 writes)."""
    originals = images[:FIGURE_IMAGES]
    pair = np.concatenate([originals, trained.reconstruct(originals)]).astype(np.float32) / 127.5 - 1.0
    if jax.process_index() == 0:
        grid.save_png(grid.image_grid(pair, columns=len(originals), scale=max(1, 64 // images.shape[1])), str(path))


def evaluate(trained: AutoencoderRun, images: np.ndarray) -> dict[str, float]:
    """{"eval/psnr/<set>": ..., "eval/ssim/<set>": ...} for the raw parameters and each EMA."""
    decays = trained.config.train.ema_decays
    parameter_sets = {"raw": -1, **{f"ema_{decay:g}": index for index, decay in enumerate(decays)}}
    results = {}
    for name, ema in parameter_sets.items():
        scores = reconstruction_scores(images, trained.reconstruct(images, ema=ema))
        results.update({f"eval/{score}/{name}": value for score, value in scores.items()})
    return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates the autoencoder's checkpoint; returns the results of `evaluate`."""
    trained = load_run(workdir, config.sample.step, config=config)
    images, _ = heldout_examples(config)
    results = evaluate(trained, images)
    step = trained.step
    figure = epath.Path(workdir) / "eval" / f"reconstructions_{step:07d}.png"
    write_figure(trained, images, figure)
    if jax.process_index() == 0:
        record = {"step": step, "examples": len(images), **results}
        (epath.Path(workdir) / f"eval_{step:07d}.json").write_text(json.dumps(record, indent=1))
    trained.close()
    writer = MetricWriter(workdir)
    writer.write(step, results)
    writer.close()
    console.info(f"eval at step {step} on {len(images)} held-out images: {results}; wrote {figure}")
    return results
