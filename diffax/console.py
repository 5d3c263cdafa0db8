"""What a run tells its user: plain lines on stderr through the standard `logging` logger "diffax", on process 0.

absl's INFO lines (Orbax writes dozens per checkpoint) are off by default at launch (`launch.py`, `-v`/`--debug`
turn them back on), so these lines are what a run shows in a terminal, a log file or a job's output alike:

    04:41:07 resuming from /tmp/run/checkpoints at step 6
    04:41:09 step 8/8 | loss 0.4012 | 5.21 steps/s | ETA 0:00:00
"""

from __future__ import annotations

import logging
import sys

import jax

_LOGGER = logging.getLogger("diffax")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at each line (pytest and tqdm replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _logger() -> logging.Logger:
    """The "diffax" logger, given its stderr handler on first use."""
    if not _LOGGER.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        _LOGGER.addHandler(handler)
        _LOGGER.setLevel(logging.INFO)
        _LOGGER.propagate = False  # absl's root handler would print it a second time.
    return _LOGGER


def info(message: str) -> None:
    """A progress or status line, from process 0 only."""
    if jax.process_index() == 0:
        _logger().info(message)


def warning(message: str) -> None:
    """Something the user should know (a damaged checkpoint, a signal), from every process that sees it."""
    _logger().warning(message)
