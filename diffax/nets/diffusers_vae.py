"""Public KL-autoencoder weights in diffusers' or LDM's layout (the Stable Diffusion VAE) -> diffax's `AutoencoderKL`.

    python -m diffax.convert sd-vae diffusion_pytorch_model.safetensors sd_vae.npz
    model, variables = load_autoencoder("sd_vae.npz")
    posterior = model.apply(variables, images, method="encode")       # images (B, H, W, 3) in [-1, 1]
    latents = SD_SCALING_FACTOR * posterior.mode()                     # what Stable Diffusion's UNet sees

diffusers' `AutoencoderKL` state dict (`encoder.down_blocks.0.resnets.1.norm1.weight`, ...) maps name by name onto
diffax's (`params/encoder/down_blocks_0/resnets_1/GroupNorm_0/scale`): numbered containers `x.N` become `x_N`;
inside a residual block norm1, conv1, norm2, conv2, conv_shortcut become GroupNorm_0, Conv_0, GroupNorm_1, Conv_1,
Conv_2; in the mid-block attention group_norm, to_q, to_k, to_v, to_out.0 become GroupNorm_0 and Attention_0/q, k,
v, out (the names diffusers used before 0.14, query, key, value, proj_attn, map the same way); the resamplers'
`conv` becomes Conv_0. Tensors: convolution weights OIHW -> HWIO, linear weights (out, in) -> (in, out) (also
where a checkpoint stores them as 1x1 convolutions, (out, in, 1, 1)), GroupNorm weight -> scale; float32.
The original CompVis/LDM layout (`encoder.down.0.block.1.norm1.weight`, `mid.attn_1.q`, `nin_shortcut`; the
original Stable Diffusion VAE files, and whole SD checkpoints, whose autoencoder is under `first_stage_model.`) is
renamed to diffusers' first, as diffusers' `convert_ldm_vae_checkpoint` does; LDM's training-only `loss.*` (LPIPS
and discriminator) and `model_ema.*` entries are left out.

The architecture is read from the weights (`autoencoder_settings`): widths from the convolutions, blocks per level
by counting, latent channels from post_quant_conv. The GroupNorm group count leaves no trace in the weights: it is
32, as in every published KL autoencoder (diffusers' `norm_num_groups` default). The Stable Diffusion VAE (SD 1.x,
2.x; `block_out_channels` (128, 256, 512, 512), `layers_per_block` 2, `latent_channels` 4, `norm_num_groups` 32)
reads as the `autoencoder_kl_f8` preset, whose layers are diffusers' (the module docstring of
`diffax.nets.autoencoder`; checked against diffusers' outputs in tests/nets/test_diffusers_vae.py). Its latents are
scaled by `SD_SCALING_FACTOR` (diffusers' `scaling_factor`) before diffusion; the SDXL VAE uses 0.13025.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffax import weights
from diffax.nets.autoencoder import AutoencoderKL

SD_SCALING_FACTOR = 0.18215  # SD 1.x / 2.x: 0.18215 * E(x) has about unit variance on its training images
NORM_GROUPS = 32

# diffusers' layer name -> diffax's, for the last module of a key (after numbered containers became `name_N`).
_LAYER_NAMES = {
    "norm1": "GroupNorm_0", "conv1": "Conv_0", "norm2": "GroupNorm_1", "conv2": "Conv_1", "conv_shortcut": "Conv_2",
    "group_norm": "GroupNorm_0",
    "to_q": "Attention_0/q", "to_k": "Attention_0/k", "to_v": "Attention_0/v", "to_out_0": "Attention_0/out",
    "query": "Attention_0/q", "key": "Attention_0/k", "value": "Attention_0/v", "proj_attn": "Attention_0/out",
    "conv": "Conv_0",
}
_NORMS = ("GroupNorm_0", "GroupNorm_1", "conv_norm_out")
_LINEARS = ("Attention_0/q", "Attention_0/k", "Attention_0/v", "Attention_0/out")


def _diffax_name(key: str) -> str:
    """'encoder.mid_block.attentions.0.to_out.0.weight' -> 'params/encoder/mid_block/attentions_0/Attention_0/out/
    kernel'."""
    module, _, leaf = key.rpartition(".")
    parts = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", module).split(".")
    layer = _LAYER_NAMES.get(parts[-1], parts[-1])
    if leaf == "weight":
        leaf = "scale" if layer in _NORMS else "kernel"
    return "/".join(["params", *parts[:-1], layer, leaf])


