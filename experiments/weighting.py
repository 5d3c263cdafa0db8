"""Loss weighting on mnist: uniform eps-MSE, min-SNR-5 (Hang et al. 2023) and sigmoid (Kingma & Gao 2023) with the
same eps prediction and cosine schedule, at a fixed training budget, scored with FCD and bits/dim.

    python launch.py --config configs/classifier_mnist.py --workdir /tmp/cls_mnist
    python experiments/run.py experiments/weighting.py --workdir /tmp/sweep_weighting --parallel 3 \
        --config.eval.features=classifier:/tmp/cls_mnist
"""

from experiments.sweep import Plot, Sweep

POINTS = [{"diffusion.weighting": "eps"},
          {"diffusion.weighting": "min_snr", "diffusion.weighting_kwargs.gamma": 5.0},
          {"diffusion.weighting": "sigmoid"}]


def get_sweep():
    return Sweep(
        config="configs/mnist.py", action="train", points=POINTS,
        overrides={"diffusion.prediction": "eps", "diffusion.schedule": "vp_cosine", "train.num_steps": 3000,
                   "train.checkpoint_every": 3000, "train.sample_every": 0, "optim.warmup_steps": 200,
                   "sample.num_steps": 25, "eval.num_samples": 2000, "eval.bpd_examples": 16,
                   "sample.batch_size": 1000},
        plots=[Plot(x="diffusion.weighting", y="fcd")],
        description="mnist: loss weighting, FCD and bits/dim")
