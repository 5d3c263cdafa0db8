"""Profiles a config's train step on synthetic data and prints where the device time goes.

    python benchmarks/profile_train.py --config configs/cifar10_ddpm.py --out /tmp/prof \
        --config.model.compute_dtype=bfloat16 --config.bench.batch_size=512

Traces `--steps` steps with `jax.profiler` (a Perfetto JSON trace, OUT/.../perfetto_trace.json.gz, which
ui.perfetto.dev opens), then sums the device events by name per trace row ("XLA Ops", each stream) and prints the
largest, in ms per step. The same trace file can be summarized again here with `--summarize FILE`.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:VARIANT]", lock_config=True)
_OUT = flags.DEFINE_string("out", "/tmp/diffax_profile", "Directory for the trace.")
_STEPS = flags.DEFINE_integer("steps", 5, "Traced train steps.")
_TOP = flags.DEFINE_integer("top", 25, "Rows printed per trace row kind.")
_SUMMARIZE = flags.DEFINE_string("summarize", None, "Only summarize this perfetto_trace.json.gz.")


def summarize(trace_file: str, steps: int, top: int) -> None:
    """Prints device time by event name for each device trace row, in ms per step."""
    with gzip.open(trace_file, "rt") as file:
        events = json.load(file)["traceEvents"]
    processes, threads = {}, {}
    for event in events:
        if event.get("ph") == "M" and event.get("name") == "process_name":
            processes[event["pid"]] = event["args"]["name"]
        if event.get("ph") == "M" and event.get("name") == "thread_name":
            threads[event["pid"], event["tid"]] = event["args"]["name"]
    totals = collections.defaultdict(collections.Counter)
    for event in events:
        if event.get("ph") != "X" or "device" not in processes.get(event.get("pid"), "").lower():
            continue
        row = threads.get((event["pid"], event["tid"]), "?")
        row = "Stream" if row.startswith("Stream") else row
        totals[row][event["name"]] += event.get("dur", 0) / 1e3 / steps
    for row, counter in totals.items():
        total = sum(counter.values())
        print(f"\n== {row}: {total:.2f} ms per step (summed over events; streams overlap)")
        for name, ms in counter.most_common(top):
            print(f"{ms:8.3f} ms {100 * ms / total:5.1f}%  {name[:150]}")


def main(argv):
    del argv
    if _SUMMARIZE.value:
        summarize(_SUMMARIZE.value, _STEPS.value, _TOP.value)
        return
    import jax

    from diffax import parallel
    from diffax.modes.bench import bench_experiment, prepare_train

    config = _CONFIG.value
    experiment = bench_experiment(config)
    mesh = parallel.mesh_from_config(config.mesh)
    batch_size = config.bench.batch_size or config.train.batch_size
    _, train_step, held, batches, _ = prepare_train(experiment, mesh, batch_size)
    for _ in range(3):  # Warm-up.
        held, _ = train_step(held, batches)
    jax.block_until_ready(held)
    with jax.profiler.trace(_OUT.value, create_perfetto_trace=True):
        for _ in range(_STEPS.value):
            held, _ = train_step(held, batches)
        jax.block_until_ready(held)
    trace_file = max(glob.glob(os.path.join(_OUT.value, "**", "perfetto_trace.json.gz"), recursive=True))
    print("trace:", trace_file)
    summarize(trace_file, _STEPS.value * config.train.steps_per_dispatch, _TOP.value)


if __name__ == "__main__":
    app.run(main)
