"""EDM on CIFAR-10 (Karras et al. 2022, config F, unconditional VP): DDPM++ UNet (55.7M), EDM preconditioning,
ln(sigma) ~ N(-1.2, 1.2^2), loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, Adam 1e-3 (betas 0.9,
0.999) with a 10 Mimg ramp-up, batch 512, 200 Mimg (390k steps), EMA half-life 0.5 Mimg (decay 0.99929 per step
at batch 512), dropout 0.13, x-flips; sampling with Heun's 2nd order method, 18 steps (35 evaluations) on the
Karras rho = 7 grid. (EDM also uses geometric augmentation with a non-leaking pipeline, not reproduced here.)

    tfds build cifar10 --data_dir=$TFDS_DATA_DIR --file_format=array_record
    python launch.py --config configs/cifar10_edm.py --workdir gs://BUCKET/cifar10_edm
    python launch.py --config configs/cifar10_edm.py:tiny --workdir /tmp/edm_tiny   # on a CPU, bundled data
"""

from configs import base
from configs.cifar10_ddpm import tiny_on_bundled_data


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "cifar10"
    config.data.random_flip = True
    config.model.name = "ddpmpp_cifar10"
    config.model.kwargs.update(noise_scale=1.0)  # The network sees EDM's c_noise = ln(sigma) / 4 directly.
    config.diffusion.schedule = "edm"
    config.diffusion.schedule_kwargs.update(sigma_min=0.002, sigma_max=80.0)
    config.diffusion.prediction = "edm"
    config.diffusion.noise_conditioning = "edm"
    config.diffusion.weighting = "edm"
    config.diffusion.time_sampling = "log_normal"
    config.diffusion.time_kwargs.update(mean=-1.2, std=1.2)
    config.diffusion.sigma_data = 0.5
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 10_000_000 // 512
    config.optim.decay = "constant"
    config.optim.grad_clip_norm = 0.0
    config.train.batch_size = 512
    config.train.num_steps = 200_000_000 // 512
    config.train.ema_decays = (0.5 ** (512 / 500_000),)
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000
    config.sample.method = "heun"
    config.sample.num_steps = 18
    config.sample.grid = "karras"
    config.sample.num_samples = config.sample.batch_size = 64
    return tiny_on_bundled_data(config, variant)
