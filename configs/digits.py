"""Class-conditional diffusion on scikit-learn's 8x8 handwritten digits (bundled; prepared on first use).

    python launch.py --config configs/digits.py --workdir /tmp/diffax_digits
    python launch.py --config configs/digits.py:tiny --workdir /tmp/diffax_digits_tiny   # seconds; the tests' run
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "digits"
    config.model.name = "unet"
    config.model.kwargs.update(channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                               dropout=0.0)
    config.model.class_conditional = True
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.prediction = "v"  # Stays well-posed where alpha(t) ~ 0 (eps -> x0 divides by alpha).
    config.diffusion.weighting = "v"
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.decay = "cosine"
    config.optim.end_learning_rate_fraction = 0.05
    config.train.batch_size = 64
    config.train.num_steps = 2000
    config.train.ema_decays = (0.995,)
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.sample_every = 1000
    config.sample.num_samples = 100
    config.sample.batch_size = 100
    config.sample.guidance_scale = 2.0
    if variant == "tiny":  # One UNet level: compiles in a few seconds.
        config.model.kwargs.update(channels=16, channel_mult=(1,))
    return base.shrink(config, variant) if variant else config
