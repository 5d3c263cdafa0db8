"""Networks (Flax Linen), chosen by name with `build_network`: the score networks `UNet` (DDPM / ADM / DDPM++),
`DiT`, `MLP`, the image `Classifier` (`CLASSIFIERS`), called as `net.apply(variables, x, train=...)`, and the
latent-diffusion `AutoencoderKL` (`AUTOENCODERS`) with its `PatchDiscriminator`.

Every score network is called as `net.apply(variables, x, noise_level, cond=None, train=...)`:
x (B, H, W, C) images or (B, D) vectors, noise_level (B,), cond None | (B,) int labels | (B, L, E) embeddings;
it returns an array of x's shape (unless `out_channels` / `out_features` says otherwise) and dtype.
See `embeddings` for the conditioning contract and the noise-level scaling.
"""

from diffax.nets.autoencoder import AutoencoderKL, DiagonalGaussian
from diffax.nets.classifier import Classifier
from diffax.nets.discriminator import PatchDiscriminator
from diffax.nets.dit import DiT
from diffax.nets.embeddings import drop_labels
from diffax.nets.flops import forward_flops_per_example
from diffax.nets.mlp import MLP
from diffax.nets.registry import AUTOENCODERS, CLASSIFIERS, NETWORKS, build_network
from diffax.nets.unet import UNet

__all__ = ["AUTOENCODERS", "AutoencoderKL", "CLASSIFIERS", "Classifier", "DiT", "DiagonalGaussian", "MLP", "NETWORKS",
           "PatchDiscriminator", "UNet", "build_network", "drop_labels", "forward_flops_per_example"]
