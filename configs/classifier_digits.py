"""An image classifier of scikit-learn's 8x8 digits (bundled), whose penultimate features score digits samples.

    python launch.py --config configs/classifier_digits.py --workdir /tmp/cls_digits     # 25 s on 2 CPU cores
    python launch.py --workdir /tmp/cls_digits --mode eval   # held-out accuracy 0.963 (286 of the 297 test digits)
    python launch.py --config configs/classifier_digits.py:cpu --workdir /tmp/cls_digits_cpu   # 200 steps: 0.956

Then `diffax.load_run("/tmp/cls_digits").features(images)` gives the features of uint8 (N, 8, 8, 1) images.
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.task = "classifier"
    config.data.name = "digits"
    config.model.name = "classifier"
    config.model.kwargs.update(channels=32, channel_mult=(1, 2), num_res_blocks=1, feature_dim=128, dropout=0.1)
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 50
    config.optim.decay = "cosine"
    config.optim.weight_decay = 1e-4
    config.train.batch_size = 64
    config.train.num_steps = 600
    config.train.ema_decays = (0.99,)
    config.train.log_every = 100
    config.train.checkpoint_every = 600
    config.eval.batch_size = 100
    if variant == "tiny":
        config.model.kwargs.update(channels=8, channel_mult=(1,), feature_dim=16)
    return base.shrink(config, variant) if variant else config
