"""Two processes on 127.0.0.1 with 2 virtual CPU devices each train, checkpoint and resume; the result matches the
single-process run with the same global batch. SIGTERM to both (a preempted pod) saves one agreed step, exits 0."""

import re
import signal
import socket
import subprocess
import sys
import time

import jax

from train_helpers import REPO, assert_trees_equal, load_state, subprocess_env, tiny_digits

STEPS = {"train.batch_size": 8, "train.checkpoint_every": 2, "optim.decay": "constant"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_two_processes(workdir, num_steps: int) -> list[subprocess.Popen]:
    port = _free_port()
    flags = [f"--config.{key}={value}" for key, value in {**STEPS, "train.num_steps": num_steps}.items()]
    return [subprocess.Popen([sys.executable, "launch.py", "--config=configs/digits.py:tiny", f"--workdir={workdir}",
                              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={index}", *flags], cwd=REPO, env=subprocess_env(devices=2),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for index in range(2)]


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for index, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"process {index} exited with {process.returncode}:\n{output[-6000:]}"
        assert " is damaged " not in output  # Checksums cover every process's files.
    return outputs


def _two_processes(workdir, num_steps: int) -> None:
    _finish(_start_two_processes(workdir, num_steps))


def test_two_processes_train_checkpoint_resume_and_match_one_process(tfds_dir, tmp_path):
    from diffax.modes.train import train

    _two_processes(tmp_path / "multi", num_steps=4)
    _two_processes(tmp_path / "multi", num_steps=6)  # Resumes from step 4.
    config = tiny_digits(**STEPS, **{"train.num_steps": 6})
    reference = jax.device_get(train(config, str(tmp_path / "single")))
    multi = load_state(config, tmp_path / "multi")
    assert int(multi.step) == 6
    assert_trees_equal(multi.params, reference.params, rtol=1e-3, atol=5e-5)
    assert_trees_equal(multi.ema_params, reference.ema_params, rtol=1e-3, atol=5e-5)


def test_sigterm_to_both_processes_saves_one_agreed_step_and_exits_zero(tfds_dir, tmp_path):
    workdir = tmp_path / "multi"
    processes = _start_two_processes(workdir, num_steps=100_000)
    deadline = time.monotonic() + 300
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "training did not start"
        time.sleep(0.5)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    outputs = _finish(processes)
    saved = [re.findall(r"preempted: saved step (\d+)", output) for output in outputs]
    assert saved[0] and saved[0] == saved[1], saved
    step = int(saved[0][0])
    assert 0 < step < 100_000
    assert int(load_state(tiny_digits(**STEPS, **{"train.num_steps": 100_000}), workdir).step) == step
