"""Weight converters: public weight files -> flat `.npz` files that diffax loads (`allow_pickle=False`).

    python -m diffax.convert inception pt_inception-2015-12-05-6726825d.pth inception.npz
        pytorch-fid's FID Inception weights -> `eval.inception_weights=inception.npz`
        (`diffax.evaluation.inception.inception_feature_fn`)
    python -m diffax.convert sd-vae diffusion_pytorch_model.safetensors sd_vae.npz
        a KL autoencoder in diffusers' or LDM's layout (the Stable Diffusion VAE) -> AutoencoderKL variables
        (`diffax.nets.diffusers_vae.load_autoencoder`)
    python -m diffax.convert lpips vgg16-397923af.pth vgg.pth lpips_vgg.npz
        torchvision's VGG16 and the lpips package's linear layers (weights/v0.1/vgg.pth) -> LPIPS variables
        (`diffax.evaluation.lpips.lpips_fn`)

A converter reads a state dict (name -> tensor) from a PyTorch file (`torch.load(..., weights_only=True)`: data,
never code; torch is needed for this alone and imported only then), a `.safetensors` file (the `safetensors`
package) or an `.npz` of the same names, and writes the network's variables. `CONVERTERS` is the registry: name ->
function(*sources, destination), whose parameter names become the command's arguments.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable, Sequence

import numpy as np

from diffax.evaluation import inception, lpips
from diffax.nets import diffusers_vae

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading the PyTorch file {path!r} needs torch (pip install torch), or convert it to "
                          ".npz or .safetensors elsewhere") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a PyTorch Lightning checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict (name -> tensor)")
    return {name: value.detach().numpy() for name, value in state.items() if isinstance(value, torch.Tensor)}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise ImportError(f"reading {path!r} needs the safetensors package (pip install safetensors)") from error
    return load_file(path)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A state dict (name -> numpy array) from a `.pth`/`.pt`/`.bin`/`.ckpt`, `.safetensors` or `.npz` file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(TORCH_SUFFIXES):
        return _read_torch(path)
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(".npz"):
        return _read_npz(path)
    raise ValueError(f"weights file {path!r}: expected one of {', '.join(TORCH_SUFFIXES)}, .safetensors or .npz")


def convert_inception(source: str, destination: str) -> None:
    """pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` -> the FID Inception variables (pool3 network)."""
    np.savez(destination, **inception.variables_from_torch(read_state_dict(source), repr(source)))


def convert_sd_vae(source: str, destination: str) -> None:
    """A diffusers (or LDM) AutoencoderKL state dict (the Stable Diffusion VAE) -> AutoencoderKL variables."""
    np.savez(destination, **diffusers_vae.variables_from_diffusers(read_state_dict(source), repr(source)))


def convert_lpips(vgg16: str, linear_layers: str, destination: str) -> None:
    """torchvision's vgg16 state dict + the lpips package's weights/v0.1/vgg.pth -> LPIPS (VGG) variables."""
    np.savez(destination, **lpips.variables_from_torch(read_state_dict(vgg16), read_state_dict(linear_layers),
                                                       f"{vgg16!r} and {linear_layers!r}"))


CONVERTERS: dict[str, Callable[..., None]] = {"inception": convert_inception, "sd-vae": convert_sd_vae,
                                              "lpips": convert_lpips}


def _sources(converter: Callable[..., None]) -> list[str]:
    """The names of a converter's input files: its parameters but the last (the destination)."""
    return list(inspect.signature(converter).parameters)[:-1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffax.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="network", required=True)
    for name, converter in CONVERTERS.items():
        command = commands.add_parser(name, help=converter.__doc__)
        for source in _sources(converter):
            command.add_argument(source, help="a weights file to read")
        command.add_argument("destination", help="the .npz file to write")
    args = parser.parse_args(argv)
    destination = args.destination if args.destination.endswith(".npz") else args.destination + ".npz"
    converter = CONVERTERS[args.network]
    converter(*(getattr(args, source) for source in _sources(converter)), destination)
    print(f"wrote {destination}")


if __name__ == "__main__":
    main()
