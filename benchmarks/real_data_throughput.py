"""Training from real data against training from synthetic data: images/s, grain workers and host CPU use.

    python benchmarks/real_data_throughput.py --out /tmp/rdt                              # 1 device, batch 512
    python benchmarks/real_data_throughput.py --devices 2 --data_dir /tmp/rdt/data --out /tmp/rdt2
    python benchmarks/real_data_throughput.py --worker_count 0 --out /tmp/rdt0            # no worker processes

The data set is `benchmarks/input_pipeline.py`'s CIFAR-10-shaped one (50,000 32x32x3 PNG records in one ArrayRecord
file, built through the TFDS builder path into --data_dir unless it is there). Two `launch.py` processes run the
recipe (default `configs/cifar10_ddpm.py` in bfloat16, the README's speed settings) at --batch_size over --devices:

- `--mode bench` (synthetic batches already on the devices, `bench.train_only`): the step's own rate;
- `--mode train` from the data set (ArrayRecord read, PNG decode, random flips, batching, the host-to-device
  transfer, this process's shard) for --steps steps with `data.worker_count` = --worker_count (-1: auto).

The training rate is the images over the wall time of the log windows in the second half of the run: the first
half holds the compilation and drains the batches the workers read ahead meanwhile (8 per worker). Over the same
span a sampler thread reads the CPU seconds of the training process, of its children (grain's workers) and of the
whole host (`psutil`, every 0.5 s). Results: OUT/result.json and a table row on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import input_pipeline  # noqa: E402  (benchmarks/input_pipeline.py: the data set's builder)


class CpuSampler(threading.Thread):
    """Every `period` seconds: (time, CPU seconds of `pid`, of its live children, host busy CPU seconds, children)."""

    def __init__(self, pid: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.process, self.period, self.samples, self.stopped = psutil.Process(pid), period, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            try:
                own = self.process.cpu_times()
                children = self.process.children(recursive=True)
                child_seconds = 0.0
                for child in children:
                    try:
                        times = child.cpu_times()
                        child_seconds += times.user + times.system
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            host = psutil.cpu_times()
            self.samples.append((time.time(), own.user + own.system, child_seconds,
                                 host.user + host.system + getattr(host, "irq", 0) + getattr(host, "softirq", 0),
                                 len(children)))

    def between(self, start: float, end: float) -> dict:
        """Cores used (CPU seconds per second) between two wall times, and the most child processes seen."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        (t0, own0, kids0, host0, _), (t1, own1, kids1, host1, _) = inside[0], inside[-1]
        span = t1 - t0
        return {"trainer_cores": (own1 - own0) / span, "worker_cores": (kids1 - kids0) / span,
                "host_busy_cores": (host1 - host0) / span, "host_cpus": psutil.cpu_count(),
                "usable_cpus": len(os.sched_getaffinity(0)), "child_processes": max(s[4] for s in inside)}


def launch(args: argparse.Namespace, mode: str, workdir: str, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={args.config}", f"--workdir={workdir}",
               f"--mode={mode}", f"--config.data.name={args.name}", f"--config.data.data_dir={args.data_dir}",
               f"--config.model.compute_dtype={args.dtype}", f"--config.mesh.num_devices={args.devices}",
               f"--config.train.num_steps={args.steps}", *extra, *args.extra]
    print(" ".join(command[1:]), flush=True)
    return subprocess.Popen(command, cwd=ROOT)


def bench_rate(args: argparse.Namespace) -> float:
    workdir = os.path.join(args.out, "bench")
    process = launch(args, "bench", workdir, [f"--config.bench.batch_size={args.batch_size}",
                                              "--config.bench.train_only=True", "--config.bench.steps=20"])
    if process.wait():
        raise RuntimeError(f"bench failed with exit code {process.returncode}")
    with open(os.path.join(workdir, "bench.json")) as file:
        return json.load(file)["train_examples_per_second"]


def train_rate(args: argparse.Namespace) -> dict:
    workdir = os.path.join(args.out, "train")
    log_every = args.steps // 20
    process = launch(args, "train", workdir, [
        f"--config.train.batch_size={args.batch_size}", f"--config.train.log_every={log_every}",
        f"--config.train.checkpoint_every={args.steps}", "--config.train.sample_every=0",
        "--config.sample.num_steps=8", f"--config.data.worker_count={args.worker_count}"])
    sampler = CpuSampler(process.pid)
    sampler.start()
    if process.wait():
        raise RuntimeError(f"train failed with exit code {process.returncode}")
    sampler.stopped.set()
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        rows = [row for row in map(json.loads, file) if "examples_per_second" in row]
    half = [row for row in rows if row["step"] > args.steps // 2]
    start = rows[rows.index(half[0]) - 1]["wall_time"]
    seconds = half[-1]["wall_time"] - start
    images = (half[-1]["step"] - rows[rows.index(half[0]) - 1]["step"]) * args.batch_size
    return {"train_examples_per_second": images / seconds, "timed_steps": images // args.batch_size,
            "timed_seconds": seconds, "window_rates": [round(row["examples_per_second"]) for row in rows],
            **sampler.between(start, half[-1]["wall_time"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/cifar10_ddpm.py")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=512, help="global batch")
    parser.add_argument("--steps", type=int, default=800, help="training steps (a multiple of 80)")
    parser.add_argument("--worker_count", type=int, default=-1, help="data.worker_count (-1: auto)")
    parser.add_argument("--num_examples", type=int, default=50_000)
    parser.add_argument("--data_dir", help="TFDS data directory (default: OUT/data)")
    parser.add_argument("--extra", action="append", default=[], help="more launch.py flags for both runs")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    args.data_dir = args.data_dir or os.path.join(args.out, "data")
    dataset = input_pipeline.build(32, args.num_examples, args.data_dir)
    print(json.dumps(dataset), flush=True)
    args.name = dataset["name"]
    synthetic = bench_rate(args)
    real = train_rate(args)
    result = {"config": args.config, "dtype": args.dtype, "devices": args.devices, "batch_size": args.batch_size,
              "worker_count_flag": args.worker_count, "dataset": dataset, "synthetic_examples_per_second": synthetic,
              **real, "real_over_synthetic": real["train_examples_per_second"] / synthetic}
    with open(os.path.join(args.out, "result.json"), "w") as file:
        json.dump(result, file, indent=1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
