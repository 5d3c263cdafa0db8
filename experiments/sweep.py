"""Sweeps: a base config, a list of points (override dicts) and what each point does, as data.

An experiment file `experiments/<name>.py` defines `get_sweep() -> Sweep`:

    from experiments.sweep import Plot, Sweep, product

    def get_sweep():
        return Sweep(
            config="configs/digits.py",                   # file.py[:variant]
            action="eval",                                # evaluate one trained run under each point's settings
            points=product({"sample.method": ["ddim", "dpmpp_2m"]}, {"sample.num_steps": [5, 10, 20]}),
            # A point's "label.<name>" keys only label its row (e.g. denoiser calls); the rest are config keys.
            overrides={"eval.loss": False},               # shared by every point
            plots=[Plot(x="sample.num_steps", y="fcd", group="sample.method")])

action "train": every point trains its own run (a `launch.py` process, so failures and memory stay apart), then
evaluates it (another process). action "eval": the sweep's base run (trained once by the runner in DIR/base, or
given with --run) is evaluated under each point's overrides in one process that loads it once; only sample.*,
eval.* and seed may change there. `experiments/run.py` runs a sweep (big_vision / XManager sweeps are lists of
override dicts too; here the file is plain Python and the runner needs no cluster).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

ACTIONS = ("train", "eval")
EVAL_PREFIXES = ("sample.", "eval.")  # What an eval point may change on a trained run.
LABEL_PREFIX = "label."  # Point keys that only label a result (e.g. "label.calls"), never passed to the config.


@dataclasses.dataclass(frozen=True)
class Plot:
    """A line plot of metric `y` against point key (or result column) `x`, one line per value of `group`."""

    x: str
    y: str
    group: str | None = None
    log_x: bool = False
    log_y: bool = False


@dataclasses.dataclass(frozen=True)
class Sweep:
    """config: `file.py[:variant]`; action: 'train' or 'eval'; points: override dicts {"a.b": value};
    overrides: shared by all points (for eval sweeps, the base run's training overrides go in `base_overrides`)."""

    config: str
    action: str
    points: Sequence[Mapping[str, Any]]
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    base_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plots: Sequence[Plot] = ()
    description: str = ""

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"sweep action {self.action!r}: expected one of {ACTIONS}")
        if not self.points:
            raise ValueError("a sweep needs at least one point")
        if self.action == "eval":
            for point in self.points:
                fixed = [key for key in config_overrides({**self.overrides, **point})
                         if not key.startswith(EVAL_PREFIXES) and key != "seed"]
                if fixed:
                    raise ValueError(f"eval sweep point {dict(point)} changes {fixed}: an eval point may change "
                                     f"only {EVAL_PREFIXES} keys and seed (train those in an action='train' sweep)")
        names = [point_name(point) for point in self.points]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"sweep points repeat: {repeated}")


def config_overrides(point: Mapping[str, Any]) -> dict[str, Any]:
    """The point's config keys (its `label.` keys dropped)."""
    return {key: value for key, value in point.items() if not key.startswith(LABEL_PREFIX)}


def product(*axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of axes, each {key: values} (several keys in one axis move together, zipped):
    product({"a": [1, 2]}, {"b": [3, 4]}) -> [{a: 1, b: 3}, {a: 1, b: 4}, {a: 2, b: 3}, {a: 2, b: 4}]."""
    columns = []
    for axis in axes:
        lengths = {len(values) for values in axis.values()}
        if len(lengths) != 1:
            raise ValueError(f"the keys of one sweep axis move together and need equal lengths: {dict(axis)}")
        columns.append([dict(zip(axis, values)) for values in zip(*axis.values())])
    return [dict(itertools.chain.from_iterable(part.items() for part in combination))
            for combination in itertools.product(*columns)]


# Denoiser calls of a sampler run of N steps: (calls per step, calls saved on the final step onto sigma = 0).
_CALLS = {"heun": (2, 1), "dpmpp_2s": (2, 1), "dpmpp_2s_ancestral": (2, 1), "pc": (2, 0)}


def sampler_points(methods: Sequence[str], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Points {sample.method, sample.num_steps, label.calls} that give each sampler about `budget` denoiser calls
    per sample (two-call solvers get (budget + 1) // 2 steps; label.calls is the count they make)."""
    points = []
    for method in methods:
        per_step, saved = _CALLS.get(method, (1, 0))
        for budget in budgets:
            steps = max(1, (budget + saved) // per_step)
            points.append({"sample.method": method, "sample.num_steps": steps, "label.calls": per_step * steps - saved})
    return points


def override_text(value: Any) -> str:
    """A value as `--config.KEY=TEXT` text that `diffax.run_config.apply_overrides` parses back to it."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(repr(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def point_name(point: Mapping[str, Any]) -> str:
    """A directory-safe name, e.g. {'sample.method': 'ddim', 'sample.num_steps': 10} -> 'method-ddim_num_steps-10';
    long names end in a hash instead."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{override_text(value)}" for key, value in point.items()]
    name = "_".join(parts) or "base"
    name = "".join(char if char.isalnum() or char in "-_." else "" for char in name)
    if len(name) > 80:
        name = name[:60] + "_" + hashlib.sha1(repr(sorted(point.items())).encode()).hexdigest()[:8]
    return name


def load_sweep(path: str) -> Sweep:
    """Runs `get_sweep()` of the experiment file at `path`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diffax_sweep_definition", path)
    if spec is None or not path.endswith(".py"):
        raise FileNotFoundError(f"sweep file {path!r}: expected an experiments/<name>.py file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file {path!r} does not exist") from None
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"sweep file {path!r} defines no get_sweep()")
    return module.get_sweep()
