"""DDPM on CIFAR-10 (Ho et al. 2020, Appendix B): 35.7M-parameter UNet, linear betas 1e-4..0.02 over T = 1000,
eps prediction, L_simple, Adam 2e-4 with 5,000 warmup steps, batch 128, 800k steps, dropout 0.1, random flips,
gradient clipping at 1, EMA 0.9999. Needs CIFAR-10 prepared once as ArrayRecord:

    tfds build cifar10 --data_dir=$TFDS_DATA_DIR --file_format=array_record
    python launch.py --config configs/cifar10_ddpm.py --workdir gs://BUCKET/cifar10_ddpm
    python launch.py --config configs/cifar10_ddpm.py:tiny --workdir /tmp/ddpm_tiny   # on a CPU, bundled data
"""

import ml_collections

from configs import base


def get_config(variant: str = ""):
    config = base.get_base_config()
    config.data.name = "cifar10"
    config.data.random_flip = True
    config.model.name = "ddpm_cifar10"
    # Bias gradients summed per example, then over the batch (XLA runs the one-stage sums at 4x4 on 2 thread blocks),
    # GroupNorm's backward in closed form (diffax.nets.layers, norm_grads; NOTES, sessions 7-8).
    config.model.kwargs.two_stage_bias_grads = True
    config.model.kwargs.hashed_dropout = True  # Keep decisions hashed from element indices (diffax.nets.dropout).
    config.model.kwargs.compute_dtype_norms = True  # GroupNorm outputs in the compute dtype (diffax.nets.layers).
    config.model.kwargs.stem_head_as_matmuls = True  # 3x3 convolutions from / to 3 channels (conv_forms.MatmulConv3x3).
    config.model.kwargs.subpixel_upsample = True  # Upsampling's convolution on the low-res grid (UpsampledConv3x3).
    config.model.kwargs.fold_attention_biases = True  # k's bias left out, v's folded into out's (attention.Attention).
    config.diffusion.schedule = "vp_discrete"
    config.diffusion.schedule_kwargs.update(num_steps=1000, beta_start=1e-4, beta_end=0.02)
    config.diffusion.prediction = "eps"
    config.diffusion.weighting = "eps"
    config.diffusion.time_sampling = "discrete"
    config.diffusion.time_kwargs.update(num_steps=1000)
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.decay = "constant"
    config.optim.grad_clip_norm = 1.0
    config.train.batch_size = 128
    config.train.num_steps = 800_000
    config.train.steps_per_dispatch = 1  # One step a call: faster than 4 on one and two H200s (NOTES, session 11).
    config.train.flat_state = True  # The update as a few fusions over flat vectors (runner.py; NOTES, session 6).
    config.train.ema_decays = (0.9999,)
    config.train.log_every = 500
    config.train.checkpoint_every = 10_000
    config.train.sample_every = 50_000
    config.sample.clip_denoised = True
    config.sample.cast_params = True  # bf16 weights cast once per sampler call (generate.sampler_params).
    config.sample.method = "ddpm"
    config.sample.num_steps = 1000
    config.sample.grid = "trailing"
    config.sample.num_samples = config.sample.batch_size = 64
    return tiny_on_bundled_data(config, variant)


def tiny_on_bundled_data(config, variant: str):
    """The `cpu` / `tiny` variants keep the recipe's objective and sampler on bundled digits and a tiny UNet."""
    if not variant:
        return config
    config = base.shrink(config, variant)
    config.data.name = "digits"
    config.data.split, config.data.eval_split = "train", "test"  # imagenet64 holds out 'validation'; digits 'test'.
    config.data.random_flip = False
    config.data.worker_count = 0
    config.model.name = "unet_tiny"
    noise_scale = {k: v for k, v in config.model.kwargs.items() if k == "noise_scale"}
    config.model.kwargs = ml_collections.ConfigDict(dict(channels=16, attention_levels=(), **noise_scale))
    config.train.ema_decays = (0.999,)
    config.train.sample_every = 0
    return config
