"""diffax entry point: parse the config and flags, start multi-host JAX, dispatch to a mode.

    python launch.py --config configs/digits.py --workdir /tmp/digits                  # train (resumes)
    python launch.py --config configs/digits.py --workdir /tmp/digits --mode sample \
        --config.sample.num_samples=100 --config.sample.guidance_scale=2
    python launch.py --config configs/cifar10_ddpm.py:tiny --workdir /tmp/t --mode bench

Multi-host: every process runs the same command. On TPU pod slices and SLURM the cluster is read from the
environment; elsewhere pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:VARIANT]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "bench"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from diffax import parallel
    from diffax.train.validate import validate_config

    config = _CONFIG.value
    validate_config(config)  # Before any device work: bad values fail here, naming the key.
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _MODE.value == "train":
        from diffax.train.loop import train
        train(config, _WORKDIR.value)
    elif _MODE.value == "sample":
        from diffax.evaluation.sample_mode import run_sample
        run_sample(config, _WORKDIR.value)
    elif _MODE.value == "eval":
        from diffax.evaluation.evaluate import run_eval
        run_eval(config, _WORKDIR.value)
    else:
        from diffax.train.bench import run_bench
        run_bench(config, _WORKDIR.value)
    logging.info("done: %s", _MODE.value)


if __name__ == "__main__":
    app.run(main)
