"""The peer of diffax's autoencoder training speed: diffusers' `AutoencoderKL` (the Stable Diffusion VAE, 83.65M
parameters) trained on synthetic 256x256 images with torch.compile, bf16 autocast and fused Adam (betas 0.5, 0.9).

The loss is the part both frameworks have: LDM's L1 reconstruction plus 1e-6 x KL, sums over pixels and latents
per image, mean over the batch (the discriminator is off before disc_start in both; diffusers has no LPIPS or
MS-SSIM, so diffax's side runs with autoencoder.perceptual = 'none'). Prints one JSON line with images/s.

    python benchmarks/autoencoder_peer.py --batch_size 16 --steps 30
    python launch.py --config configs/autoencoder_kl_f8.py --workdir /tmp/b --mode bench \
        --config.bench.train_only=True --config.bench.batch_size=16 --config.autoencoder.perceptual=none
"""

import argparse
import json
import time

import torch
from diffusers import AutoencoderKL


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                          block_out_channels=(128, 256, 512, 512),
                          down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4).cuda().train()
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=4.5e-6, betas=(0.5, 0.9), fused=True)

    def loss_fn(images):
        posterior = model.encode(images).latent_dist
        reconstruction = model.decode(posterior.sample()).sample
        rec = (images - reconstruction.float()).abs().sum(dim=(1, 2, 3)).mean()
        return rec + 1e-6 * posterior.kl().float().mean()

    compiled = torch.compile(loss_fn)
    images = torch.rand(args.batch_size, 3, args.size, args.size, device="cuda") * 2 - 1

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(images)
        loss.backward()
        optimizer.step()
        return loss

    start = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    compile_seconds = time.time() - start
    start = time.time()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = time.time() - start
    print(json.dumps({"framework": "diffusers", "parameters": parameters, "batch_size": args.batch_size,
                      "images_per_second": args.batch_size * args.steps / seconds,
                      "ms_per_step": 1000 * seconds / args.steps, "compile_seconds": compile_seconds,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}))


if __name__ == "__main__":
    main()
