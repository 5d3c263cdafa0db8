"""Runs a sweep (`experiments/sweep.py`) and writes its results table and plots.

    python experiments/run.py experiments/samplers.py --workdir /tmp/sweep_samplers
    python experiments/run.py experiments/objectives.py --workdir /tmp/sweep_obj --parallel 2
    python experiments/run.py experiments/objectives.py --workdir /tmp/sweep_obj --emit slurm   # or: commands
    python experiments/run.py experiments/objectives.py --workdir /tmp/sweep_obj --point 3      # one point

DIR/points/<point>/result.json   the point's status ("ok" or "failed" with the error), metrics and seconds;
                                 train points also hold their run (checkpoints, eval JSONs) there
DIR/logs/<point>.log             the output of a train point's training process
DIR/base/                        an eval sweep's trained run (unless --run names one)
DIR/results.csv, results.md      one row per point; DIR/<y>_vs_<x>.png the sweep's plots

Train points train as their own `launch.py` processes (failures and memory stay apart), --parallel N of them side by
side (each on its own share of the cores and, on a host with several GPUs, of the GPUs), each then evaluated by
`launch.py --mode eval` in the same share; eval points share one loaded run in this process (one load,
and the feature network and real-data features computed once). A rerun skips points that have a result.json and
runs the missing (or deleted) ones; failed points run again only with --retry_failed. A point that fails is recorded
(status, error, log) and the sweep goes on. --emit writes DIR/commands.txt (one command per point) or
DIR/sweep.slurm (an array job) instead of running; rerun without --emit afterwards to collect the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import json
import math
import os
import platform
import queue
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from diffax.config_checks import validate_config  # noqa: E402
from diffax.modes import evaluate  # noqa: E402
from diffax.run import load_run  # noqa: E402
from configs import base as config_defaults  # noqa: E402
from diffax.run_config import resolve_config  # noqa: E402
from experiments.sweep import Sweep, config_overrides, load_sweep, override_text, point_name  # noqa: E402

LAUNCH = os.path.join(REPO, "launch.py")


def _flags(overrides: Mapping[str, Any]) -> list[str]:
    return [f"--config.{key}={override_text(value)}" for key, value in overrides.items()]


_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit)\w*: ")  # A traceback's last line: "ValueError: ..."


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one training process runs: its CPU cores and GPUs (None: this process's own)."""

    cores: frozenset[int] | None = None
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES for the process

    def environment(self) -> dict[str, str] | None:
        return None if self.gpus is None else {**os.environ, "CUDA_VISIBLE_DEVICES": self.gpus}


def _run_logged(command: list[str], log_path: str, slot: Slot = Slot()) -> None:
    """Runs a command with its output appended to log_path, on `slot`'s cores and GPUs; raises with the log's tail
    if it fails."""
    cores = slot.cores
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=slot.environment(),
                               preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
    if code != 0:
        with open(log_path) as log:
            lines = log.read().strip().splitlines()
        errors = [line for line in lines[-300:] if _ERROR_LINE.match(line)]
        raise RuntimeError(f"exit {code}: " + (errors[-1] if errors else " | ".join(lines[-3:])))


def _newest_json(directory: str, pattern_prefix: str = "") -> dict | None:
    if not os.path.isdir(directory):
        return None
    names = [name for name in os.listdir(directory) if name.endswith(".json") and name.startswith(pattern_prefix)]
    if not names:
        return None
    newest = max(names, key=lambda name: os.path.getmtime(os.path.join(directory, name)))
    with open(os.path.join(directory, newest)) as file:
        return json.load(file)


def _core_shares(count: int) -> list[frozenset[int] | None]:
    """This process's cores split into `count` disjoint shares (None: no split where affinity is not settable or
    there are fewer cores than shares)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if count <= 1 or len(cores) < count:
        return [None] * max(count, 1)
    return [frozenset(share.tolist()) for share in np.array_split(np.array(cores), count)]


def visible_gpus() -> list[str]:
    """The ids this process's CUDA_VISIBLE_DEVICES names (or 0 .. n - 1 for its n GPUs); [] off GPU."""
    if jax.default_backend() != "gpu":
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(index) for index in range(jax.local_device_count())]


def gpu_shares(gpus: list[str], count: int) -> list[str | None]:
    """`count` training processes spread over `gpus`: with at least as many GPUs as processes each gets its own
    disjoint share (['0,1', '2,3'] for 4 GPUs, 2 processes), else process i shares GPU i mod len(gpus); None (all
    of them) with fewer than two GPUs or one process."""
    if len(gpus) < 2 or count <= 1:
        return [None] * max(count, 1)
    if len(gpus) >= count:
        return [",".join(share) for share in np.array_split(np.array(gpus), count)]
    return [gpus[index % len(gpus)] for index in range(count)]


