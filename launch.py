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

What the user sees: diffax's own lines (`diffax.console`); other libraries' INFO lines (Orbax's) only with
`-v 0`/`--verbosity=0` or `--debug`. Config, data and checkpoint errors (and a full disk) print one `error: ...`
line and exit 2; `--debug` shows the traceback instead. SIGTERM and Ctrl-C are handled from the start
(`diffax.signals`).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from diffax import signals

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/NAME.py[:VARIANT]", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, metrics, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "bench", "edit", "stats"], "What to run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (explicit multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (explicit multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit multi-host).")
_DEBUG = flags.DEFINE_bool("debug", False, "Tracebacks instead of one-line errors, and every library's INFO lines.")
flags.mark_flags_as_required(["workdir"])
_OVERRIDES: dict[str, str] = {}


def _one_line(error: BaseException) -> str:
    """The error's message on one line: its last non-empty line (absl and ml_collections put the cause last)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _quiet_libraries() -> None:
    """absl's INFO lines (Orbax's, dozens per checkpoint) off, unless --debug or an explicit --verbosity."""
    if not _DEBUG.value and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _quiet_libraries()
    from diffax import parallel
    from diffax.checkpoint import CheckpointError
    from diffax.config_checks import check_autoencoder_run, validate_config
    from diffax.modes import MODES, check_mode
    from diffax.modes.train import NonFiniteLossError
    from configs import base as config_defaults
    from diffax.run_config import resolve_config

    try:
        file_config = _CONFIG.value
        try:
            if file_config is not None:
                file_config.keys()  # ml_collections defers a failed load of --config to the first use.
        except OSError as error:
            raise FileNotFoundError(f"--config: {_one_line(error)}") from error
        config = resolve_config(_MODE.value == "train", file_config, _WORKDIR.value, _OVERRIDES,
                                defaults=config_defaults.get_base_config())
        # Multi-process JAX starts before any JAX call (the checks trace the sampler); bad values then fail before
        # any compilation or data, in one line naming the key.
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        validate_config(config)
        check_autoencoder_run(config)
        check_mode(_MODE.value, config, _WORKDIR.value)
        MODES[_MODE.value](config, _WORKDIR.value)
    except (ValueError, OSError, CheckpointError, NonFiniteLossError, parallel.ClusterError) as error:
        if _DEBUG.value:
            raise
        print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)
        sys.exit(2)
    logging.info("done: %s", _MODE.value)


if __name__ == "__main__":
    signals.install()  # Before JAX is imported or anything compiles.
    from diffax.run_config import split_overrides

    # The overrides go to diffax.run_config, not to config_flags (which reads sys.argv): a loaded run applies them
    # to its own config, and open sections (model.kwargs, sample.options, ...) take keys the file does not set.
    sys.argv, overrides = split_overrides(sys.argv)
    _OVERRIDES.update(overrides)
    app.run(main)
