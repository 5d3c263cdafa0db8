"""Side by side on one machine: variants of one `bench_suite.py` case, run in turn for several rounds, with each
variant's mean against the first variant's.

    python benchmarks/side_by_side.py --case ddpm_b128 --rounds 2 --train_only --out /tmp/sbs \
        recipe "four: --config.train.steps_per_dispatch=4" "rbg: JAX_DEFAULT_PRNG_IMPL=rbg"
    git archive 55baabe | (mkdir -p .bench_old && tar -x -C .bench_old)
    python benchmarks/side_by_side.py --case dit_xl_2 --train_only --out /tmp/sbs old@.bench_old new

A variant is NAME[@TREE][: ARGS]. ARGS, split as a shell would, are launch.py flags (`--config...`) and
environment assignments (`NAME=value`, as a shell's prefix: XLA_FLAGS, JAX_DEFAULT_PRNG_IMPL...). TREE is another
checkout whose own bench_suite.py runs the case (default: this one). Round r runs every variant once, in the order
given, so a drift of the machine falls on all of them alike; the first round of a fresh machine is often slower
(benchmarks/NOTES.md). Each run is one process (`bench_suite.py`'s); results land in OUT/NAME_rR/. The exit status
is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVIRONMENT_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
FIGURES = (("train_examples_per_second", "images/s", "{:,.0f}"), ("train_step_ms", "ms a step", "{:.2f}"),
           ("train_launch_ms", "launch ms", "{:.1f}"), ("train_peak_memory_bytes", "peak GiB", "{:.2f}"),
           ("mfu", "MFU", "{:.1%}"))


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    tree: str
    flags: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]


def parse_variant(spec: str) -> Variant:
    """'NAME[@TREE][: ARGS]' -> Variant (see the module docstring)."""
    head, _, args = spec.partition(":")
    name, _, tree = head.strip().partition("@")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"variant {spec!r}: its name {name!r} must be letters, digits, '_', '.' or '-'")
    tree = os.path.abspath(tree) if tree else ROOT
    if not os.path.isfile(os.path.join(tree, "benchmarks", "bench_suite.py")):
        raise ValueError(f"variant {spec!r}: {tree} has no benchmarks/bench_suite.py")
    flags, environment = [], []
    for token in shlex.split(args):
        assignment = ENVIRONMENT_ASSIGNMENT.match(token)
        if assignment:
            environment.append(assignment.groups())
        elif token.startswith("--"):
            flags.append(token)
        else:
            raise ValueError(f"variant {spec!r}: {token!r} is neither a --flag nor an environment NAME=value")
    return Variant(name, tree, tuple(flags), tuple(environment))


def run(variant: Variant, round_: int, case: str, devices: int, train_only: bool, out: str) -> dict:
    """One bench_suite.py run of the variant; its results (with 'error' where it failed)."""
    label = f"{variant.name}_r{round_}"
    command = [sys.executable, os.path.join(variant.tree, "benchmarks", "bench_suite.py"), f"--cases={case}",
               f"--devices={devices}", f"--out={os.path.join(out, label)}", *(["--train_only"] * train_only),
               *(f"--extra={flag}" for flag in variant.flags)]
    print(f"=== {label}: {' '.join(f'{k}={v}' for k, v in variant.environment)} {shlex.join(command[1:])}", flush=True)
    completed = subprocess.run(command, cwd=variant.tree, env={**os.environ, **dict(variant.environment)},
                               capture_output=True, text=True, check=False)
    path = os.path.join(out, label, f"{case}_{devices}dev.json")
    if completed.returncode or not os.path.isfile(path):
        print(completed.stdout[-3000:], completed.stderr[-3000:], sep="\n", flush=True)
        return {"variant": variant.name, "round": round_, "error": completed.returncode or "no result"}
    with open(path) as file:
        return {"variant": variant.name, "round": round_, **json.load(file)}


def table(results: list[dict], names: list[str]) -> str:
    """Every run, then each variant's mean images/s and its ratio to the first variant's mean."""
    lines = ["| variant | round | " + " | ".join(title for _, title, _ in FIGURES) + " |",
             "| --- | --- |" + " --- |" * len(FIGURES)]
    for row in results:
        cells = ["failed" if "error" in row else
                 "-" if row.get(key) is None else
                 fmt.format(row[key] / 2**30 if key == "train_peak_memory_bytes" else row[key])
                 for key, _, fmt in FIGURES]
        lines.append(f"| {row['variant']} | {row['round']} | " + " | ".join(cells) + " |")
    means = {name: statistics.fmean(rates) for name in names
             if (rates := [row["train_examples_per_second"] for row in results
                           if row["variant"] == name and "error" not in row])}
    lines += ["", "| variant | mean images/s | against " + names[0] + " |", "| --- | --- | --- |"]
    for name in names:
        ratio = f"{means[name] / means[names[0]]:.4f}" if name in means and names[0] in means else "-"
        lines.append(f"| {name} | " + (f"{means[name]:,.0f}" if name in means else "failed") + f" | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME[@TREE][: ARGS]")
    parser.add_argument("--case", required=True, help="a bench_suite.py case (ddpm_b128, ddpm_b512, dit_xl_2)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train_only", action="store_true", help="skip the sampler and accuracy measurements")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        variants = [parse_variant(spec) for spec in args.variants]
    except ValueError as error:
        parser.error(str(error))
    names = [variant.name for variant in variants]
    if len(set(names)) < len(names):
        parser.error(f"variant names repeat: {names}")
    os.makedirs(args.out, exist_ok=True)
    results = [run(variant, round_, args.case, args.devices, args.train_only, args.out)
               for round_ in range(1, args.rounds + 1) for variant in variants]
    report = table(results, names)
    with open(os.path.join(args.out, "side_by_side.md"), "w") as file:
        file.write(report + "\n")
    print(report)
    sys.exit(1 if any("error" in row for row in results) else 0)


if __name__ == "__main__":
    main()
