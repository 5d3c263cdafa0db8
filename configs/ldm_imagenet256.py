"""LDM-4 class-conditional ImageNet 256x256 (Rombach et al. 2022; LDM's configs/latent-diffusion/cin256-v2.yaml):
a UNet on the 64x64x3 latents of an f = 4 first stage, 192 channels, mults (1, 2, 3, 5), 2 res blocks, attention at
latent downsampling 2, 4 and 8 with one head (cin256-v2's num_heads 1), labels through cross-attention as a 512-wide
learned context (LDM's ClassEmbedder, 1000 classes plus the null label), linear betas 0.0015..0.0195 over 1000
steps, eps prediction. The learning rate follows LDM's scale_lr rule with cin-ldm-vq-f8's base of 1e-6 per image of
the global batch (cin256-v2 lists a base of 1e-4, which scale_lr would make 0.1 at this batch). Differences: the
first stage is a KL f = 4 autoencoder (configs/autoencoder_kl_f8.py with model.name 'autoencoder_kl_f4'; the
paper's cin256 model used VQ-f4), and each attention block is diffax's self- plus cross-attention without LDM's
transformer feed-forward. The batch, step count, warm-up, EMA (cin256-v2 has none), guidance 1.5 (the paper's
LDM-4-G) and the DDIM sampler are this recipe's choices.
Needs ImageNet prepared once as ArrayRecord (manual download of the archives) and a trained autoencoder:

    tfds build imagenet2012 --data_dir=$TFDS_DATA_DIR --file_format=array_record
    python launch.py --config configs/ldm_imagenet256.py --workdir gs://BUCKET/ldm_cin256 \\
        --config.data.autoencoder=gs://BUCKET/ae_kl_f4                                       # on every host
    python launch.py --config configs/ldm_imagenet256.py:tiny --workdir /tmp/ldm_in_tiny \\
        --config.data.autoencoder=AE_TINY_WORKDIR                                           # plumbing, on a CPU

Latents are encoded on the fly by every process for its own batches; scale_by_std is computed from the first
512 images at the start of training (or set data.latent_scale).
"""

from configs import base
from configs import ldm_mnist

BATCH_SIZE = 1024


def get_config(variant: str = ""):
    if variant:  # The tiny / cpu recipe keeps the structure on the bundled MNIST latents.
        config = ldm_mnist.get_config(variant)
        config.diffusion.schedule = "vp_discrete"
        config.diffusion.schedule_kwargs.update(beta_start=0.0015, beta_end=0.0195, num_steps=1000)
        return config
    config = base.get_base_config()
    config.data.name = "imagenet2012"
    config.data.split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 256
    config.data.autoencoder = ""  # Set on the command line: a trained kl-f4 run's workdir.
    config.model.name = "unet"
    config.model.kwargs.update(channels=192, channel_mult=(1, 2, 3, 5), num_res_blocks=2, attention_levels=(1, 2, 3),
                               head_channels=None, dropout=0.0, context_features=512, remat="dots")
    config.model.class_conditional = True
    config.model.label_conditioning = "cross_attention"
    config.model.label_dropout = 0.1
    config.model.compute_dtype = "bfloat16"
    config.diffusion.schedule = "vp_discrete"
    config.diffusion.schedule_kwargs.update(beta_start=0.0015, beta_end=0.0195, num_steps=1000)
    config.diffusion.prediction = "eps"
    config.diffusion.weighting = "eps"
    config.optim.learning_rate = 1e-6 * BATCH_SIZE
    config.optim.warmup_steps = 10_000
    config.optim.decay = "constant"
    config.train.batch_size = BATCH_SIZE
    config.train.num_steps = 200_000
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 200
    config.train.checkpoint_every = 5000
    config.train.sample_every = 50_000
    config.mesh.fsdp = 8  # Parameters and Adam state sharded over 8 devices; data parallel across the rest.
    config.sample.method = "ddim"
    config.sample.num_steps = 250
    config.sample.grid = "trailing"
    config.sample.guidance_scale = 1.5
    config.sample.num_samples = config.sample.batch_size = 64
    config.eval.bits_per_dim = False
    return config
