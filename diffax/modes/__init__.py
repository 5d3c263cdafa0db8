"""The modes a run can be put in, one file each, each a function of (config, workdir):

    train     train or resume (diffax.modes.train)
    sample    samples from a trained run (diffax.modes.sample)
    eval      held-out loss, bits/dim and sample quality of a trained run (diffax.modes.evaluate)
    bench     speed, memory and accuracy on synthetic data (diffax.modes.bench)
    edit      denoise, img2img or inpaint given images with a trained run (diffax.modes.edit)
    stats     reference feature statistics of a data set, for FID / FCD (diffax.modes.stats)

A classifier run (config.task = 'classifier') has train, eval, stats and bench only, an autoencoder run train, eval
and bench (`TASK_MODES`; their bench times the train step).
Modes sit on the top floor: nothing in diffax imports them but `launch.py`.
"""

import ml_collections

from diffax.modes import bench, edit, evaluate, sample, stats, train

MODES = {"train": train.run, "sample": sample.run, "eval": evaluate.run, "bench": bench.run, "edit": edit.run,
         "stats": stats.run}
TASK_MODES = {"diffusion": tuple(MODES), "classifier": ("train", "eval", "stats", "bench"),
              "autoencoder": ("train", "eval", "bench")}


def check_mode(mode: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError, naming the workdir and the modes it has, when `mode` does not apply to config.task."""
    modes = TASK_MODES[config.task]
    if mode not in modes:
        run = f"{'an' if config.task[0] in 'aeiou' else 'a'} {config.task} run"
        raise ValueError(f"{workdir} is {run} (config.task = {config.task!r}); --mode {mode} needs a diffusion run, "
                         f"{run} has --mode {', '.join(modes)}")
