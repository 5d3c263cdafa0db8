"""Every sampler at 5, 10, 20 and 50 denoiser calls on the trained digits recipe, scored with the offline FCD (the
Fréchet distance of a diffax-trained digits classifier's features) and KID/precision/recall against held-out digits.

    python launch.py --config configs/classifier_digits.py --workdir /tmp/cls_digits
    python experiments/run.py experiments/samplers.py --workdir /tmp/sweep_samplers \
        --config.eval.features=classifier:/tmp/cls_digits

Trains configs/digits.py once in DIR/base, then evaluates it under each point in one process (guidance 2, so each
denoiser call is two network evaluations).
"""

from diffax.sampling import SOLVERS
from experiments.sweep import Plot, Sweep, sampler_points


def get_sweep():
    return Sweep(
        config="configs/digits.py", action="eval",
        points=sampler_points(sorted(SOLVERS), (5, 10, 20, 50)),
        overrides={"eval.loss": False, "eval.bits_per_dim": False, "eval.num_samples": 1000,
                   "sample.batch_size": 500},
        plots=[Plot(x="label.calls", y="fcd", group="sample.method", log_x=True, log_y=True)],
        description="digits samplers: FCD against denoiser calls")
