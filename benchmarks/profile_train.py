"""Profiles a config's train step (or its sampler's denoiser) on synthetic data and prints where the device time goes.

    python benchmarks/profile_train.py --config configs/cifar10_ddpm.py --out /tmp/prof \
        --config.model.compute_dtype=bfloat16 --config.bench.batch_size=512
    python benchmarks/profile_train.py --config configs/cifar10_ddpm.py --out /tmp/prof --denoiser \
        --config.sample.batch_size=1024

Traces `--steps` train steps (with `--denoiser`: calls of the denoiser that `--mode bench` times, at
sample.batch_size, with the parameters of a fresh train state) with `jax.profiler` (a Perfetto JSON trace,
OUT/.../perfetto_trace.json.gz, which ui.perfetto.dev opens), then sums the device events by name per trace row ("XLA
Ops", each stream) and prints the largest, in ms per step, after each row's count of events, of short ones and of the
idle time between them (a step of many small kernels loses time to their launch latency; NOTES, session 8). The same
trace file can be summarized again here with `--summarize FILE --steps N` (N: the steps traced).
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
_DENOISER = flags.DEFINE_bool("denoiser", False, "Profile the sampler's denoiser instead of the train step.")
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
    spans = collections.defaultdict(list)  # (start, duration) in us of each event, per row
    for event in events:
        if event.get("ph") != "X" or "device" not in processes.get(event.get("pid"), "").lower():
            continue
        row = threads.get((event["pid"], event["tid"]), "?")
        row = "Stream" if row.startswith("Stream") else row
        totals[row][event["name"]] += event.get("dur", 0) / 1e3 / steps
        spans[row].append((event["ts"], event.get("dur", 0)))
    for row, counter in totals.items():
        total = sum(counter.values())
        print(f"\n== {row}: {total:.2f} ms per step (summed over events; streams overlap)")
        print(launch_bound_share(spans[row], steps))
        for name, ms in counter.most_common(top):
            print(f"{ms:8.3f} ms {100 * ms / total:5.1f}%  {name[:150]}")


def launch_bound_share(spans: list[tuple[float, float]], steps: int, short_us: float = 3.0,
                       gap_us: float = 50.0) -> str:
    """Per step: events, those shorter than `short_us` (mostly launch latency, not work) and their time, and the
    idle time between consecutive events closer than `gap_us` (longer gaps are the host between calls)."""
    spans = sorted(spans)
    short = [duration for _, duration in spans if duration < short_us]
    gaps = [b - (a + d) for (a, d), (b, _) in zip(spans, spans[1:])]
    idle = sum(gap for gap in gaps if 0 < gap < gap_us)
    return (f"   {len(spans) / steps:.0f} events a step; {len(short) / steps:.0f} shorter than {short_us:g} us "
            f"({sum(short) / steps / 1e3:.2f} ms); {idle / steps / 1e3:.2f} ms idle between events")


def main(argv):
    del argv
    if _SUMMARIZE.value:
        summarize(_SUMMARIZE.value, _STEPS.value, _TOP.value)
        return
    import jax

    from diffax import parallel
    from diffax.modes.bench import bench_experiment, prepare_denoiser, prepare_train

    config = _CONFIG.value
    experiment = bench_experiment(config)
    mesh = parallel.mesh_from_config(config.mesh)
    batch_size = config.bench.batch_size or config.train.batch_size
    _, train_step, held, batches, runner = prepare_train(experiment, mesh, batch_size)
    if _DENOISER.value:
        denoise, args = prepare_denoiser(experiment, mesh, runner.state(held).params)
        step, steps_per_call = lambda: denoise(*args), 1
    else:
        def step():
            nonlocal held
            held, _ = train_step(held, batches)
            return held
        steps_per_call = config.train.steps_per_dispatch
    for _ in range(3):  # Warm-up.
        jax.block_until_ready(step())
    with jax.profiler.trace(_OUT.value, create_perfetto_trace=True):
        for _ in range(_STEPS.value):
            out = step()
        jax.block_until_ready(out)
    trace_file = max(glob.glob(os.path.join(_OUT.value, "**", "perfetto_trace.json.gz"), recursive=True))
    print("trace:", trace_file)
    summarize(trace_file, _STEPS.value * steps_per_call, _TOP.value)


if __name__ == "__main__":
    app.run(main)
