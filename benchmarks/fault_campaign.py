"""Fault campaign: kill, interrupt and damage `configs/digits.py:tiny` runs at random, relaunch until each finishes,
and compare every final state bitwise with an uninterrupted run.

    python benchmarks/fault_campaign.py --workdirs 8 --faults 4 --seed 0 --out /tmp/faults

Each workdir takes `--faults` delivered signals before it may finish. Each launch of a workdir first may damage
its newest checkpoint (half the time, when an older one exists) in one of six ways
(state/_METADATA deleted, a data file truncated, manifest.ocdbt deleted, the data-position JSON truncated, the step
directory emptied, 16 random bytes written into a data file), then launches training and, at a moment drawn
uniformly over one uninterrupted (compilation-cached) run's duration (startup, compilation, training,
mid-checkpoint-write, after a commit), sends SIGKILL (half the faults), SIGTERM or SIGINT; a launch that ends
before its moment receives nothing. Once the workdir has taken its faults, it is launched undisturbed (still
possibly damaged first) until a launch exits 0 having reached the last step. Counted: signals sent, launches, damage
injected, damaged checkpoints set aside (`<step>.damaged`), unexpected exit codes, finishes bitwise equal to the
uninterrupted run, readable checkpoints beyond keep-N, and anything lost (a workdir that did not finish equal).
Prints one JSON line of figures and writes them to OUT/figures.json.

Figures (2026-11-30, 2-core CPU, seed 0, 8 workdirs x 4 faults, 5.3 minutes): 46 launches; 32 signals delivered
(11 SIGKILL, 12 SIGTERM, 9 SIGINT); 10 damages injected (1 metadata deleted, 2 data truncated, 2 data JSON
truncated, 3 steps emptied, 2 bytes garbled), 9 damaged checkpoints set aside (one checkpoint was damaged twice,
its launch killed before it could heal); no unexpected exit code; 8 of 8 finishes bitwise equal to the
uninterrupted run; no checkpoint beyond keep-N; nothing lost. An earlier run, when checksums were written after the
commit, restored a checkpoint killed between its commit and its checksums and then damaged: garbage loaded
unverified and the loss went NaN. Checksums are now written before the commit (`diffax.checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STEPS, EVERY, KEEP = 12, 2, 3
OVERRIDES = [f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
             f"--config.train.keep_checkpoints={KEEP}", "--config.train.log_every=2"]
EXPECTED_CODES = {"SIGKILL": {-9}, "SIGTERM": {0}, "SIGINT": {130}, None: {0}}


def _launch(workdir: str, env: dict, rng: random.Random, fault: str | None, horizon: float
            ) -> tuple[int, str, bool]:
    """(exit code, stderr, whether `fault` was sent: the run may end before its random moment)."""
    process = subprocess.Popen([sys.executable, "launch.py", "--config=configs/digits.py:tiny",
                                f"--workdir={workdir}", *OVERRIDES], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = False
    if fault is not None:
        try:
            process.wait(timeout=rng.uniform(0.5, horizon))
        except subprocess.TimeoutExpired:
            process.send_signal(getattr(signal, fault))
            sent = True
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr, sent


def _step_dirs(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def _damage(step_dir: str, kind: str, rng: random.Random) -> bool:
    """Damages the checkpoint in `step_dir` as `kind` says; False if it is damaged already (a launch killed
    before it could set it aside) and has nothing left to damage."""
    state = os.path.join(step_dir, "state")
    data_files = [os.path.join(root, name) for root, _, names in os.walk(state) for name in names
                  if os.path.basename(root) == "d"]
    needed = {"metadata_deleted": os.path.join(state, "_METADATA"),
              "manifest_deleted": os.path.join(state, "manifest.ocdbt"),
              "data_json_truncated": os.path.join(step_dir, "data", "metadata")}
    if not data_files or not os.path.exists(needed.get(kind, step_dir)):
        return False
    largest = max(data_files, key=os.path.getsize)
    if kind == "metadata_deleted":
        os.remove(os.path.join(state, "_METADATA"))
    elif kind == "manifest_deleted":
        os.remove(os.path.join(state, "manifest.ocdbt"))
    elif kind in ("data_truncated", "data_json_truncated"):
        path = largest if kind == "data_truncated" else os.path.join(step_dir, "data", "metadata")
        os.truncate(path, os.path.getsize(path) // 2)
    elif kind == "step_emptied":
        shutil.rmtree(step_dir)
        os.mkdir(step_dir)
    else:  # bytes_garbled
        with open(largest, "r+b") as file:
            file.seek(rng.randrange(os.path.getsize(largest) - 16))
            file.write(bytes(rng.randrange(256) for _ in range(16)))
    return True


DAMAGE_KINDS = ("metadata_deleted", "data_truncated", "manifest_deleted", "data_json_truncated", "step_emptied",
                "bytes_garbled")


def _final_state(workdir: str):
    from configs import digits
    from diffax.modes.train import restore_train_state

    config = digits.get_config("tiny")
    config.train.num_steps = STEPS
    return jax.device_get(restore_train_state(config, workdir)[2])


def _equal(first, second) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/diffax_faults")
    parser.add_argument("--faults", type=int, default=4, help="Signals delivered to each workdir's launches.")
    parser.add_argument("--max_launches", type=int, default=20, help="Per workdir, before it counts as lost.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    from diffax.data import builders

    data_dir = os.path.join(args.out, "tfds")
    builders.prepare("digits", data_dir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, TFDS_DATA_DIR=data_dir,
               JAX_COMPILATION_CACHE_DIR=os.path.join(args.out, "jax_cache"))
    reference_dir = os.path.join(args.out, "reference")
    started = time.time()
    code, stderr, _ = _launch(reference_dir, env, rng, None, 0)
    assert code == 0, stderr[-3000:]
    reference = _final_state(reference_dir)
    timed = time.time()  # A second uninterrupted run, compiled from the cache as the faulted launches are.
    code, stderr, _ = _launch(os.path.join(args.out, "timing"), env, rng, None, 0)
    assert code == 0, stderr[-3000:]
    horizon = time.time() - timed

    figures = dict(workdirs=args.workdirs, run_seconds=round(horizon, 1), launches=0,
                   signals={"SIGKILL": 0, "SIGTERM": 0, "SIGINT": 0},
                   damage_injected={kind: 0 for kind in DAMAGE_KINDS}, damaged_set_aside=0, unexpected_exits=[],
                   bitwise_equal_finishes=0, over_keep_n=0, lost=[])
    for index in range(args.workdirs):
        workdir = os.path.join(args.out, f"run{index}")
        delivered = 0
        for _ in range(args.max_launches):
            steps = _step_dirs(workdir)
            if len(steps) >= 2 and rng.random() < 0.5:
                kind = rng.choice(DAMAGE_KINDS)
                if _damage(os.path.join(workdir, "checkpoints", str(steps[-1])), kind, rng):
                    figures["damage_injected"][kind] += 1
            fault = rng.choice(["SIGKILL", "SIGKILL", "SIGTERM", "SIGINT"]) if delivered < args.faults else None
            code, stderr, sent = _launch(workdir, env, rng, fault, horizon)
            figures["launches"] += 1
            if sent:
                figures["signals"][fault] += 1
                delivered += 1
            figures["damaged_set_aside"] += stderr.count(" is damaged (")
            if code not in EXPECTED_CODES[fault if sent else None]:
                figures["unexpected_exits"].append({"workdir": index, "fault": fault, "code": code,
                                                    "tail": stderr.strip().splitlines()[-3:]})
            finished = code == 0 and _step_dirs(workdir) and _step_dirs(workdir)[-1] == STEPS
            if finished and delivered >= args.faults:
                break
        steps = _step_dirs(workdir)
        figures["over_keep_n"] += max(0, len(steps) - KEEP)
        if steps and steps[-1] == STEPS and _equal(_final_state(workdir), reference):
            figures["bitwise_equal_finishes"] += 1
        else:
            figures["lost"].append(index)
    figures["minutes"] = round((time.time() - started) / 60, 1)
    print(json.dumps(figures))
    with open(os.path.join(args.out, "figures.json"), "w") as file:
        json.dump(figures, file, indent=1)


if __name__ == "__main__":
    main()
