"""ADM-style class-conditional ImageNet 64x64 (Dhariwal & Nichol 2021, Table 14): UNet 192 channels, mults
(1, 2, 3, 4), 3 res blocks, attention at 32, 16, 8 with 64-channel heads, BigGAN resampling, scale-shift norm,
cosine schedule, dropout 0.1, AdamW 1e-4, batch 2048, 540k steps, EMA 0.9999, bf16 compute, FSDP over 8 devices,
classifier-free guidance (label dropout 0.1). ADM also learns the variances (L_hybrid, 6 output channels); diffax
trains eps with fixed variances, so the head has 3 output channels.
Needs ImageNet prepared once as ArrayRecord at 64x64 (manual download of the ImageNet archives):

    tfds build imagenet_resized/64x64 --data_dir=$TFDS_DATA_DIR --file_format=array_record
    python launch.py --config configs/imagenet64.py --workdir gs://BUCKET/imagenet64     # on every host
    python launch.py --config configs/imagenet64.py:tiny --workdir /tmp/in64_tiny      # on a CPU, bundled data
"""

from configs import base
from configs.cifar10_ddpm import tiny_on_bundled_data


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "imagenet_resized/64x64"
    config.data.split = "train"
    config.data.eval_split = "validation"
    config.data.random_flip = True
    config.model.name = "adm_imagenet64"
    config.model.kwargs.update(out_channels=3, remat="none")  # "dots" or "full" trade compute for memory.
    config.model.class_conditional = True
    config.model.label_dropout = 0.1
    config.model.compute_dtype = "bfloat16"
    config.diffusion.schedule = "vp_cosine"
    config.diffusion.prediction = "eps"
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 1000
    config.optim.decay = "constant"
    config.optim.grad_clip_norm = 1.0
    config.train.batch_size = 2048
    config.train.num_steps = 540_000
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 200
    config.train.checkpoint_every = 5000
    config.train.sample_every = 50_000
    config.mesh.fsdp = 8
    config.sample.clip_denoised = True
    config.sample.method = "dpmpp_2m"
    config.sample.num_steps = 50
    config.sample.guidance_scale = 1.5
    config.sample.num_samples = config.sample.batch_size = 64
    return tiny_on_bundled_data(config, variant)
