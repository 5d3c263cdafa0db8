"""LDM's KL-f8 autoencoder (Rombach et al. 2022; CompVis/latent-diffusion configs/autoencoder/
autoencoder_kl_32x32x4.yaml, the Stable Diffusion VAE's architecture): 256x256x3 ImageNet -> 32x32x4 latents,
83.7M parameters, PatchGAN 64 filters / 3 layers from step 50,001, KL weight 1e-6, discriminator weight 0.5, Adam
betas (0.5, 0.9), learning rate 4.5e-6 per image of the global batch (LDM's rule: accumulate x GPUs x per-GPU batch
x base rate; its 12 per GPU, accumulated twice, on 4 GPUs is the batch of 96 here).
Needs ImageNet prepared once as ArrayRecord (manual download of the ImageNet archives):

    tfds build imagenet2012 --data_dir=$TFDS_DATA_DIR --file_format=array_record
    python launch.py --config configs/autoencoder_kl_f8.py --workdir gs://BUCKET/ae_kl_f8     # on every host
    python launch.py --config configs/autoencoder_kl_f8.py:tiny --workdir /tmp/ae_f8_tiny   # on a CPU, bundled data

The perceptual term is MS-SSIM, which needs no weights; LDM's LPIPS is --config.autoencoder.perceptual=lpips
--config.autoencoder.lpips_weights=PATH (the .npz of `python -m diffax.convert lpips`, README). The model (84M)
and its two Adam states fit one accelerator, so parameters are replicated; on devices with little memory shard
them with --config.mesh.fsdp=N. The cpu / tiny variants run the same loss on bundled MNIST padded to 32x32 with a
tiny f = 8 network (4x4x4 latents).
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.task = "autoencoder"
    config.data.name = "imagenet2012"
    config.data.split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 256
    config.data.random_flip = True
    config.model.name = "autoencoder_kl_f8"
    config.model.compute_dtype = "bfloat16"
    # The decoder's upsampling convolutions on the low-res grid, same parameters (nets.conv_forms.UpsampledConv3x3).
    config.model.kwargs.subpixel_upsample = True
    autoencoder = config.autoencoder
    autoencoder.perceptual = "ms_ssim"
    autoencoder.perceptual_weight = 1.0
    autoencoder.kl_weight = 1e-6
    autoencoder.disc_start = 50001
    autoencoder.disc_weight = 0.5
    autoencoder.disc_features = 64
    autoencoder.disc_layers = 3
    config.train.batch_size = 96
    config.optim.learning_rate = 4.5e-6 * config.train.batch_size
    config.optim.b1, config.optim.b2 = 0.5, 0.9
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0  # LDM does not clip.
    config.train.num_steps = 300_000  # LDM's config sets no end (Lightning runs until stopped).
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 100
    config.train.checkpoint_every = 5000
    config.eval.batch_size = 32
    if not variant:
        return config
    config = base.shrink(config, variant)
    config.data.name = "mnist5k"
    config.data.eval_split = "test"
    config.data.image_size = None
    config.data.pad_to = 32
    config.data.random_flip = False
    config.data.worker_count = 0
    config.model.kwargs.update(channels=8, channel_mult=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4)
    autoencoder.disc_features, autoencoder.disc_layers = 8, 2
    autoencoder.disc_start = 2 if variant == "tiny" else 101
    config.optim.learning_rate = 4.5e-6 * config.train.batch_size
    config.train.ema_decays = (0.999,)
    return config
