"""benchmarks/side_by_side.py against a stand-in tree whose bench_suite.py records how it was called: the variants
alternate round by round, each gets its own flags and environment, the ratio is of the means, and a failed run or
a malformed variant is an error that says so."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAND_IN = '''
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--cases"); parser.add_argument("--devices"); parser.add_argument("--out")
parser.add_argument("--train_only", action="store_true"); parser.add_argument("--extra", action="append", default=[])
args = parser.parse_args()
with open(os.environ["CALLS"], "a") as file:
    file.write(json.dumps({"out": os.path.basename(args.out), "extra": args.extra, "train_only": args.train_only,
                           "rate": os.environ.get("RATE")}) + "\\n")
if os.environ.get("FAIL"):
    sys.exit(1)
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"{args.cases}_{args.devices}dev.json"), "w") as file:
    json.dump({"train_examples_per_second": float(os.environ.get("RATE", "1000")), "train_step_ms": 10.0}, file)
'''


def side_by_side(tmp_path, *args):
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True, exist_ok=True)
    (tree / "benchmarks" / "bench_suite.py").write_text(STAND_IN)
    calls = tmp_path / "calls.jsonl"
    command = [sys.executable, os.path.join(REPO, "benchmarks", "side_by_side.py"), "--case", "ddpm_b128",
               "--out", str(tmp_path / "out"), *(arg.replace("TREE", str(tree)) for arg in args)]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CALLS": str(calls)})
    runs = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    return completed, runs


def test_variants_alternate_with_their_flags_and_environment_and_the_ratio_is_of_the_means(tmp_path):
    completed, runs = side_by_side(tmp_path, "--rounds", "2", "--train_only", "base@TREE",
                                   "fast@TREE: --config.train.steps_per_dispatch=4 RATE=1500")
    assert completed.returncode == 0, completed.stderr
    assert [run["out"] for run in runs] == ["base_r1", "fast_r1", "base_r2", "fast_r2"]
    assert [run["extra"] for run in runs[:2]] == [[], ["--config.train.steps_per_dispatch=4"]]
    assert [run["rate"] for run in runs[:2]] == [None, "1500"] and all(run["train_only"] for run in runs)
    assert "| fast | 1,500 | 1.5000 |" in completed.stdout
    assert (tmp_path / "out" / "side_by_side.md").read_text().strip() in completed.stdout


def test_a_failed_run_is_reported_and_sets_the_exit_status(tmp_path):
    completed, runs = side_by_side(tmp_path, "--rounds", "1", "base@TREE", "broken@TREE: FAIL=1")
    assert completed.returncode == 1
    assert len(runs) == 2 and "| broken | failed | - |" in completed.stdout


def test_malformed_variants_are_refused_by_name(tmp_path):
    for spec, message in [("two words@TREE", "must be letters"), ("x@TREE: stray", "neither a --flag"),
                          ("x@/nowhere", "has no benchmarks/bench_suite.py")]:
        completed, runs = side_by_side(tmp_path, spec)
        assert completed.returncode == 2 and message in completed.stderr and not runs
    completed, _ = side_by_side(tmp_path, "same@TREE", "same@TREE")
    assert completed.returncode == 2 and "variant names repeat" in completed.stderr
