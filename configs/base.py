"""Every default of a diffax run; recipes start from `get_base_config()` and change what differs.

Not a recipe by itself: `python launch.py --config configs/digits.py --workdir /tmp/digits` runs one.
Any key can be overridden on the command line: `--config.train.num_steps=100 --config.optim.learning_rate=3e-4`.
`shrink(config, variant)` applies the `cpu` / `tiny` variants that every recipe accepts.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # Parameters, per-step randomness (fold_in(key, step)), data order, sampling noise.
    # 'diffusion', or 'classifier': an image classifier of the data's labels (configs/classifier_*.py), trained by
    # the same engine with a cross-entropy loss; its features score samples offline. The diffusion and sample
    # sections do not apply to it. 'autoencoder': LDM's KL autoencoder with its PatchGAN (the autoencoder section;
    # configs/autoencoder_*.py), the first stage of latent diffusion.
    config.task = "diffusion"

    config.data = data = ml_collections.ConfigDict()
    data.name = "digits"       # A bundled data set (digits, mnist5k), 'toy2d', or a TFDS data set as array_record.
    data.split = "train"
    data.eval_split = "test"
    # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    data.data_dir = ml_collections.FieldReference(None, field_type=str)
    data.image_size = ml_collections.FieldReference(None, field_type=int)  # None: the stored size.
    # Zero-pad (black) each image, centred, to this side after any resizing (28x28 MNIST -> 32x32); None: no padding.
    data.pad_to = ml_collections.FieldReference(None, field_type=int)
    data.random_flip = False
    # grain worker processes per host; 0: threads in the training process; -1: what the host can give, from its
    # cores and local devices (diffax.data.pipeline.auto_worker_count; 0 on the CPU backend, 14 on a 16-core host
    # with one GPU).
    data.worker_count = -1
    # A float (L, E) feature of each example (e.g. text-encoder outputs stored with the images) that conditions the
    # network through cross-attention, with classifier-free guidance against the zero sequence; "": none.
    data.context_key = ""
    # Latent diffusion (diffax/latents.py): the workdir of a trained autoencoder run (config.task = 'autoencoder')
    # whose latents the network models; "": the data itself.
    data.autoencoder = ""
    data.latent_scale = 0.0  # The latents' factor; 0: 1 / std of the first training latents (LDM's scale_by_std).
    # Encode data.split once into host memory and train on those latents (faster where they fit; no random flips);
    # False: encode each batch on the fly.
    data.latent_cache = False
    data.toy_examples = 65536  # 'toy2d' only: points drawn from the mixture (with seed) as the training set.

    config.model = model = ml_collections.ConfigDict()
    model.name = "unet_tiny"   # A key of diffax.nets.NETWORKS.
    model.kwargs = ml_collections.ConfigDict()  # Network attributes, e.g. --config.model.kwargs.channels=64.
    model.compute_dtype = "float32"  # 'bfloat16' computes activations in bf16; parameters stay float32.
    model.class_conditional = False  # Pass labels (num_classes from the data set); classifier-free guidance.
    # How labels enter the network: 'embedding' (added to the noise-level embedding; ADM, DiT) or 'cross_attention'
    # (a learned one-token context read by every attention block; LDM's class-conditional recipe).
    model.label_conditioning = "embedding"
    # Probability a label is replaced by the null class (an embedding sequence by the zero context) in training.
    model.label_dropout = 0.1

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.schedule = "vp_cosine"
    diffusion.schedule_kwargs = ml_collections.ConfigDict()
    diffusion.shift = 0.0      # Log-SNR shift (resolution shift).
    diffusion.zero_terminal_snr = False
    diffusion.prediction = "eps"         # eps, x0, v, velocity, edm.
    diffusion.noise_conditioning = "time"  # time, log_snr, edm.
    diffusion.weighting = "eps"          # eps, x0, v, min_snr, edm, elbo, sigmoid.
    diffusion.weighting_kwargs = ml_collections.ConfigDict()
    diffusion.time_sampling = "uniform"  # uniform, discrete, log_normal, logit_normal.
    diffusion.time_kwargs = ml_collections.ConfigDict()
    diffusion.sigma_data = 0.5

    # config.task = 'autoencoder' (diffax/train/autoencoder_step.py): LDM's LPIPSWithDiscriminator loss.
    config.autoencoder = autoencoder = ml_collections.ConfigDict()
    autoencoder.perceptual = "ms_ssim"  # A key of diffax.evaluation.perceptual.PERCEPTUAL_LOSSES: ms_ssim, lpips, none.
    autoencoder.perceptual_weight = 1.0
    # perceptual 'lpips': the .npz of `python -m diffax.convert lpips VGG16.pth LIN.pth OUT.npz`.
    autoencoder.lpips_weights = ""
    autoencoder.kl_weight = 1e-6
    autoencoder.logvar_init = 0.0
    # LDM declares its log-variance a parameter but gives it to neither optimizer, so it stays at logvar_init;
    # True trains it with the autoencoder's Adam.
    autoencoder.learn_logvar = False
    autoencoder.sample_posterior = True  # Decode a posterior sample in training (LDM); False: its mean.
    autoencoder.disc_start = 50001  # The step from which the discriminator trains and the adversarial term counts.
    autoencoder.disc_factor = 1.0
    autoencoder.disc_weight = 0.5   # Times the adaptive weight of the generator's adversarial term.
    autoencoder.disc_features = 64
    autoencoder.disc_layers = 3

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4
    optim.warmup_steps = 100
    optim.decay = "constant"   # 'constant' or 'cosine' (to end_learning_rate_fraction at train.num_steps).
    optim.end_learning_rate_fraction = 0.0
    optim.b1 = 0.9
    optim.b2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 128     # Global batch over all devices and processes (per optimizer step).
    train.num_steps = 1000
    train.grad_accum_steps = 1  # Micro-batches per optimizer step (batch_size must split evenly).
    train.steps_per_dispatch = 1  # Optimizer steps per jitted call (lax.scan); log/checkpoint intervals align.
    # Keep a copy of the parameters the network declares it computes in model.compute_dtype, written by each
    # update (diffax/train/runner.py): the same training bit for bit, faster matrix products on GPUs.
    train.cast_params = False
    # Hold parameters, EMAs and Adam's moments as one flat vector each, so the update runs as a few fusions
    # (diffax/train/runner.py; needs float32 parameters and mesh.fsdp = 1).
    train.flat_state = False
    train.ema_decays = (0.999,)  # One EMA of the parameters per decay; sampling uses ema_decays[sample.ema_index].
    # EMA warm-up: decay min(d, (1 + t) / (10 + t)) at step t (TensorFlow's ExponentialMovingAverage num_updates),
    # so the EMA forgets the random initialization (digits.py:cpu, 200 steps: EMA 6.19 bits/dim against 6.15 for the
    # raw parameters; 7.22 without warm-up); False: d from step 0 (runs trained before it existed).
    train.ema_warmup = True
    train.log_every = 50
    train.checkpoint_every = 500
    train.keep_checkpoints = 3
    train.sample_every = 0     # Write a sample grid every this many steps (0: only at the end).
    train.progress_bar = ml_collections.FieldReference(None, field_type=bool)  # None: when stderr is a terminal.

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1             # -1: all devices not used by fsdp.
    mesh.fsdp = 1              # >1 shards parameters and optimizer state over this many devices.
    mesh.min_fsdp_size = 2**14  # Arrays with fewer elements stay replicated under FSDP.
    mesh.num_devices = -1      # Use the first this many devices (-1: all; single-process runs only).

    config.sample = sample = ml_collections.ConfigDict()
    sample.method = "dpmpp_2m"
    sample.num_steps = 50
    sample.grid = "uniform"    # Time grid kind: uniform, quadratic, karras, log_snr, trailing.
    sample.t_end = 0.0
    sample.options = ml_collections.ConfigDict()  # Solver options, e.g. --config.sample.options.eta=1.0 (ddim).
    sample.num_samples = 64
    sample.batch_size = 64     # Samples per sampler call.
    sample.guidance_scale = 1.0  # Classifier-free guidance (class_conditional models): 1 = conditional only.
    sample.clip_denoised = False  # Clip every x0 prediction to the data range [-1, 1] (images; DDPM and ADM do).
    sample.cast_params = False  # Cast the parameters the network only uses cast once per sampler call (a speed option).
    sample.ema_index = 0       # Which EMA to sample from; -1: the raw parameters.
    sample.labels = ()         # Classes of the samples, cycled (class-conditional runs); (): 0, 1, 2, ...
    sample.seed = 0            # --mode sample: sample i is drawn from fold_in(PRNGKey(seed), i).
    sample.step = ml_collections.FieldReference(None, field_type=int)  # Checkpoint to sample / eval; None: newest.

    config.edit = edit = ml_collections.ConfigDict()  # --mode edit (diffax/modes/edit.py).
    edit.task = "denoise"      # denoise, img2img or inpaint.
    edit.input = ""            # A PNG (one image) or an .npz with `images` (N, H, W, C) uint8; "": edit.num_images
                               # held-out images of data.eval_split.
    edit.num_images = 8
    edit.noise_std = (0.1, 0.2, 0.4)  # denoise: noise stds in [0, 1] intensity units, added (edit.add_noise), removed.
    edit.add_noise = True      # denoise: add the noise to the input first (False: the input is already noisy).
    edit.num_steps = 0         # denoise: 0 = the posterior mean in one call; img2img/inpaint: 0 = sample.num_steps.
    edit.intermediates = 0     # denoise with num_steps > 0: states of the run shown between noisy and result.
    edit.strength = 0.6        # img2img: the share of the sampler's steps that run.
    edit.mask = ""             # inpaint: a PNG, white = repaint; "": the right half of every image.
    # inpaint: "posterior" samples with the run's sampler (sample.*) and the Gaussian posterior denoiser, exact on
    # Gaussian data (benchmarks/RESULTS.md, "Inpainting"); "repaint": RePaint, DDPM steps with resampling.
    edit.inpaint_algorithm = "posterior"
    edit.cg_steps = 1          # posterior: conjugate-gradient iterations per denoiser call (each one Jacobian product).
    edit.jump_length = 10      # repaint: RePaint's resampling (jump_n_sample 1: plain replacement).
    edit.jump_n_sample = 10

    config.eval = evaluation = ml_collections.ConfigDict()  # --mode eval (diffax/modes/evaluate.py).
    evaluation.batch_size = 256  # Held-out loss batches; images per feature-network call.
    evaluation.loss = True     # Held-out loss of every parameter set.
    evaluation.num_batches = 4  # Held-out batches for the loss (each with its own noise draws).
    evaluation.bits_per_dim = True  # Image data: probability-flow ODE bits/dim (slow; on bpd_examples images).
    evaluation.bpd_examples = 64
    evaluation.bpd_rtol = 1e-3
    # Sample quality (diffax/modes/sample_quality.py): samples drawn with the sample.* settings and scored; None:
    # 10,000 on GPUs and TPUs, 1,000 on a CPU; 0: none. Mixture data (toy2d) are scored exactly; images need:
    evaluation.num_samples = ml_collections.FieldReference(None, field_type=int)
    evaluation.features = ""   # 'classifier:WORKDIR' (FCD with a trained classifier run, offline) or 'inception' (FID).
    evaluation.inception_weights = ""  # .npz from `python -m diffax.convert inception pt_inception-...pth OUT.npz`.
    evaluation.reference_stats = ""  # .npz with mu, sigma (--mode stats, or ADM's reference batches): FD to it too.
    evaluation.stats_split = ""  # --mode stats: the split whose statistics are written ("": data.split).

    config.bench = bench = ml_collections.ConfigDict()
    bench.batch_size = ml_collections.FieldReference(None, field_type=int)  # None: train.batch_size.
    bench.steps = 10           # Timed dispatches after compilation.
    bench.sample_steps = 10    # Timed sampler steps are measured on a scan of this many steps.
    bench.peak_flops = ml_collections.FieldReference(None, field_type=float)  # Per device; None: a table lookup.
    bench.train_only = False   # Skip the denoiser, sampler and accuracy measurements (scaling runs).
    bench.example_shape = ""   # "H,W,C" replaces the data's example shape (e.g. 32,32,4 for latents); "": the data's.
    return config


def shrink(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """The shared small variants: 'cpu' trains briefly on a laptop CPU, 'tiny' only checks the plumbing (tests)."""
    if variant not in ("cpu", "tiny"):
        raise ValueError(f"unknown config variant {variant!r}; expected '', 'cpu' or 'tiny'")
    config.train.batch_size = 32 if variant == "cpu" else 8
    config.train.num_steps = 200 if variant == "cpu" else 4
    config.train.log_every = 20 if variant == "cpu" else 2
    config.train.checkpoint_every = 100 if variant == "cpu" else 2
    config.optim.warmup_steps = 10 if variant == "cpu" else 1
    config.mesh.fsdp = 1
    config.train.steps_per_dispatch = 1  # XLA:CPU runs loop bodies slowly; the short intervals above need 1.
    config.model.compute_dtype = "float32"
    config.sample.num_samples = config.sample.batch_size = 16 if variant == "cpu" else 4
    config.sample.num_steps = 20 if variant == "cpu" else 3
    config.eval.batch_size = 32 if variant == "cpu" else 8
    config.eval.num_batches = 2 if variant == "cpu" else 1
    config.eval.bpd_examples = 8 if variant == "cpu" else 2
    config.eval.bpd_rtol = 1e-2
    config.bench.steps = 3 if variant == "cpu" else 2
    config.bench.sample_steps = 4 if variant == "cpu" else 2
    return config
