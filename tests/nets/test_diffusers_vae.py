"""The diffusers AutoencoderKL converter (`python -m diffax.convert sd-vae`): the Stable Diffusion VAE's state dict
names and shapes (from diffusers itself) fill the autoencoder_kl_f8 preset exactly; a small diffusers AutoencoderKL
with random weights, converted, gives diffusers' posterior and decoding (computed by diffusers in float64,
`fixtures/make_sd_vae_fixture.py`); older attention names convert alike; bad weights are named."""

import functools
import json
import math
import os

import jax
import numpy as np
import pytest

from diffax import convert, weights
from diffax.nets import build_network, diffusers_vae
from tests.evaluation.fixtures.make_inception_fixture import random_state_dict
from tests.nets.fixtures.make_sd_vae_fixture import SEED, ldm_state_dict

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOLERANCE = 1e-5  # max |error| / max |reference|, float32 against diffusers in float64


@functools.cache
def reference_keys() -> dict:
    with open(os.path.join(FIXTURES, "sd_vae_keys.json")) as file:
        return json.load(file)


def shapes_only(name: str) -> dict[str, np.ndarray]:
    """A state dict of `name`'s names and shapes whose tensors are zero-stride views (no memory, any size)."""
    return {key: np.broadcast_to(np.float32(0), shape) for key, shape in reference_keys()[name]["shapes"].items()}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, np.ndarray]:
    return random_state_dict(reference_keys()["tiny"]["shapes"], SEED)


@pytest.fixture(scope="module")
def converted_path(tiny_state, tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("sd_vae")
    np.savez(directory / "state_dict.npz", **tiny_state)
    convert.main(["sd-vae", str(directory / "state_dict.npz"), str(directory / "tiny_vae")])
    return str(directory / "tiny_vae.npz")


def _relative_error(value, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(value, np.float64) - reference).max() / np.abs(reference).max())


def test_the_stable_diffusion_vae_fills_the_f8_preset():
    config = reference_keys()["sd"]["config"]
    assert (config["block_out_channels"], config["layers_per_block"], config["latent_channels"],
            config["norm_num_groups"]) == ([128, 256, 512, 512], 2, 4, 32)
    assert config["scaling_factor"] == diffusers_vae.SD_SCALING_FACTOR
    flat = diffusers_vae.variables_from_diffusers(shapes_only("sd"))  # every key used, every variable filled
    preset = build_network("autoencoder_kl_f8")
    settings = diffusers_vae.autoencoder_settings(flat)
    assert {name: getattr(preset, name) for name in settings} == settings
    assert sum(math.prod(np.shape(value)) for value in flat.values()) == reference_keys()["sd"]["parameters"]
    assert flat["params/decoder/up_blocks_2/resnets_0/Conv_2/kernel"].shape == (1, 1, 512, 256)  # conv_shortcut
    assert flat["params/encoder/mid_block/attentions_0/Attention_0/out/kernel"].shape == (512, 512)


def test_tensors_are_transposed_to_flax_layouts(tiny_state):
    flat = diffusers_vae.variables_from_diffusers(tiny_state)
    kernel = flat["params/decoder/up_blocks_1/resnets_0/Conv_0/kernel"]  # torch (O, I, kH, kW) -> HWIO
    torch_weight = tiny_state["decoder.up_blocks.1.resnets.0.conv1.weight"]
    np.testing.assert_array_equal(kernel[0, 2, 5, 9], torch_weight[9, 5, 0, 2])
    q = flat["params/encoder/mid_block/attentions_0/Attention_0/q/kernel"]  # torch Linear (out, in) -> (in, out)
    np.testing.assert_array_equal(q, tiny_state["encoder.mid_block.attentions.0.to_q.weight"].T)
    np.testing.assert_array_equal(flat["params/encoder/conv_norm_out/scale"],
                                  tiny_state["encoder.conv_norm_out.weight"])


def test_converted_weights_give_diffusers_outputs(converted_path):
    with np.load(os.path.join(FIXTURES, "sd_vae_fixture.npz")) as archive:
        fixture = dict(archive)
    model, variables = diffusers_vae.load_autoencoder(converted_path)
    posterior = jax.jit(lambda variables, x: model.apply(variables, x, method="encode"))(variables, fixture["x"])
    decoded = jax.jit(lambda variables, z: model.apply(variables, z, method="decode"))(variables, posterior.mean)
    errors = {name: _relative_error(value, fixture[name]) for name, value in
              (("mean", posterior.mean), ("logvar", posterior.logvar), ("decoded", decoded))}
    print("relative error against diffusers:", errors)
    assert max(errors.values()) <= TOLERANCE, errors
    # The same file loads into the matching preset.
    preset_variables = diffusers_vae.load_variables(converted_path, build_network("autoencoder_kl_tiny"))
    assert jax.tree.all(jax.tree.map(np.array_equal, preset_variables, variables))


