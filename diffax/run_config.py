"""A run's config: the file a trained run keeps, command-line overrides, and what a loaded run lets you change.

    WORKDIR/run.json   {"config": the resolved config of the run, "data_spec": {"example_shape": [...],
                        "num_classes": int or null, "is_image": bool, "context_shape": [L, E] or null,
                        "latent_scale": float or null, "image_shape": [...] or null, "autoencoder_step": int
                        or null} (`DataSpec`),
                        "diffax_version": "..."}

Training writes run.json before its first step. Every mode after training and `diffax.load_run` read it: they
build the network the run trained, whatever config file the command line names, and never open the data set.
Runs older than run.json are read from their newest checkpoint's `config` item (the data spec then comes from the
data set).

Overrides are `--config.KEY=VALUE`. VALUE is read as a Python literal (`3`, `1e-4`, `(1, 2)`, `True`, `None`) and
kept as text where that fails or the key holds text. Keys under OPEN_SECTIONS (network attributes, solver options,
schedule/weighting/time-sampling arguments) may be keys the config file does not set; elsewhere an unknown key is
an error. A loaded run takes every override except those of RUN_KEYS (what the run trained: its task, network,
forward process and data), where a value that differs from the saved one is an error naming the keys.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from diffax.experiment import DataSpec

RUN_FILE = "run.json"
OPEN_SECTIONS = ("model.kwargs", "sample.options", "diffusion.schedule_kwargs", "diffusion.weighting_kwargs",
                 "diffusion.time_kwargs")
RUN_KEYS = ("task", "model", "diffusion", "autoencoder.disc_features", "autoencoder.disc_layers", "data.name",
            "data.split", "data.image_size", "data.pad_to", "data.toy_examples", "data.context_key",
            "data.autoencoder", "data.latent_scale", "train.ema_decays")
_PREFIX = "--config."


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(argv without its `--config.KEY=VALUE` / `--config.KEY VALUE` arguments, {KEY: VALUE text})."""
    rest, overrides = [], {}
    arguments = iter(argv)
    for argument in arguments:
        if not argument.startswith(_PREFIX):
            rest.append(argument)
            continue
        key, equals, value = argument[len(_PREFIX):].partition("=")
        if not equals:
            value = next(arguments, None)
            if value is None:
                raise ValueError(f"{argument}: expected a value ({argument}=VALUE)")
        overrides[key] = value
    return rest, overrides


def _parse(text: str, current: Any, field_type: Any) -> Any:
    if field_type is str or isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _in_open_section(key: str) -> bool:
    return any(key.startswith(section + ".") for section in OPEN_SECTIONS)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str]) -> ml_collections.ConfigDict:
    """A copy of `config` with the overrides {KEY: VALUE text} set; unknown keys outside OPEN_SECTIONS and values
    of the wrong type are errors naming the key."""
    config = to_config(config.to_dict())
    for key, text in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for index, part in enumerate(parents):
            if part not in node:
                raise ValueError(f"config.{key}: config.{'.'.join(parents[:index + 1])} does not exist")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise ValueError(f"config.{key}: config.{'.'.join(parents)} is a value, not a section")
        if leaf not in node and not _in_open_section(key):
            raise ValueError(f"config.{key} does not exist; known keys of config.{'.'.join(parents) or '<root>'}: "
                             f"{sorted(node.keys())}")
        current = node.get(leaf)
        value = _parse(text, current, node.get_type(leaf) if leaf in node else None)
        if isinstance(current, tuple) and not isinstance(value, (tuple, list)):
            value = (value,)  # One item where the key holds a tuple, e.g. train.ema_decays=0.999.
        try:
            node[leaf] = value
        except TypeError as error:
            raise ValueError(f"config.{key} = {value!r}: {error}") from None
    return config


