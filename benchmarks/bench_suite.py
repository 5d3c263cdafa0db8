"""Runs `launch.py --mode bench` over the recipes the README's speed tables report, and prints those tables.

    python benchmarks/bench_suite.py --cases ddpm_b128,ddpm_b512,dit_xl_2 --out /tmp/bench
    python benchmarks/bench_suite.py --cases ddpm_b128 --devices 1,2,4 --out /tmp/bench     # weak scaling
    python benchmarks/bench_suite.py --cases dit_xl_2 --devices 2,4 --fsdp --train_only --out /tmp/bench
    python benchmarks/bench_suite.py --cases ddpm_b128 --extra=--config.model.compute_dtype=float32
    python benchmarks/bench_suite.py --summarize /tmp/bench                   # the table of every result there

Each case is one process (its own compilation and memory peak); with --devices N the per-device batch stays fixed
and the global batch is N times the case's; --fsdp shards parameters and optimizer state over the N devices.
Results land in OUT/NAME_Ndev[_fsdp].json; the table goes to stdout and OUT/table.md. Its weak-scaling efficiency
is examples/s on N devices over N times examples/s on one device of the same case. The exit status is 1 if any
case failed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDPM = ["configs/cifar10_ddpm.py", "--config.model.compute_dtype=bfloat16", "--config.sample.method=ddim",
        "--config.sample.grid=trailing", "--config.bench.sample_steps=50"]
# DiT-XL/2 opts in to the Pallas adaLN kernels, which measured faster than XLA's adaLN here (benchmarks/NOTES.md).
# The kwargs are given whole, replacing imagenet64's UNet kwargs. Without remat the step at batch 256 peaks at 83 GiB
# (an H200 has 141 GB); on a card of less than DIT_NO_REMAT_GIB the suite keeps 'dense+attention+norms' (64 GiB).
DIT = ["configs/imagenet64.py", "--config.model.name=dit_xl_2",
       "--config.model.kwargs={'out_channels': 4, 'remat': 'none', 'norm_implementation': 'pallas'}",
       "--config.train.cast_params=True", "--config.bench.example_shape=32,32,4", "--config.sample.method=ddim",
       "--config.sample.guidance_scale=1.0", "--config.bench.sample_steps=50"]
DIT_NO_REMAT_GIB = 100
DIT_REMAT = "--config.model.kwargs.remat=dense+attention+norms"
# name: (config and overrides, per-device train batch, sample batch)
CASES = {
    "ddpm_b128": (DDPM, 128, 1024),
    "ddpm_b512": (DDPM, 512, 1024),
    "dit_xl_2": (DIT, 256, 256),
}
COLUMNS = [("case", "{}"), ("mode", "{}"), ("devices", "{}"), ("device_kind", "{}"), ("batch_size", "{}"),
           ("train_examples_per_second", "{:,.0f}"), ("efficiency", "{:.1%}"), ("mfu", "{:.1%}"),
           ("train_peak_memory_bytes", "{:.1f} GiB"), ("train_compile_seconds", "{:.0f} s"),
           ("sample_batch_size", "{}"), ("denoiser_examples_per_second", "{:,.0f}"),
           ("sampler_step_over_denoiser", "{:.3f}"), ("sample_end_to_end_examples_per_second", "{:,.0f}"),
           ("loss_relative_error", "{:.1e}"),
           ("output_relative_error", "{:.1e}")]


def gpu_memory_gib() -> float | None:
    """The first GPU's memory as nvidia-smi reports it (JAX would take the card in this process); None without one."""
    try:
        completed = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                                   capture_output=True, text=True, check=True, timeout=60)
        return int(completed.stdout.split()[0]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def memory_overrides(name: str) -> list[str]:
    """Flags a case needs to fit the local GPU: DiT-XL/2 keeps remat on cards under DIT_NO_REMAT_GIB."""
    memory = gpu_memory_gib() if name == "dit_xl_2" else None
    if memory is not None and memory < DIT_NO_REMAT_GIB:
        print(f"{name}: {memory:.0f} GiB GPU, under {DIT_NO_REMAT_GIB}: {DIT_REMAT}", flush=True)
        return [DIT_REMAT]
    return []


def run_case(name: str, devices: int, out: str, fsdp: bool, extra: list[str]) -> dict:
    config, batch, sample_batch = CASES[name]
    mode = "fsdp" if fsdp else "data"
    label = f"{name}_{devices}dev" + ("_fsdp" if fsdp else "")
    workdir = os.path.join(out, label)
    command = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={config[0]}", f"--workdir={workdir}",
               "--mode=bench", *config[1:], f"--config.bench.batch_size={batch * devices}",
               f"--config.sample.batch_size={sample_batch * devices}", f"--config.mesh.num_devices={devices}",
               f"--config.mesh.fsdp={devices if fsdp else 1}", "--config.bench.steps=20", *memory_overrides(name),
               *extra]
    print(" ".join(command[1:]), flush=True)
    # DiT-XL/2 at batch 256 peaks at 64 GiB with remat: more than JAX's default 75% of an 80 GB card.
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95", **os.environ}
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    if completed.returncode:
        print(completed.stdout[-3000:], completed.stderr[-6000:], sep="\n", flush=True)
        return {"case": name, "mode": mode, "devices": devices, "error": completed.returncode}
    with open(os.path.join(workdir, "bench.json")) as file:
        results = {"case": name, "mode": mode, **json.load(file)}
    with open(os.path.join(out, f"{label}.json"), "w") as file:
        json.dump(results, file, indent=1)
    print(json.dumps(results), flush=True)
    return results


