"""Networks by name: `build_network("ddpm_cifar10", dropout=0.2)`.

A preset is a function of keyword overrides returning a Flax module; `NETWORKS` is a plain dict so configs pick
networks by name and size, and projects can add entries. Parameter counts of the presets (float32 params):

    ddpm_cifar10      35,746,307   DDPM CIFAR-10 (Ho et al. 2020), exactly the published count
    ddpmpp_cifar10    55,732,739   EDM's DDPM++ / SongUNet CIFAR-10 config (Karras et al. 2022); EDM reports
                                   55,733,891, which adds its 1,152-parameter augmentation-label layer
    adm_imagenet64   295,905,222   ADM ImageNet-64 (Dhariwal & Nichol 2021), 1000 classes, learned sigma (6 out)
    dit_xl_2         674,834,720   DiT-XL/2 with num_classes=1000, out_channels=8 on 32x32x4 latents; DiT
                                   reports 675,129,632, which counts its frozen 294,912-entry position table
    autoencoder_kl_f8 83,653,863   the Stable Diffusion VAE (LDM kl-f8), exactly diffusers' AutoencoderKL count
    autoencoder_kl_f4 55,312,063   LDM's kl-f4 (Rombach et al. 2022), counted by formula from its config
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn

from diffax.nets.autoencoder import AutoencoderKL
from diffax.nets.classifier import Classifier
from diffax.nets.dit import DiT
from diffax.nets.mlp import MLP
from diffax.nets.unet import UNet

DIT_SIZES: dict[str, dict[str, int]] = {
    "s": dict(depth=12, hidden_size=384, num_heads=6),
    "b": dict(depth=12, hidden_size=768, num_heads=12),
    "l": dict(depth=24, hidden_size=1024, num_heads=16),
    "xl": dict(depth=28, hidden_size=1152, num_heads=16),
}

# Image classifiers (`config.task = "classifier"`): `__call__(x, *, train, return_features=False)`, no noise
# level or conditioning; their penultimate features serve the offline sample-quality metrics.
CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {"classifier": Classifier}

# Autoencoders for latent diffusion (Rombach et al. 2022): `__call__(x, *, sample_posterior, key, train)` ->
# (reconstruction, posterior), with `encode` and `decode` methods; channels 128, 2 residual blocks per level.
AUTOENCODERS: dict[str, Callable[..., nn.Module]] = {
    "autoencoder_kl": AutoencoderKL,
    "autoencoder_kl_f8": functools.partial(AutoencoderKL, channel_mult=(1, 2, 4, 4), latent_channels=4),
    "autoencoder_kl_f4": functools.partial(AutoencoderKL, channel_mult=(1, 2, 4), latent_channels=3),
    # For CPU runs and tests: f = 2, widths 32 and 64, one residual block per level.
    "autoencoder_kl_tiny": functools.partial(AutoencoderKL, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                             latent_channels=4),
}

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "dit": DiT,
    "mlp": MLP,
    # Ho et al. 2020, Appendix B: the UNet defaults.
    "ddpm_cifar10": functools.partial(UNet, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                                      attention_levels=(1,), dropout=0.1),
    # Karras et al. 2022 (EDM), config F for CIFAR-10 (VP/VE, DDPM++ architecture).
    "ddpmpp_cifar10": functools.partial(UNet, channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                                        attention_levels=(1,), dropout=0.13, resample="resblock",
                                        resample_filter=(1, 1), skip_projection=True,
                                        skip_scale=1 / math.sqrt(2), decoder_attention="last"),
    # Dhariwal & Nichol 2021, Table 14: ImageNet 64x64, class-conditional, learned variances.
    "adm_imagenet64": functools.partial(UNet, channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                                        attention_levels=(1, 2, 3), head_channels=64, dropout=0.1,
                                        resample="resblock", scale_shift=True, num_classes=1000, out_channels=6,
                                        norm_eps=1e-5),
    # Small networks for CPU runs and tests.
    "unet_tiny": functools.partial(UNet, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                   attention_levels=(1,), dropout=0.0),
    "dit_tiny": functools.partial(DiT, patch_size=2, hidden_size=64, depth=2, num_heads=4),
    **{f"dit_{size}_{patch}": functools.partial(DiT, patch_size=patch, **dims)
       for size, dims in DIT_SIZES.items() for patch in (2, 4, 8)},
    **CLASSIFIERS,
    **AUTOENCODERS,
}


def build_network(name: str, **overrides) -> nn.Module:
    """The network called `name` in `NETWORKS`, with keyword overrides of its attributes.

    Example: build_network("dit_xl_2", num_classes=1000, dtype=jnp.bfloat16).
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](**overrides)
