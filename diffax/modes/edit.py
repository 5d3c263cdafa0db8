"""`--mode edit`: denoise, img2img or inpaint given images with a trained run (`diffax.run.Run`).

    python launch.py --workdir /tmp/diffax_digits --mode edit --config.edit.task=denoise --config.edit.noise_std=0.2
    python launch.py --workdir /tmp/diffax_digits --mode edit --config.edit.task=inpaint --config.edit.mask=mask.png
    python launch.py --workdir /tmp/diffax_digits --mode edit --config.edit.task=inpaint \
        --config.edit.inpaint_algorithm=repaint

The parameters are the EMA of config.sample.ema_index (-1: raw), the checkpoint config.sample.step. The images
are config.edit.input (a PNG, or an .npz with uint8 `images`), else edit.num_images held-out images of
data.eval_split. Writes, under a name that records the settings,

    WORKDIR/edits/<step>_<task>_<settings>_seed<seed>_n<count>
        .png   a strip per image: original | what the network was given (noisy, masked, ...) | result; for
               denoise, per noise level of edit.noise_std: noisy | edit.intermediates states of the run | result
        .npz   `original` (N, H, W, C), `given` and `result` (N, levels, H, W, C), uint8
        .json  the settings and, for denoise, per noise level the PSNR of the noisy input, of the result and of
               the best Gaussian blur of the noisy input (the classical baseline); for inpaint the mean PSNR of
               the repainted pixels against the original (edit.inpaint_algorithm: posterior or repaint)
"""

from __future__ import annotations

import json

import jax
import ml_collections
import numpy as np
import PIL.Image
from etils import epath

from diffax import console, generate
from diffax.evaluation import grid, image_quality
from diffax.experiment import make_iterator
from diffax.run import Run, load_run, to_masks


def input_images(run: Run, edit: ml_collections.ConfigDict) -> np.ndarray:
    """uint8 (N, H, W, C): the config's input file, or held-out images of the run's data."""
    if edit.input.endswith(".npz"):
        with np.load(edit.input, allow_pickle=False) as saved:
            return np.asarray(saved["images"], np.uint8)
    if edit.input:
        image = np.asarray(PIL.Image.open(edit.input))
        return (image[..., None] if image.ndim == 2 else image)[None]
    iterator = make_iterator(run.config, split=run.config.data.eval_split, global_batch_size=edit.num_images,
                             seed=run.config.seed, train=False)
    return generate.to_data_range(next(iterator)["image"], is_image=True)


def _denoise(run: Run, edit: ml_collections.ConfigDict, images: np.ndarray, labels, seed: int, ema: int):
    """(strip columns: per noise level the noisy images, edit.intermediates states and the result; the noisy and
    denoised images (N, levels, ...); the report's per-level PSNRs)."""
    columns, noisy_levels, results, scores = [], [], [], {}
    for level, std in enumerate(edit.noise_std):
        noisy = images
        if edit.add_noise:
            rng = np.random.default_rng([seed, level])
            noisy = np.clip(np.round(images + 255.0 * std * rng.standard_normal(images.shape)), 0, 255)
            noisy = noisy.astype(np.uint8)
        out = run.denoise(noisy, std, steps=edit.num_steps, intermediates=edit.intermediates, labels=labels,
                          seed=seed, ema=ema)
        states = list(np.moveaxis(out, 1, 0)) if edit.intermediates else [out]  # The result last.
        radius, blur_psnr = image_quality.best_blur(noisy, images)
        scores[f"{std:g}"] = {"noisy_psnr": float(np.mean(image_quality.psnr(noisy, images))),
                              "denoised_psnr": float(np.mean(image_quality.psnr(states[-1], images))),
                              "best_blur_radius": radius, "best_blur_psnr": blur_psnr}
        columns += [noisy, *states]
        noisy_levels.append(noisy)
        results.append(states[-1])
    return columns, np.stack(noisy_levels, 1), np.stack(results, 1), {"psnr_by_noise_std": scores}


def _edit(run: Run, edit: ml_collections.ConfigDict, images: np.ndarray, labels, seed: int, ema: int):
    """(strip columns after the original, what the network was given and the results (N, levels, ...), the
    settings' name, the report), all images uint8."""
    steps = edit.num_steps or None
    if edit.task == "denoise":
        columns, given, results, report = _denoise(run, edit, images, labels, seed, ema)
        levels = "-".join(f"{std:g}" for std in edit.noise_std)
        return columns, given, results, f"std{levels}_steps{edit.num_steps}", report
    if edit.task == "img2img":
        result = run.img2img(images, edit.strength, steps=steps, labels=labels, seed=seed, ema=ema)
        settings = f"strength{edit.strength:g}_{run.sampler_settings(num_steps=steps).describe()}"
        return [images, result], images[:, None], result[:, None], settings, {}
    if edit.mask:
        masks = np.asarray(PIL.Image.open(edit.mask))
    else:
        masks = np.zeros(images.shape[1:3], np.uint8)
        masks[:, images.shape[2] // 2:] = 255
    common = dict(algorithm=edit.inpaint_algorithm, steps=steps, labels=labels, seed=seed, ema=ema)
    if edit.inpaint_algorithm == "posterior":
        result = run.inpaint(images, masks, cg_steps=edit.cg_steps, **common)
        settings = f"posterior-cg{edit.cg_steps}_{run.sampler_settings(num_steps=steps).describe()}"
    else:
        result = run.inpaint(images, masks, jump_length=edit.jump_length, jump_n_sample=edit.jump_n_sample,
                             **common)
        settings = f"repaint-jump{edit.jump_length}x{edit.jump_n_sample}_steps{steps or run.config.sample.num_steps}"
    repaint = to_masks(masks, len(images), images.shape[1:]) > 0
    given = np.where(repaint, 127, images).astype(np.uint8)
    report = {"repainted_psnr": float(np.mean(image_quality.psnr(result, images, where=repaint)))}
    return [given, result], given[:, None], result[:, None], settings, report


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Edits the images; returns the path of the strip PNG."""
    edit = config.edit
    trained = load_run(workdir, config.sample.step, config=config)
    images = input_images(trained, edit)
    labels = list(config.sample.labels) or None
    columns, given, results, settings, report = _edit(trained, edit, images, labels, config.sample.seed,
                                                       config.sample.ema_index)
    name = f"{trained.step:07d}_{edit.task}_{settings}_seed{config.sample.seed}_n{len(images)}"
    path = str(epath.Path(workdir) / "edits" / name)
    report = {"task": edit.task, "step": trained.step, "settings": settings, "count": len(images), **report}
    if jax.process_index() == 0:
        strips = np.stack([images, *columns], axis=1).reshape(-1, *images.shape[1:])
        grid.samples_png(strips / 127.5 - 1.0, path + ".png", is_image=True, columns=len(columns) + 1)
        with epath.Path(path + ".npz").open("wb") as file:  # epath: a gs:// workdir writes to the bucket.
            np.savez(file, original=images, given=given, result=results)
        epath.Path(path + ".json").write_text(json.dumps(report, indent=1))
        console.info(f"wrote {path}.png, .npz and .json: {report}")
    trained.close()
    return path + ".png"
