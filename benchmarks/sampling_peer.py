"""The peer of diffax's end-to-end sampling speed: diffusers' `DDIMPipeline` with the DDPM CIFAR-10 `UNet2DModel`
(google/ddpm-cifar10-32's architecture, 35.7M parameters, random weights), 50 DDIM steps (eta 0, trailing
timesteps, linear betas), from noise to uint8 images on the host. The UNet runs under torch.compile (the mode below)
in bf16 autocast with TF32 on. Prints one JSON line with images/s (mean over --repeats runs after --warmup runs).

    python benchmarks/sampling_peer.py --batch_size 1024 --steps 50 --compile_mode default
    python launch.py --config configs/cifar10_ddpm.py --workdir /tmp/b --mode bench \
        --config.model.compute_dtype=bfloat16 --config.sample.method=ddim --config.sample.grid=trailing \
        --config.bench.sample_steps=50 --config.sample.batch_size=1024       # diffax: sample_end_to_end_...
"""

import argparse
import json
import time

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compile_mode", default="default", help="torch.compile mode, or 'none'")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                       norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1).cuda().eval()
    parameters = sum(p.numel() for p in unet.parameters())
    if args.compile_mode != "none":
        unet = torch.compile(unet, mode=args.compile_mode)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")
    pipeline = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)

    def run(seed: int) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            images = pipeline(batch_size=args.batch_size, num_inference_steps=args.steps, eta=0.0,
                              generator=torch.Generator("cuda").manual_seed(seed), output_type="np").images
        return np.round(images * 255).astype(np.uint8)  # (B, 32, 32, 3) in [0, 1] -> uint8, as diffax's.

    start = time.time()
    for seed in range(args.warmup):
        run(seed)
    warmup_seconds = time.time() - start
    start = time.time()
    for seed in range(args.repeats):
        images = run(100 + seed)
    seconds = (time.time() - start) / args.repeats
    print(json.dumps({"framework": "diffusers", "parameters": parameters, "batch_size": args.batch_size,
                      "steps": args.steps, "compile_mode": args.compile_mode, "images_shape": list(images.shape),
                      "images_per_second": args.batch_size / seconds, "seconds_per_run": seconds,
                      "warmup_seconds": warmup_seconds,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
