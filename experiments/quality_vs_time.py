"""Sample quality against training time for a full-size UNet (DDPM's CIFAR-10 widths on three levels: 128 channels,
(1, 2, 2), 2 residual blocks, attention at 14x14; 25.8M parameters) on the bundled mnist, on one GPU: one training
run of 4,000 steps checkpointed every 500, checkpoints 1,000, 2,000 and 3,000 scored with the offline FCD
(2,000 samples each).

    python launch.py --config configs/classifier_mnist.py --workdir /tmp/cls_mnist
    python experiments/run.py experiments/quality_vs_time.py --workdir /tmp/sweep_time \
        --config.eval.features=classifier:/tmp/cls_mnist

x: seconds of training up to the checkpoint (metrics.jsonl wall times, compilation not counted).
"""

from experiments.sweep import Plot, Sweep

STEPS = 4000
EVERY = 500
SCORED = (1000, 2000, 3000)  # Checkpoints scored in the recorded study (experiments/results/quality_vs_time).


def get_sweep():
    return Sweep(
        config="configs/mnist.py", action="eval",
        base_overrides={"model.kwargs.channels": 128, "model.kwargs.channel_mult": (1, 2, 2),
                        "model.kwargs.num_res_blocks": 2, "model.kwargs.attention_levels": (1,),
                        "train.num_steps": STEPS, "train.checkpoint_every": EVERY,
                        "train.keep_checkpoints": STEPS // EVERY, "train.sample_every": 0, "train.log_every": 100},
        points=[{"sample.step": step} for step in SCORED],
        overrides={"eval.loss": False, "eval.bits_per_dim": False, "sample.num_steps": 25,
                   "eval.num_samples": 2000, "sample.batch_size": 1000},
        plots=[Plot(x="train_seconds", y="fcd"), Plot(x="step", y="fcd")],
        description="mnist, full-size UNet on one GPU: FCD against training time")