def test_older_attention_names_and_1x1_convolution_weights_convert_alike(tiny_state):
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in tiny_state.items():
        for new_name, old_name in old_names.items():
            if f".attentions.0.{new_name}." in key:
                key = key.replace(new_name, old_name)
                value = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value  # LDM's 1x1 convolutions
        old[key] = value
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
    converted, reference = (diffusers_vae.variables_from_diffusers(state) for state in (old, tiny_state))
    assert converted.keys() == reference.keys()
    assert all(np.array_equal(converted[name], reference[name]) for name in reference)


def test_the_original_ldm_layout_converts_alike(tiny_state):
    # ldm_state_dict renames as CompVis/LDM names the layers (checked against diffusers' LDM converter by the
    # fixture script); a whole Stable Diffusion checkpoint prefixes them with first_stage_model. beside the UNet's.
    reference = diffusers_vae.variables_from_diffusers(tiny_state)
    ldm = ldm_state_dict(tiny_state)
    # LDM's up.1 is the deepest level (diffusers' up_blocks.0, 64 -> 64: no shortcut), up.0 the top (64 -> 32).
    assert "decoder.up.1.block.0.nin_shortcut.weight" not in ldm
    assert ldm["decoder.up.0.block.0.nin_shortcut.weight"].shape == (32, 64, 1, 1)
    whole_checkpoint = {**{f"first_stage_model.{key}": value for key, value in ldm.items()},
                        "model.diffusion_model.out.0.weight": np.zeros(4),
                        "first_stage_model.loss.logvar": np.zeros(())}
    for state in (ldm, whole_checkpoint):
        converted = diffusers_vae.variables_from_diffusers(state)
        assert converted.keys() == reference.keys()
        assert all(np.array_equal(converted[name], reference[name]) for name in reference)
    full_size = diffusers_vae.variables_from_diffusers(ldm_state_dict(shapes_only("sd")))
    assert diffusers_vae.autoencoder_settings(full_size) == diffusers_vae.autoencoder_settings(
        diffusers_vae.variables_from_diffusers(shapes_only("sd")))


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("decoder.up_blocks.0.resnets.1.norm2.bias"),
     "missing: params/decoder/up_blocks_0/resnets_1/GroupNorm_1/bias"),
    (lambda state: state.update({"encoder.extra.weight": np.zeros((1, 1, 1, 1))}),
     "keys with no place in AutoencoderKL(channels=32, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4): "
     "encoder.extra.weight"),
    (lambda state: state.update({"decoder.conv_in.weight": np.zeros((64, 4, 1, 1))}),
     "wrong shape: params/decoder/conv_in/kernel (1, 1, 4, 64) (expected (3, 3, 4, 64))"),
    (lambda state: state.update({"encoder.mid_block.attentions.0.query.weight": np.zeros((64, 64))}),
     "'encoder.mid_block.attentions.0.to_q.weight' and 'encoder.mid_block.attentions.0.query.weight' both map"),
    (lambda state: state.pop("encoder.conv_in.weight"),
     "has no params/encoder/conv_in/kernel: not the weights of a KL autoencoder"),
])
def test_converter_names_what_is_wrong(tiny_state, change, message):
    state = dict(tiny_state)
    change(state)
    with pytest.raises(ValueError, match="'bad.safetensors'") as error:
        diffusers_vae.variables_from_diffusers(state, "'bad.safetensors'")
    assert message in str(error.value)


def test_loaders_name_the_file_and_the_problem(converted_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz.*python -m diffax.convert sd-vae"):
        diffusers_vae.load_autoencoder(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match=r"tiny_vae.npz' is not the weights of AutoencoderKL\(channels=128.*missing"):
        diffusers_vae.load_variables(converted_path, build_network("autoencoder_kl_f8"))
    flat = weights.read_flat(converted_path, "weights", "")
    np.savez(tmp_path / "partial.npz", **{name: value for name, value in flat.items() if "quant_conv" not in name})
    with pytest.raises(ValueError, match="partial.npz' has no params/post_quant_conv/kernel"):
        diffusers_vae.load_autoencoder(str(tmp_path / "partial.npz"))
