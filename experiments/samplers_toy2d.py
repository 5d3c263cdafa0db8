"""Every sampler at 5, 10, 20 and 50 denoiser calls on a trained toy2d run (a 2-D mixture of 8 Gaussians), scored
exactly: the energy distance of 4,000 samples to fresh data, and their mean log-density under the true mixture.

    python experiments/run.py experiments/samplers_toy2d.py --workdir /tmp/sweep_samplers_toy2d

Trains configs/toy2d.py (3,000 steps) once in DIR/base, then evaluates it under each point in one process.
"""

from diffax.sampling import SOLVERS
from experiments.sweep import Plot, Sweep, sampler_points


def get_sweep():
    return Sweep(
        config="configs/toy2d.py", action="eval",
        points=sampler_points(sorted(SOLVERS), (5, 10, 20, 50)),
        overrides={"eval.loss": False, "eval.num_samples": 4000, "sample.batch_size": 4000,
                   "sample.grid": "uniform"},
        plots=[Plot(x="label.calls", y="energy_distance", group="sample.method", log_x=True, log_y=True),
               Plot(x="label.calls", y="log_density", group="sample.method", log_x=True)],
        description="toy2d samplers: exact scores against denoiser calls")
