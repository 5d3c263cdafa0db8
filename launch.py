"""diffax entry point: parse the config and flags, start multi-host JAX, dispatch to a mode.

    python launch.py --config configs/digits.py --workdir /tmp/digits                  # train (resumes)
    python launch.py --workdir /tmp/digits --mode sample \
        --config.sample.num_samples=100 --config.sample.guidance_scale=2 --config.sample.options.eta=1.0
    python launch.py --config configs/cifar10_ddpm.py:tiny --workdir /tmp/t --mode bench

Training needs --config. The other modes on a workdir that holds a run use the run's own config (WORKDIR/run.json)
and take from the command line only overrides (`--config.KEY=VALUE`, `diffax.run_config`); a config file given
there is not read then.

Multi-host: every process runs the same command. On TPU pod slices and SLURM the cluster is read from the
environment; elsewhere pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:VARIANT]", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "bench", "edit"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
flags.mark_flags_as_required(["workdir"])
_OVERRIDES: dict[str, str] = {}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from diffax import parallel
    from diffax.config_checks import validate_config
    from diffax.modes import MODES
    from diffax.run_config import resolve_config

    try:  # Before any device work: bad values fail here, in one line naming the key.
        config = resolve_config(_MODE.value == "train", _CONFIG.value, _WORKDIR.value, _OVERRIDES)
        validate_config(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    MODES[_MODE.value](config, _WORKDIR.value)
    logging.info("done: %s", _MODE.value)


if __name__ == "__main__":
    from diffax.run_config import split_overrides

    # The overrides go to diffax.run_config, not to config_flags (which reads sys.argv): a loaded run applies them
    # to its own config, and open sections (model.kwargs, sample.options, ...) take keys the file does not set.
    sys.argv, overrides = split_overrides(sys.argv)
    _OVERRIDES.update(overrides)
    app.run(main)
