"""Diffusion on a 2-D mixture of 8 Gaussians on a circle (diffax.mixture.toy_mixture_2d), with a residual MLP.

    python launch.py --config configs/toy2d.py --workdir /tmp/diffax_toy2d
    python launch.py --config configs/toy2d.py:tiny --workdir /tmp/diffax_toy2d_tiny

The samples are written as a scatter plot (WORKDIR/samples/*.png).
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "toy2d"
    config.data.eval_split = "test"
    config.model.name = "mlp"
    config.model.kwargs.update(width=256, num_blocks=3)
    config.diffusion.schedule = "rectified_flow"
    config.diffusion.prediction = "velocity"
    config.diffusion.time_sampling = "logit_normal"
    config.optim.learning_rate = 1e-3
    config.optim.decay = "cosine"
    config.train.batch_size = 256
    config.train.num_steps = 3000
    config.train.steps_per_dispatch = 10
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.sample.method = "heun"
    config.sample.num_steps = 32
    config.sample.num_samples = config.sample.batch_size = 2000
    config.eval.bits_per_dim = False
    if variant:
        config = base.shrink(config, variant)
        config.train.steps_per_dispatch = 2
        config.sample.num_samples = config.sample.batch_size = 256
    return config