def slots(count: int) -> list[Slot]:
    """The slots of `count` side-by-side training processes: disjoint core shares, and GPU shares on a GPU host."""
    return [Slot(cores, gpus) for cores, gpus in zip(_core_shares(count), gpu_shares(visible_gpus(), count))]


def _train_seconds(workdir: str, step: int) -> float | None:
    """Seconds from the run's first logged step to `step` (metrics.jsonl wall times; compilation not counted)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as file:
        lines = [json.loads(line) for line in file if line.strip()]
    times = [line["wall_time"] for line in lines if "loss" in line and line["step"] <= step]
    return times[-1] - times[0] if times else None


def metrics_of(heldout: Mapping[str, float], record: Mapping[str, Any] | None) -> dict[str, float]:
    """{'loss/ema_0.999': ..., 'bits_per_dim/raw': ..., 'fcd': ..., 'kid': ...} from eval's outputs."""
    metrics = {key.removeprefix("eval/"): value for key, value in heldout.items() if key != "step"}
    if record is not None:
        metrics.update(record["scores"])
        metrics.update(sampling_seconds=record["sampling_seconds"], nonfinite_samples=record["nonfinite_samples"])
    return metrics


class Runner:
    """Runs the points of `sweep` under `workdir` (module docstring)."""

    def __init__(self, sweep: Sweep, sweep_path: str, workdir: str, base_run: str | None = None):
        self.sweep, self.sweep_path, self.workdir = sweep, sweep_path, os.path.abspath(workdir)
        self.base_run = base_run or os.path.join(self.workdir, "base")
        self.names = [point_name(point) for point in sweep.points]
        os.makedirs(os.path.join(self.workdir, "logs"), exist_ok=True)
        self._loaded = {}  # sample.step -> the base run loaded at that checkpoint
        self._slots: queue.Queue = queue.Queue()  # Where training processes run (`run`): one, unsplit.
        self._slots.put(Slot())

    def write_record(self, argv: list[str]) -> None:
        """DIR/sweep.json: the command, the commit, the machine and the date of this invocation (appended)."""
        def git(*args: str) -> str:
            result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
            return result.stdout.strip()

        record = {"command": " ".join(argv), "commit": git("rev-parse", "HEAD"),
                  "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
                  "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} CPUs, jax {jax.__version__} {jax.devices()[0].device_kind}"
                             f" x{jax.device_count()}",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        path = os.path.join(self.workdir, "sweep.json")
        history = json.load(open(path)) if os.path.exists(path) else []
        with open(path, "w") as file:
            json.dump(history + [record], file, indent=1)

    def point_dir(self, index: int) -> str:
        return os.path.join(self.workdir, "points", self.names[index])

    def result(self, index: int) -> dict | None:
        path = os.path.join(self.point_dir(index), "result.json")
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)

    def pending(self, retry_failed: bool = False) -> list[int]:
        """Points without a result (and failed ones with retry_failed)."""
        statuses = [(self.result(index) or {}).get("status") for index in range(len(self.names))]
        return [index for index, status in enumerate(statuses)
                if status is None or (retry_failed and status == "failed")]

    def _log(self, name: str) -> str:
        return os.path.join(self.workdir, "logs", f"{name}.log")

    def _train_point(self, index: int) -> dict:
        """Trains the point's run and evaluates it (`launch.py --mode eval`), both in the point's slot, so that
        points evaluate side by side on their own devices; reads the metrics back from the eval JSONs."""
        overrides = config_overrides({**self.sweep.overrides, **self.sweep.points[index]})
        run_dir, log = self.point_dir(index), self._log(self.names[index])
        slot = self._slots.get()
        try:
            start = time.time()
            _run_logged([sys.executable, LAUNCH, f"--config={self.sweep.config}", f"--workdir={run_dir}",
                         *_flags(overrides)], log, slot)
            train_seconds = time.time() - start
            _run_logged([sys.executable, LAUNCH, "--mode=eval", f"--workdir={run_dir}"], log, slot)
        finally:
            self._slots.put(slot)
        heldout = _newest_json(run_dir, "eval_") or {}
        return {"train_seconds": train_seconds, **metrics_of(heldout, _newest_json(os.path.join(run_dir, "eval")))}

    def train_base(self) -> None:
        """An eval sweep's base run: trained once in DIR/base by launch.py (resumed if interrupted); a run given
        with --run is used as it is."""
        default = os.path.join(self.workdir, "base")
        done = os.path.join(self.workdir, "logs", "base.done")
        if self.base_run != default:
            if not os.path.exists(os.path.join(self.base_run, "run.json")):
                raise FileNotFoundError(f"--run {self.base_run!r} holds no trained run (no run.json)")
            return
        if not os.path.exists(done):
            _run_logged([sys.executable, LAUNCH, f"--config={self.sweep.config}", f"--workdir={self.base_run}",
                         *_flags(self.sweep.base_overrides)], self._log("base"))
            open(done, "w").close()

    def _evaluate(self, trained, config) -> dict:
        heldout, record = evaluate.evaluate(trained.with_config(config), config)
        return metrics_of(heldout, record)

    def _eval_point(self, index: int) -> dict:
        """Evaluates the base run under the point's settings; runs are loaded once per checkpoint (sample.step)."""
        overrides = config_overrides({**self.sweep.overrides, **self.sweep.points[index]})
        config = resolve_config(False, None, self.base_run,
                                {key: override_text(value) for key, value in overrides.items()},
                                defaults=config_defaults.get_base_config())
        validate_config(config)
        step = config.sample.step
        if step not in self._loaded:
            self._loaded[step] = load_run(self.base_run, step)
        trained = self._loaded[step]
        return {"step": trained.step, "train_seconds": _train_seconds(self.base_run, trained.step),
                **self._evaluate(trained, config)}

    def run_point(self, index: int) -> dict:
        """Runs point `index` and writes its result.json; a failure is recorded, not raised."""
        start = time.time()
        try:
            metrics = self._train_point(index) if self.sweep.action == "train" else self._eval_point(index)
            result = {"status": "ok", "metrics": metrics}
        except Exception as error:  # noqa: BLE001 - a failed point is recorded and the sweep goes on.
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            with open(self._log(self.names[index]), "a") as log:
                log.write(traceback.format_exc())
        result.update(point=dict(self.sweep.points[index]), seconds=time.time() - start)
        os.makedirs(self.point_dir(index), exist_ok=True)
        with open(os.path.join(self.point_dir(index), "result.json"), "w") as file:
            json.dump(result, file, indent=1)
        return result

    def run(self, parallel: int = 1, retry_failed: bool = False) -> None:
        """Every pending point, with a progress bar; train points `parallel` at a time, each training process on
        its own 1/parallel of this process's cores (so each sizes its input workers and XLA threads for its share,
        rather than `parallel` processes each taking the whole host) and, on a host with several GPUs, its own GPUs
        (`gpu_shares`)."""
        self._slots = queue.Queue()
        for slot in slots(parallel):
            self._slots.put(slot)
        todo = self.pending(retry_failed)
        if self.sweep.action == "eval" and todo:
            self.train_base()
        bar = tqdm.tqdm(total=len(self.names), initial=len(self.names) - len(todo), unit="point")
        workers = parallel if self.sweep.action == "train" else 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for result in pool.map(self.run_point, todo):
                bar.update()
                bar.set_postfix_str(f"{point_name(result['point'])}: {result['status']}")
        bar.close()

    def emit(self, kind: str) -> str:
        """Writes DIR/commands.txt or DIR/sweep.slurm; returns its path."""
        command = (f"{sys.executable} {os.path.join(REPO, 'experiments', 'run.py')} {os.path.abspath(self.sweep_path)}"
                   f" --workdir {self.workdir}")
        if kind == "commands":
            path = os.path.join(self.workdir, "commands.txt")
            lines = [f"{command} --point {index}" for index in range(len(self.names))]
        else:
            path = os.path.join(self.workdir, "sweep.slurm")
            lines = ["#!/bin/bash", f"#SBATCH --array=0-{len(self.names) - 1}", "#SBATCH --job-name=diffax-sweep",
                     f"#SBATCH --output={self.workdir}/logs/slurm-%A_%a.out", "",
                     f"{command} --point $SLURM_ARRAY_TASK_ID"]
        with open(path, "w") as file:
            file.write("\n".join(lines) + "\n")
        return path

    def write_tables(self) -> list[dict]:
        """DIR/results.csv and DIR/results.md: one row per point (pending ones too), columns point keys then
        metrics; returns the rows."""
        keys = list(dict.fromkeys(key for point in self.sweep.points for key in point))
        rows = []
        for index, name in enumerate(self.names):
            result = self.result(index) or {"status": "pending"}
            rows.append({"point": name, **self.sweep.points[index], "status": result["status"],
                         "seconds": result.get("seconds"), **result.get("metrics", {}),
                         **({"error": result["error"]} if "error" in result else {})})
        metric_names = sorted({key for row in rows for key in row} - {"point", "status", "seconds", "error", *keys})
        columns = ["point", *keys, "status", "seconds", *metric_names, "error"]
        with open(os.path.join(self.workdir, "results.csv"), "w", newline="") as file:
            writer = csv.DictWriter(file, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(self.workdir, "results.md"), "w") as file:
            file.write(markdown_table(rows, columns))
        return rows

    def write_plots(self, rows: list[dict]) -> list[str]:
        """One PNG per Plot of the sweep (points that failed or lack the metric are left out)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot

        paths = []
        for plot in self.sweep.plots:
            figure, axes = pyplot.subplots(figsize=(6, 4))
            groups = dict.fromkeys(row.get(plot.group) for row in rows) if plot.group else {None: None}
            categories = _categories([row.get(plot.x) for row in rows])
            for number, group in enumerate(groups):
                points = sorted((categories.get(row[plot.x], row[plot.x]), row[plot.y]) for row in rows
                                if row.get(plot.y) is not None and row.get(plot.x) is not None
                                and (plot.group is None or row.get(plot.group) == group))
                if points:  # 20 colours and 10 markers: lines stay apart in sweeps of many groups.
                    axes.plot(*zip(*points), marker="os^vD<>ph*"[number % 10], color=pyplot.cm.tab20(number % 20),
                              label=None if group is None else str(group))
            axes.set(xlabel=plot.x, ylabel=plot.y, xscale="log" if plot.log_x else "linear",
                     yscale="log" if plot.log_y else "linear")
            if categories:  # After the scale, which resets the ticks.
                axes.set_xticks(list(categories.values()), list(categories))
            if plot.group:
                axes.legend(title=plot.group, fontsize="small")
            axes.grid(alpha=0.3)
            figure.tight_layout()
            path = os.path.join(self.workdir, f"{plot.y.replace('/', '-')}_vs_{plot.x.replace('/', '-')}.png")
            figure.savefig(path, dpi=120)
            pyplot.close(figure)
            paths.append(path)
        return paths


def _categories(values: list[Any]) -> dict[str, int]:
    """Text values of a plot's x -> their positions 0, 1, ... in the sweep's order ({} for numbers)."""
    texts = [value for value in values if isinstance(value, str)]
    return {text: position for position, text in enumerate(dict.fromkeys(texts))}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "/")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    columns = [column for column in columns if any(row.get(column) is not None for row in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="experiments/<name>.py; --config.KEY=VALUE arguments join its overrides")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--parallel", type=int, default=1, help="train points run side by side")
    parser.add_argument("--run", default=None, help="eval sweeps: a trained run's workdir (default DIR/base)")
    parser.add_argument("--point", type=int, default=None, help="run only this point (array jobs)")
    parser.add_argument("--emit", choices=("commands", "slurm"), default=None)
    parser.add_argument("--retry_failed", action="store_true", help="run failed points again")
    args, rest = parser.parse_known_args(argv)
    extra = dict(argument.removeprefix("--config.").split("=", 1) for argument in rest
                 if argument.startswith("--config.") and "=" in argument)
    unknown = [argument for argument in rest if not (argument.startswith("--config.") and "=" in argument)]
    if unknown:
        parser.error(f"unrecognized arguments: {unknown} (config overrides are --config.KEY=VALUE)")
    try:
        sweep = load_sweep(args.sweep)
        sweep = dataclasses.replace(sweep, overrides={**sweep.overrides, **extra})
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runner = Runner(sweep, args.sweep, args.workdir, args.run)
    runner.write_record(sys.argv if argv is None else ["experiments/run.py", *argv])
    if args.emit:
        print(runner.emit(args.emit))
        return 0
    if args.point is not None:
        if not 0 <= args.point < len(runner.names):
            print(f"error: --point {args.point}: the sweep has points 0..{len(runner.names) - 1}", file=sys.stderr)
            return 2
        if sweep.action == "eval":
            runner.train_base()
        return 0 if runner.run_point(args.point)["status"] == "ok" else 1
    runner.run(args.parallel, args.retry_failed)
    rows = runner.write_tables()
    runner.write_plots(rows)
    failed = [row["point"] for row in rows if row["status"] != "ok"]
    print(f"{len(rows) - len(failed)} of {len(rows)} points ok; results in {runner.workdir}/results.md"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