def to_config(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A ConfigDict of plain values (e.g. read from JSON), with lists turned back into tuples."""
    def tuples(value):
        if isinstance(value, Mapping):
            return {key: tuples(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return tuple(tuples(item) for item in value)
        return value

    return ml_collections.ConfigDict(tuples(dict(values)))


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _overlay(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with every value of `top` written over it, section by section."""
    merged = dict(base)
    for key, value in top.items():
        both_sections = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = _overlay(merged[key], value) if both_sections else value
    return merged


def _is_run_key(key: str) -> bool:
    return any(key == run_key or key.startswith(run_key + ".") for run_key in RUN_KEYS)


def differing_run_keys(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                       keys: Sequence[str] | None = None) -> list[str]:
    """The RUN_KEYS (or, when `keys` is given, those of them among `keys`) whose values differ between the
    configs. A key one config lacks (a run saved before the key existed, which trained with its default) differs
    only when named in `keys`."""
    first, second = _flatten(to_config(saved.to_dict()).to_dict()), _flatten(to_config(config.to_dict()).to_dict())
    candidates = set(first) & set(second) if keys is None else set(keys)
    return sorted(key for key in candidates if _is_run_key(key) and first.get(key) != second.get(key))


def write_run_file(workdir: str, config: ml_collections.ConfigDict, spec: DataSpec) -> None:
    """Writes WORKDIR/run.json (call from one process)."""
    from diffax import __version__

    path = epath.Path(workdir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": json.loads(config.to_json()), "data_spec": spec.to_dict(), "diffax_version": __version__}
    temporary = path.parent / (RUN_FILE + ".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(path)


def read_run_file(workdir: str) -> tuple[ml_collections.ConfigDict, DataSpec | None] | None:
    """(config, data spec) of the run in `workdir`: run.json, else the newest checkpoint's config item (spec None);
    None when the workdir holds no run."""
    path = epath.Path(workdir) / RUN_FILE
    if path.exists():
        record = json.loads(path.read_text())
        return to_config(record["config"]), DataSpec.from_dict(record["data_spec"])
    checkpoints = epath.Path(workdir) / "checkpoints"
    steps = sorted((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()), reverse=True) \
        if checkpoints.exists() else []
    for step in steps:
        saved = checkpoints / str(step) / "config" / "metadata"
        if saved.exists():
            return to_config(json.loads(saved.read_text())), None
    return None


def resolve_config(train: bool, file_config: ml_collections.ConfigDict | None, workdir: str,
                   overrides: Mapping[str, str], defaults: ml_collections.ConfigDict | None = None
                   ) -> ml_collections.ConfigDict:
    """The config a mode runs with.

    Training: the config file with the overrides; resuming a run whose RUN_KEYS differ is an error naming them.
    Other modes on a workdir that holds a run: the run's config with the overrides (RUN_KEYS may not change); a
    config file given too, and then `defaults` (configs/base.py's), supply only the keys the run's config lacks
    (runs saved by older versions, before those keys existed).
    Other modes elsewhere (bench on a fresh workdir): the config file with the overrides.
    """
    saved = read_run_file(workdir)
    if train or saved is None:
        if file_config is None:
            raise ValueError(f"no run in workdir {workdir!r}: pass --config=configs/NAME.py[:VARIANT]")
        config = apply_overrides(file_config, overrides)
        if train and saved is not None:
            differing = differing_run_keys(saved[0], config)
            if differing:
                raise ValueError(f"workdir {workdir!r} holds a run trained with other values of {differing}: "
                                 f"resume with its config, or train in a new workdir")
        return config
    base = saved[0].to_dict()
    for fallback in (file_config, defaults):
        if fallback is not None:
            base = _overlay(fallback.to_dict(), base)
    config = apply_overrides(to_config(base), overrides)
    differing = differing_run_keys(saved[0], config, keys=list(overrides))
    if differing:
        raise ValueError(f"{differing} of the run in {workdir!r} cannot be changed after training (they define the "
                         f"network, the forward process or the data it learned); drop those overrides")
    return config
