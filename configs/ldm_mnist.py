"""Class-conditional latent diffusion (Rombach et al. 2022) on the 8x8x4 latents of an autoencoder_mnist run: the
5,000 bundled MNIST images padded to 32x32, encoded by the f = 4 autoencoder; labels read by the UNet's
cross-attention as a learned one-token context (LDM's class-conditional recipe), classifier-free guidance 2.

    python launch.py --config configs/autoencoder_mnist.py:cpu --workdir /tmp/ae_mnist_cpu    # first stage
    python launch.py --config configs/ldm_mnist.py:cpu --workdir /tmp/ldm_mnist_cpu \\
        --config.data.autoencoder=/tmp/ae_mnist_cpu
    python launch.py --config configs/ldm_mnist.py --workdir /tmp/ldm_mnist --config.data.autoencoder=/tmp/ae_mnist

The latents are scaled by 1 / their std (computed once, saved in run.json); samples are decoded to 32x32 images.
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "mnist5k"
    config.data.pad_to = 32  # The autoencoder's images (configs/autoencoder_mnist.py).
    config.data.autoencoder = {"cpu": "/tmp/ae_mnist_cpu"}.get(variant, "/tmp/ae_mnist")
    config.data.latent_cache = True  # 4,500 latents of 8x8x4 in memory (benchmarks/NOTES.md, "Latent data").
    config.model.name = "unet"
    config.model.kwargs.update(channels=64, channel_mult=(1, 2), num_res_blocks=2, attention_levels=(0, 1),
                               head_channels=32, dropout=0.1)
    config.model.class_conditional = True
    config.model.label_conditioning = "cross_attention"
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
    config.eval.bits_per_dim = False  # Latents: no pixel likelihood.
    if not variant:
        return config
    config = base.shrink(config, variant)
    config.sample.guidance_scale = 2.0
    if variant == "cpu":
        config.model.kwargs.update(channels=32, num_res_blocks=1, attention_levels=(1,), dropout=0.0)
        config.train.batch_size = 64
        config.train.num_steps = 1500
        config.train.log_every = 100
        config.train.checkpoint_every = 500
        config.optim.warmup_steps = 100
        config.optim.learning_rate = 1e-3
        config.sample.num_samples = config.sample.batch_size = 40
    else:  # tiny: the tests' plumbing check (on-the-fly encoding); data.autoencoder is set by the caller.
        config.data.latent_cache = False
        config.model.kwargs.update(channels=16, channel_mult=(1,), num_res_blocks=1, attention_levels=(),
                                   head_channels=None, dropout=0.0)
    return config
