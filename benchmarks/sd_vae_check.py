"""The full-size Stable Diffusion VAE converted into diffax, on an accelerator, against diffusers: relative errors
of the posterior mean and log-variance and of the decoding, for float32 at full and at default matmul precision
and for bfloat16 compute.

diffusers is not needed here: the reference is made once elsewhere with the throwaway fixture tool (torch,
diffusers; float64 on the CPU, ~1 minute), and the random weights are rebuilt here from the same seed:

    python tests/nets/fixtures/make_sd_vae_fixture.py --full-size-reference /tmp/sd_vae_reference.npz
    python benchmarks/sd_vae_check.py /tmp/sd_vae_reference.npz

The weights go through the converter's command line (`python -m diffax.convert sd-vae`, 335 MB written to a
temporary folder) and `load_autoencoder`. Error = max |diffax - diffusers| / max |diffusers|; the decoder is fed
diffusers' posterior mean, so its error is its own. Figures go to benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from diffax import convert  # noqa: E402
from diffax.nets import build_network, diffusers_vae  # noqa: E402
from tests.evaluation.fixtures.make_inception_fixture import random_state_dict  # noqa: E402
from tests.nets.fixtures.make_sd_vae_fixture import SEED  # noqa: E402


def _relative_error(value, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(value, np.float64) - reference).max() / np.abs(reference).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="the .npz from make_sd_vae_fixture.py --full-size-reference")
    reference = dict(np.load(parser.parse_args().reference, allow_pickle=False))
    with open(os.path.join(REPO, "tests", "nets", "fixtures", "sd_vae_keys.json")) as file:
        keys = json.load(file)["sd"]

    with tempfile.TemporaryDirectory() as directory:
        np.savez(os.path.join(directory, "state_dict.npz"), **random_state_dict(keys["shapes"], SEED))
        convert.main(["sd-vae", os.path.join(directory, "state_dict.npz"), os.path.join(directory, "sd_vae.npz")])
        model, variables = diffusers_vae.load_autoencoder(os.path.join(directory, "sd_vae.npz"))
        preset = build_network("autoencoder_kl_f8")
        diffusers_vae.load_variables(os.path.join(directory, "sd_vae.npz"), preset)  # fills the f8 preset
    parameters = sum(leaf.size for leaf in jax.tree.leaves(variables))
    print(f"device: {jax.devices()[0].device_kind}; parameters {parameters:,} (diffusers {keys['parameters']:,}); "
          f"images {reference['x'].shape}, latents {reference['mean'].shape}")
    variables = jax.device_put(variables)

    for label, dtype, precision in (("float32, highest precision", jnp.float32, "highest"),
                                    ("float32, default precision", jnp.float32, "default"),
                                    ("bfloat16 compute", jnp.bfloat16, "default")):
        model = model.clone(dtype=dtype)
        with jax.default_matmul_precision(precision):
            posterior = jax.jit(lambda v, x: model.apply(v, x, method="encode"))(variables, reference["x"])
            decoded = jax.jit(lambda v, z: model.apply(v, z, method="decode"))(variables, reference["mean"])
        errors = {"mean": _relative_error(posterior.mean, reference["mean"]),
                  "logvar": _relative_error(posterior.logvar, reference["logvar"]),
                  "decoded": _relative_error(decoded, reference["decoded"])}
        print(f"{label:28s} " + "  ".join(f"{name} {error:.2e}" for name, error in errors.items()))


if __name__ == "__main__":
    main()