def _diffax_value(name: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if name.endswith("/kernel") and name.rpartition("/")[0].endswith(_LINEARS):
        return value.reshape(value.shape[:2]).T  # (out, in) or (out, in, 1, 1) -> (in, out)
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO


def autoencoder_settings(flat: Mapping[str, Any], source: str = "the weights") -> dict[str, Any]:
    """`AutoencoderKL` attributes read off flat diffax variables' shapes: channels, channel_mult, num_res_blocks,
    latent_channels, out_channels (and norm_groups = 32, which weights do not show)."""
    def width(name: str) -> int:
        if name not in flat:
            raise ValueError(f"{source} has no {name}: not the weights of a KL autoencoder (diffusers' "
                             "AutoencoderKL)")
        return int(np.shape(flat[name])[-1])

    channels = width("params/encoder/conv_in/kernel")
    levels = sorted({int(match.group(1)) for name in flat
                     if (match := re.match(r"params/encoder/down_blocks_(\d+)/", name))})
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"{source}: the encoder's down_blocks are numbered {levels}: expected 0, 1, ...")
    widths = [width(f"params/encoder/down_blocks_{level}/resnets_0/Conv_0/kernel") for level in levels]
    if any(w % channels for w in widths):
        raise ValueError(f"{source}: block widths {widths} are not multiples of the first, {channels}")
    num_res_blocks = len({name.split("/")[3] for name in flat
                          if name.startswith("params/encoder/down_blocks_0/resnets_")})
    return dict(channels=channels, channel_mult=tuple(w // channels for w in widths), num_res_blocks=num_res_blocks,
                latent_channels=width("params/post_quant_conv/kernel"),
                out_channels=width("params/decoder/conv_out/kernel"), norm_groups=NORM_GROUPS)


def expected_shapes(model: AutoencoderKL, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The flat variable names of `model` -> shapes (traced on one f x f image: the shapes do not depend on it)."""
    return _expected_shapes(model.channels, tuple(model.channel_mult), model.num_res_blocks, model.latent_channels,
                            model.out_channels, model.norm_groups, in_channels)


@functools.cache
def _expected_shapes(channels: int, channel_mult: tuple[int, ...], num_res_blocks: int, latent_channels: int,
                     out_channels: int, norm_groups: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    model = AutoencoderKL(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                          latent_channels=latent_channels, out_channels=out_channels, norm_groups=norm_groups)
    f = model.downsampling_factor
    return weights.variable_shapes(model, jax.ShapeDtypeStruct((1, f, f, in_channels), jnp.float32))


def check_variables(flat: Mapping[str, Any], model: AutoencoderKL, source: str) -> None:
    """Raise ValueError naming every variable of `model` that `flat` lacks, has beyond, or shapes otherwise."""
    weights.check_variables(flat, expected_shapes(model, _in_channels(flat)), f"the weights of {_describe(model)}",
                            source)


def _in_channels(flat: Mapping[str, Any]) -> int:
    """Image channels the encoder reads (3 where the weights do not say)."""
    kernel = flat.get("params/encoder/conv_in/kernel")
    return 3 if kernel is None else int(np.shape(kernel)[2])


def _describe(model: AutoencoderKL) -> str:
    return (f"AutoencoderKL(channels={model.channels}, channel_mult={tuple(model.channel_mult)}, "
            f"num_res_blocks={model.num_res_blocks}, latent_channels={model.latent_channels})")


# CompVis/LDM names (`ldm.modules.diffusionmodules.model`, the original Stable Diffusion files) -> diffusers', as
# diffusers' `convert_ldm_vae_checkpoint` renames them; the decoder's `up.i` are numbered from the top resolution.
_LDM_RENAMES = (
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."), (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn_1\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."), (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
)
LDM_PREFIX = "first_stage_model."  # the autoencoder inside a whole Stable Diffusion checkpoint
LDM_TRAINING_ONLY = ("loss.", "model_ema.")  # LDM's loss networks (LPIPS, discriminator) and EMA bookkeeping


def _diffusers_keys(keys: list[str]) -> dict[str, str]:
    """diffusers' name -> the given key, for keys in diffusers' layout, or in LDM's (with or without the
    `first_stage_model.` prefix of a whole Stable Diffusion checkpoint, whose other keys are then left out, as are
    LDM's training-only keys)."""
    if any(key.startswith(LDM_PREFIX) for key in keys):
        keys = [key for key in keys if key.startswith(LDM_PREFIX)]
    short = {key.removeprefix(LDM_PREFIX): key for key in keys}
    if not any(re.match(r"(encoder\.down|decoder\.up|encoder\.mid)\.", key) for key in short):
        return short
    up_levels = {int(match.group(1)) for key in short if (match := re.match(r"decoder\.up\.(\d+)\.", key))}
    renamed = {}
    for key, original in short.items():
        if key.startswith(LDM_TRAINING_ONLY):
            continue
        if match := re.match(r"decoder\.up\.(\d+)\.(block|upsample)\.", key):  # deepest level first in diffusers
            inner = "resnets" if match.group(2) == "block" else "upsamplers.0"
            key = f"decoder.up_blocks.{len(up_levels) - 1 - int(match.group(1))}.{inner}.{key[match.end():]}"
        for pattern, replacement in _LDM_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = original
    return renamed


def variables_from_diffusers(state_dict: Mapping[str, np.ndarray],
                             source: str = "the state dict") -> dict[str, np.ndarray]:
    """diffusers' AutoencoderKL state dict (name -> array), or one in LDM's layout (`_diffusers_keys`) -> flat
    float32 diffax variables (module docstring), checked: every tensor is used and every variable of the
    architecture it describes is filled, or ValueError names the keys left over and the variables left empty."""
    flat, origin = {}, {}
    for key, original in _diffusers_keys(list(state_dict)).items():
        name = _diffax_name(key)
        if name in flat:
            raise ValueError(f"{source}: {origin[name]!r} and {original!r} both map to {name}")
        flat[name], origin[name] = _diffax_value(name, state_dict[original]), original
    model = AutoencoderKL(**autoencoder_settings(flat, source))
    unused = sorted(origin[name] for name in set(flat) - set(expected_shapes(model, _in_channels(flat))))
    if unused:
        raise ValueError(f"{source}: keys with no place in {_describe(model)}: {', '.join(unused)}")
    check_variables(flat, model, source)
    return flat


def load_variables(path: str, model: AutoencoderKL) -> dict[str, Any]:
    """The variables {'params': ...} of `model` (e.g. `build_network('autoencoder_kl_f8')`) from a converted `.npz`,
    checked against its shapes."""
    flat = read_converted(path)
    check_variables(flat, model, repr(path))
    return weights.nest(flat)


def read_converted(path: str) -> dict[str, np.ndarray]:
    """The flat arrays of a converted `.npz` (`python -m diffax.convert sd-vae`)."""
    return weights.read_flat(path, "autoencoder weights", "convert diffusers' AutoencoderKL weights with "
                             "`python -m diffax.convert sd-vae IN.safetensors OUT.npz`")


def load_autoencoder(path: str, **attributes) -> tuple[AutoencoderKL, dict[str, Any]]:
    """(the AutoencoderKL that a converted `.npz` describes, its variables); `attributes` such as dtype or
    attention_implementation are passed on to it."""
    flat = read_converted(path)
    model = AutoencoderKL(**{**autoencoder_settings(flat, repr(path)), **attributes})
    check_variables(flat, model, repr(path))
    return model, weights.nest(flat)