def add_efficiency(rows: list[dict]) -> None:
    """Weak-scaling efficiency against the one-device row of the same case (any mode)."""
    single = {row["case"]: row["train_examples_per_second"] for row in rows
              if row.get("devices") == 1 and "train_examples_per_second" in row}
    for row in rows:
        if row["case"] in single and "train_examples_per_second" in row:
            row["efficiency"] = row["train_examples_per_second"] / (row["devices"] * single[row["case"]])


def write_table(rows: list[dict], out: str) -> None:
    add_efficiency(rows)
    lines = ["| " + " | ".join(key for key, _ in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row, key, fmt) for key, fmt in COLUMNS) + " |" for row in rows]
    table = "\n".join(lines)
    with open(os.path.join(out, "table.md"), "w") as file:
        file.write(table + "\n")
    print(table)


def cell(results: dict, key: str, fmt: str) -> str:
    value = results.get(key)
    if value is None:
        return "-"
    if key == "train_peak_memory_bytes":
        value /= 2**30
    return fmt.format(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--devices", default="1", help="comma-separated device counts (weak scaling)")
    parser.add_argument("--fsdp", action="store_true", help="shard parameters and optimizer state (FSDP)")
    parser.add_argument("--train_only", action="store_true", help="skip the sampler and accuracy measurements")
    parser.add_argument("--out", help="directory for the results (required unless --summarize)")
    parser.add_argument("--extra", action="append", default=[], help="more launch.py flags for every case")
    parser.add_argument("--summarize", metavar="DIR", help="only print the table of the results in DIR")
    args = parser.parse_args()
    if args.summarize:
        paths = sorted(glob.glob(os.path.join(args.summarize, "*dev*.json")))
        rows = []
        for path in paths:
            with open(path) as file:
                rows.append(json.load(file))
        rows.sort(key=lambda row: (row["case"], row.get("mode", "data"), row["devices"]))
        write_table(rows, args.summarize)
        return
    if not args.out:
        parser.error("--out is required")
    os.makedirs(args.out, exist_ok=True)
    extra = args.extra + (["--config.bench.train_only=True"] if args.train_only else [])
    rows = [run_case(name, int(devices), args.out, args.fsdp, extra)
            for name in args.cases.split(",") for devices in args.devices.split(",")]
    write_table(rows, args.out)
    sys.exit(1 if any("error" in row for row in rows) else 0)


if __name__ == "__main__":
    main()
