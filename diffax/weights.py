"""Converted weight files: flat `.npz` archives of a Flax network's variables, keyed by '/'-joined paths
('params/encoder/conv_in/kernel'), written by `python -m diffax.convert` and read with `allow_pickle=False`.

One checker and one reader serve every converted network (FID Inception, the Stable Diffusion VAE, LPIPS), so each
names what is missing, unexpected or misshapen in the same words.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import numpy as np


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Nested variables {'params': {'conv': {'kernel': a}}} -> {'params/conv/kernel': a}."""
    return {"/".join(path): leaf for path, leaf in traverse_util.flatten_dict(dict(variables)).items()}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten`."""
    return traverse_util.unflatten_dict({tuple(name.split("/")): value for name, value in flat.items()})


def variable_shapes(model: nn.Module, *inputs: jax.ShapeDtypeStruct, **kwargs) -> dict[str, tuple[int, ...]]:
    """The flat variable names of `model.init(key, *inputs, **kwargs)` -> shapes, traced only (nothing allocated)."""
    shapes = jax.eval_shape(lambda *inputs: model.init(jax.random.key(0), *inputs, **kwargs), *inputs)
    return {name: tuple(leaf.shape) for name, leaf in flatten(shapes).items()}


def check_variables(flat: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str,
                    source: str) -> None:
    """Raise ValueError "`source` is not `what`; missing: ...; unexpected: ...; wrong shape: ..." naming every
    variable of `expected` (name -> shape) that `flat` lacks, every name it has beyond them, and every shape that
    differs."""
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    misshapen = [f"{name} {tuple(np.shape(flat[name]))} (expected {tuple(expected[name])})"
                 for name in sorted(set(expected) & set(flat)) if tuple(np.shape(flat[name])) != tuple(expected[name])]
    problems = [f"{label}: {', '.join(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen)) if names]
    if problems:
        raise ValueError(f"{source} is not {what}; " + "; ".join(problems))


def read_flat(path: str, what: str, how_to_make: str) -> dict[str, np.ndarray]:
    """The arrays of a converted `.npz` (name -> array). Errors name `path`; a missing file also says
    `how_to_make` it (e.g. the convert command)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} do not exist: {how_to_make}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as error:
        raise ValueError(f"{what} {path!r} are not an .npz archive ({error})") from error
