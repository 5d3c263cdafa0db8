"""Every shipped recipe on this machine's accelerator in float32 and bfloat16: train a few steps, sample, evaluate.

    python benchmarks/gpu_smoke.py --out /tmp/smoke
    python benchmarks/gpu_smoke.py --recipes mnist --dtypes bfloat16 --full_size "" --out /tmp/smoke   # one case

Each recipe of RECIPES runs in one process (one JAX start for all) through the modes `launch.py` dispatches to:
`train` for 2 dispatches, then for diffusion recipes `sample` 16 samples in 8 sampler steps and `eval` (held-out
loss on one batch, bits/dim of 2 images at rtol 1e-2, and sample quality where it is exact without a feature
network: toy2d), for classifiers and autoencoders `eval` (accuracy; PSNR / SSIM). The latent recipes encode through
the autoencoder_mnist run of the same dtype made just before. The recipe runs as
RECIPES says: in full where its data are bundled (digits, mnist, toy2d: the networks the recipes train), and as its
`cpu` variant where the data are not (CIFAR-10 and ImageNet are not prepared here; those variants keep the recipe's
objective and sampler on bundled digits with a tiny UNet). The --full_size recipes then run `bench` with the full
network at the full example shape on synthetic data (one jitted train dispatch at batch 8 without FSDP,
`bench.train_only`), so the full networks' attention (the layer sizes and token counts where `diffax.nets.attention`
chooses between cuDNN and XLA) is traced, compiled and run forward and backward in each dtype.

One row per recipe, dtype and what ran: `ok` with the seconds, or the error's last line. Rows go to OUT/smoke.jsonl as
they finish (a run cut short keeps the finished ones); the table to stdout and OUT/table.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# recipe: the variant the run uses ("" for the full recipe). The autoencoder runs come before the latent recipes,
# which encode through the autoencoder_mnist run of the same dtype.
RECIPES = {"mnist": "", "digits": "", "toy2d": "", "cifar10_ddpm": "cpu", "cifar10_edm": "cpu", "imagenet64": "cpu",
           "classifier_digits": "", "classifier_mnist": "", "autoencoder_mnist": "", "autoencoder_kl_f8": "cpu",
           "ldm_mnist": "", "ldm_imagenet256": "cpu"}
# recipe: bench.example_shape of its full-size network ("" for the data set's own).
FULL_SIZE = {"cifar10_ddpm": "", "cifar10_edm": "", "imagenet64": "", "autoencoder_kl_f8": "",
             "ldm_imagenet256": "64,64,3"}
LATENT_SOURCE = "autoencoder_mnist"
AFTER_TRAINING = {"diffusion": ("sample", "eval"), "classifier": ("eval",), "autoencoder": ("eval",)}
SAMPLES = 16


def run_dir(out: str, recipe: str, variant: str, dtype: str, kind: str) -> str:
    return os.path.join(out, "runs", f"{recipe}_{variant or 'full'}_{dtype}_{kind}")


def recipe_config(recipe: str, variant: str, dtype: str, out: str):
    """The recipe's config shrunk to a smoke run: 2 dispatches, small sampling and evaluation."""
    config = importlib.import_module(f"configs.{recipe}").get_config(variant)
    config.model.compute_dtype = dtype
    if config.data.get("autoencoder"):
        config.data.autoencoder = run_dir(out, LATENT_SOURCE, RECIPES[LATENT_SOURCE], dtype, "smoke_run")
    train = config.train
    train.num_steps = train.checkpoint_every = 2 * train.steps_per_dispatch
    train.log_every = train.steps_per_dispatch
    train.sample_every = 0
    config.sample.num_samples = config.sample.batch_size = SAMPLES
    config.sample.num_steps = 8
    config.eval.num_batches = 1
    config.eval.batch_size = SAMPLES
    config.eval.bpd_examples = 2
    config.eval.bpd_rtol = 1e-2
    config.eval.num_samples = 256 if config.data.name == "toy2d" else 0
    return config


def timed(name: str, fn) -> dict:
    """Runs fn(); {"stage": name, "status": "ok" or the error's last line, "seconds"}."""
    start = time.perf_counter()
    try:
        fn()
        status = "ok"
    except Exception as error:  # The smoke test reports every failure and goes on to the next case.
        traceback.print_exc()
        lines = [line for line in str(error).splitlines() if line.strip()]
        status = f"{type(error).__name__}: {lines[-1] if lines else ''}"[:200]
    return {"stage": name, "status": status, "seconds": time.perf_counter() - start}


def smoke_run(recipe: str, dtype: str, out: str) -> list[dict]:
    """train, then the modes its task has (AFTER_TRAINING) on the run's saved config (as `launch.py` does)."""
    from diffax.config_checks import validate_config
    from diffax.modes import MODES
    from diffax.run_config import resolve_config

    workdir = run_dir(out, recipe, RECIPES[recipe], dtype, "smoke_run")
    config = recipe_config(recipe, RECIPES[recipe], dtype, out)
    validate_config(config)
    rows = [timed("train", lambda: MODES["train"](config, workdir))]
    if rows[0]["status"] == "ok":
        saved = resolve_config(False, None, workdir, {})
        rows += [timed(mode, lambda mode=mode: MODES[mode](saved, workdir)) for mode in AFTER_TRAINING[config.task]]
    return rows


def full_size_bench(recipe: str, dtype: str, out: str) -> list[dict]:
    """One train dispatch of the full recipe's network at batch 8 on synthetic data (`--mode bench`)."""
    from diffax.modes import MODES

    workdir = run_dir(out, recipe, "", dtype, "full_size_bench")
    config = importlib.import_module(f"configs.{recipe}").get_config("")
    config.model.compute_dtype = dtype
    config.bench.example_shape = FULL_SIZE[recipe]
    config.mesh.fsdp = 1  # imagenet64 shards over 8 devices; batch 8 of the full network fits on one.
    config.bench.batch_size = 8
    config.bench.steps = 1
    config.bench.train_only = True
    return [timed("bench (full size)", lambda: MODES["bench"](config, workdir))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names of configs/")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="model.compute_dtype values")
    parser.add_argument("--full_size", default=",".join(FULL_SIZE), help="recipes also benched at full size")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (auto worker counts on accelerators).
    import jax

    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    cases = [(smoke_run, recipe, dtype) for recipe in filter(None, args.recipes.split(","))
             for dtype in args.dtypes.split(",")]
    cases += [(full_size_bench, recipe, dtype) for recipe in filter(None, args.full_size.split(","))
              for dtype in args.dtypes.split(",")]
    rows = []
    for run, recipe, dtype in cases:
        variant = "full" if run is full_size_bench else (RECIPES[recipe] or "full")
        for row in run(recipe, dtype, args.out):
            row = {"recipe": recipe, "variant": variant, "dtype": dtype, "device": device, **row}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(os.path.join(args.out, "smoke.jsonl"), "a") as file:
                file.write(json.dumps(row) + "\n")
    lines = ["| recipe | variant | dtype | stage | status | seconds |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['recipe']} | {r['variant']} | {r['dtype']} | {r['stage']} | {r['status']} | {r['seconds']:.1f} |"
              for r in rows]
    table = "\n".join([f"{device}, jax {jax.__version__}", "", *lines])
    with open(os.path.join(args.out, "table.md"), "w") as file:
        file.write(table + "\n")
    print(table)
    sys.exit(int(any(row["status"] != "ok" for row in rows)))


if __name__ == "__main__":
    main()
