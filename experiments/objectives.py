"""Prediction target x schedule at a fixed training budget on mnist: eps, v, x0 and EDM's preconditioned output
(each with its own MSE weighting) on the VP linear (DDPM), VP cosine, EDM and rectified-flow forward processes,
scored with the offline FCD (a diffax-trained mnist classifier) and bits/dim.

    python launch.py --config configs/classifier_mnist.py --workdir /tmp/cls_mnist
    python experiments/run.py experiments/objectives.py --workdir /tmp/sweep_objectives --parallel 16 \
        --config.eval.features=classifier:/tmp/cls_mnist

Every point trains configs/mnist.py for 1,500 steps at batch 128 (a GPU budget) and samples with DPM-Solver++ 2M,
25 steps, guidance 2. Bits/dim are in the table only: they span -1.9 to 3e6 (experiments/results/objectives).
"""

from experiments.sweep import Plot, Sweep, product

PREDICTIONS = ["eps", "v", "x0", "edm"]
SCHEDULES = ["vp_linear", "vp_cosine", "edm", "rectified_flow"]


def get_sweep():
    return Sweep(
        config="configs/mnist.py", action="train",
        points=product({"diffusion.prediction": PREDICTIONS, "diffusion.weighting": PREDICTIONS},
                       {"diffusion.schedule": SCHEDULES}),
        overrides={"train.num_steps": 1500, "train.checkpoint_every": 1500, "train.sample_every": 0,
                   "optim.warmup_steps": 200, "sample.num_steps": 25, "eval.num_samples": 2000,
                   "eval.bpd_examples": 16, "sample.batch_size": 1000},
        plots=[Plot(x="diffusion.schedule", y="fcd", group="diffusion.prediction", log_y=True)],
        description="mnist: prediction target x schedule, FCD and bits/dim")
